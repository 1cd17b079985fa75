package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

func TestValidDeliveriesFetchTheRightResultOnce(t *testing.T) {
	for _, tc := range []struct {
		path, kind, wantLog string
	}{
		{"/webhook/cluster", "cluster", "clusters=2"},
		{"/webhook/route", "route", "picks=3"},
		{"/webhook", "cluster", "clusters=2"}, // OptiPick's original example path
	} {
		t.Run(tc.path, func(t *testing.T) {
			rig := newRig(t, testSecret)
			resp := rig.deliver(signedDelivery(t, testSecret, tc.path, requestBody(testRequestID)))

			if resp.Code != http.StatusOK || resp.Body.String() != "fetched\n" || resp.Header().Get("Content-Type") != "text/plain; charset=utf-8" {
				t.Fatalf("answer = %d %q (%s), want 200 \"fetched\\n\" (text/plain; charset=utf-8)", resp.Code, resp.Body, resp.Header().Get("Content-Type"))
			}
			want := []apiCall{{Path: "/optimize/" + tc.kind + "/" + testRequestID, APIKey: testAPIKey}}
			rig.api.assertCalls(t, want)
			logs := rig.logs.String()
			for _, s := range []string{"optimization fetched", "kind=" + tc.kind, "request_id=" + testRequestID,
				"svix_id=msg_", "site_name=Example", tc.wantLog, "computation_time_s=0.53"} {
				if !strings.Contains(logs, s) {
					t.Errorf("log lacks %q:\n%s", s, logs)
				}
			}
			if tc.kind == "cluster" && !strings.Contains(logs, "saving_pct=25 ") {
				t.Errorf("log lacks the saving (as-is 200, optimal 150):\n%s", logs)
			}
			if !strings.Contains(logs, `msg="optimization result"`) || !strings.Contains(logs, `\"timestamp\":\"2024-12-04T16:52:49.303000\"`) {
				t.Errorf("debug log lacks the whole result:\n%s", logs)
			}
		})
	}
}

// TestAnswersAreShortPlainText: every 200 the service writes itself, over
// a real server, is its short text as text/plain; charset=utf-8, which
// net/http names by sniffing (writeText).
func TestAnswersAreShortPlainText(t *testing.T) {
	rig := newRig(t, testSecret)
	server := httptest.NewServer(rig.handler)
	defer server.Close()
	now := time.Now()
	delivery := func() *http.Request { // the same message each time
		req := signedDeliveryAt(t, testSecret, server.URL+"/webhook/cluster", requestBody(testRequestID), "msg_answers", now)
		req.RequestURI = ""
		return req
	}
	get := func(path string) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, server.URL+path, nil)
		return req
	}
	for _, tc := range []struct {
		name string
		req  *http.Request
		want string
	}{
		{"liveness", get("/healthz"), "ok\n"},
		{"readiness", get("/readyz"), "ready\n"},
		{"a delivery", delivery(), "fetched\n"},
		{"the same delivery again", delivery(), "already handled\n"},
	} {
		resp, err := http.DefaultClient.Do(tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != tc.want || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf("%s: %s %q (%s), want 200 %q (text/plain; charset=utf-8)", tc.name, resp.Status, body, resp.Header.Get("Content-Type"), tc.want)
		}
	}
}

func TestOptimizationErrorIsLoggedAsWarningAndAcknowledged(t *testing.T) {
	rig := newRig(t, testSecret)
	rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"request_id":"`+testRequestID+`","site_name":"Example","error":"no valid picks","computation_time":0.01}`)
	}
	resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
	if resp.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", resp.Code)
	}
	if logs := rig.logs.String(); !strings.Contains(logs, `level=WARN msg="optimization fetched, but OptiPick reports that it failed"`) ||
		!strings.Contains(logs, `optimization_error="no valid picks"`) {
		t.Errorf("log lacks the warning with OptiPick's error:\n%s", logs)
	}
}

func TestUnverifiedDeliveriesAreRejectedBeforeTheAPI(t *testing.T) {
	body := requestBody(testRequestID)
	for _, tc := range []struct {
		name   string
		modify func(r *http.Request)
		reason string
	}{
		{"no svix-id", func(r *http.Request) { r.Header.Del("svix-id") }, "missing required headers"},
		{"no svix-timestamp", func(r *http.Request) { r.Header.Del("svix-timestamp") }, "missing required headers"},
		{"no svix-signature", func(r *http.Request) { r.Header.Del("svix-signature") }, "missing required headers"},
		{"tampered body", func(r *http.Request) { setBody(r, requestBody("674f5c1e2b8a4d0012ab34ce")) }, "no matching signature"},
		{"body with extra whitespace", func(r *http.Request) { setBody(r, append(body, ' ')) }, "no matching signature"},
		{"other message id", func(r *http.Request) { r.Header.Set("svix-id", "msg_other") }, "no matching signature"},
		{"bare v1,", func(r *http.Request) { r.Header.Set("svix-signature", "v1,") }, "no matching signature"},
		{"unknown version", func(r *http.Request) {
			r.Header.Set("svix-signature", strings.Replace(r.Header.Get("svix-signature"), "v1,", "v2,", 1))
		}, "no matching signature"},
		{"timestamp not a number", func(r *http.Request) { r.Header.Set("svix-timestamp", "soon") }, "invalid signature headers"},
		{"wrong secret", func(r *http.Request) { *r = *signedDelivery(t, wrongSecret, "/webhook/cluster", body) }, "no matching signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newRig(t, testSecret)
			req := signedDelivery(t, testSecret, "/webhook/cluster", body)
			tc.modify(req)
			resp := rig.deliver(req)

			if resp.Code != http.StatusUnauthorized {
				t.Fatalf("status = %d, want 401; body %q", resp.Code, resp.Body)
			}
			if got := strings.TrimSpace(resp.Body.String()); got != "invalid signature" {
				t.Errorf("body = %q, want the generic %q", got, "invalid signature")
			}
			rig.api.assertCalls(t, nil)
			if logs := rig.logs.String(); !strings.Contains(logs, "signature not verified") || !strings.Contains(logs, tc.reason) {
				t.Errorf("log lacks the reason %q:\n%s", tc.reason, logs)
			}
		})
	}
}

// TestTimestampTolerance moves a fake clock past Svix's five minutes.
func TestTimestampTolerance(t *testing.T) {
	for _, tc := range []struct {
		name       string
		signedAt   time.Duration // relative to the moment of delivery
		wantStatus int
		wantReason string
	}{
		{"4m59s old", -(5*time.Minute - time.Second), http.StatusOK, ""},
		{"5m01s old", -(5*time.Minute + time.Second), http.StatusUnauthorized, "message timestamp too old"},
		{"4m59s ahead", 5*time.Minute - time.Second, http.StatusOK, ""},
		{"5m01s ahead", 5*time.Minute + time.Second, http.StatusUnauthorized, "message timestamp too new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rig := newBubbleRig(t, testSecret)
				// Sign at a time that is now+signedAt, by waiting either side.
				var req *http.Request
				if tc.signedAt < 0 {
					req = signedDelivery(t, testSecret, "/webhook/route", requestBody(testRequestID))
					time.Sleep(-tc.signedAt)
				} else {
					req = signedDeliveryAt(t, testSecret, "/webhook/route", requestBody(testRequestID), "msg_future", time.Now().Add(tc.signedAt))
				}
				resp := rig.deliver(req)
				if resp.Code != tc.wantStatus {
					t.Fatalf("status = %d, want %d", resp.Code, tc.wantStatus)
				}
				if tc.wantStatus != http.StatusOK {
					rig.api.assertCalls(t, nil)
					if !strings.Contains(rig.logs.String(), tc.wantReason) {
						t.Errorf("log lacks %q:\n%s", tc.wantReason, rig.logs)
					}
				} else {
					rig.api.assertCalls(t, []apiCall{{Path: "/optimize/route/" + testRequestID, APIKey: testAPIKey}})
				}
			})
		})
	}
}

func TestAnyValidSignatureOrSecretIsEnough(t *testing.T) {
	body := requestBody(testRequestID)
	for _, tc := range []struct {
		name    string
		secrets []string
		request func() *http.Request
	}{
		{"several signatures, the last one valid", []string{testSecret}, func() *http.Request {
			req := signedDelivery(t, testSecret, "/webhook/cluster", body)
			other := signedDelivery(t, wrongSecret, "/webhook/cluster", body).Header.Get("svix-signature")
			req.Header.Set("svix-signature", "v1a,bm90IGVkMjU1MTk= "+other+" "+req.Header.Get("svix-signature"))
			return req
		}},
		{"signed with the second configured secret", []string{testSecret, secondSecret}, func() *http.Request {
			return signedDelivery(t, secondSecret, "/webhook/cluster", body)
		}},
		{"unbranded webhook-* headers", []string{testSecret}, func() *http.Request {
			req := signedDelivery(t, testSecret, "/webhook/cluster", body)
			for _, name := range []string{"id", "timestamp", "signature"} {
				req.Header.Set("webhook-"+name, req.Header.Get("svix-"+name))
				req.Header.Del("svix-" + name)
			}
			return req
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newRig(t, tc.secrets...)
			resp := rig.deliver(tc.request())
			if resp.Code != http.StatusOK {
				t.Fatalf("status = %d, want 200; body %q\n%s", resp.Code, resp.Body, rig.logs)
			}
			rig.api.assertCalls(t, []apiCall{{Path: "/optimize/cluster/" + testRequestID, APIKey: testAPIKey}})
		})
	}
}

// TestSvixPublishedVector checks signing and verification against the
// known answer that every Svix library is tested with.
func TestSvixPublishedVector(t *testing.T) {
	const (
		secret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
		msgID     = "msg_p5jXN8AQM9LWM0D4loKWxJek"
		timestamp = 1614265330
		body      = `{"test": 2432232314}`
		signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	)
	wh, err := svix.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := wh.Sign(msgID, time.Unix(timestamp, 0), []byte(body)); got != signature {
		t.Fatalf("Sign = %q, want %q", got, signature)
	}

	synctest.Test(t, func(t *testing.T) {
		time.Sleep(time.Until(time.Unix(timestamp, 0))) // the fake clock jumps to 2021
		rig := newBubbleRig(t, secret)
		req := httptest.NewRequest(http.MethodPost, "/webhook/cluster", strings.NewReader(body))
		req.Header.Set("svix-id", msgID)
		req.Header.Set("svix-timestamp", fmt.Sprint(timestamp))
		req.Header.Set("svix-signature", signature)
		resp := rig.deliver(req)
		// Genuine, but the vector's body has no request_id: 400, not 401.
		if resp.Code != http.StatusBadRequest || resp.Header().Get("webhook-delivery") != "abort-message" {
			t.Fatalf("status = %d, abort header %q: want 400 with abort-message", resp.Code, resp.Header().Get("webhook-delivery"))
		}

		req.Header.Set("svix-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OF=")
		if resp := rig.deliver(req); resp.Code != http.StatusUnauthorized {
			t.Fatalf("one changed character: status = %d, want 401", resp.Code)
		}
		rig.api.assertCalls(t, nil)
	})
}

func TestOversizedBodyIs413(t *testing.T) {
	for _, tc := range []struct {
		name    string
		chunked bool
	}{{"with Content-Length", false}, {"chunked, no length", true}} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newRig(t, testSecret)
			body := append(requestBody(testRequestID), bytes.Repeat([]byte(" "), maxBodyBytes)...)
			req := signedDelivery(t, testSecret, "/webhook/cluster", body)
			if tc.chunked {
				req.Body = io.NopCloser(bytes.NewReader(body)) // hides the length
				req.ContentLength = -1
			}
			resp := rig.deliver(req)
			if resp.Code != http.StatusRequestEntityTooLarge {
				t.Fatalf("status = %d, want 413", resp.Code)
			}
			rig.api.assertCalls(t, nil)
		})
	}
}

func TestBodyOfExactlyTheLimitIsAccepted(t *testing.T) {
	rig := newRig(t, testSecret)
	body := requestBody(testRequestID)
	body = append(body, bytes.Repeat([]byte(" "), maxBodyBytes-len(body))...)
	resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", body))
	if resp.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", resp.Code)
	}
}

func TestRoutingNeverRedirects(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		wantStatus   int
		wantAllow    string
	}{
		{http.MethodGet, "/healthz", http.StatusOK, ""},
		{http.MethodHead, "/healthz", http.StatusOK, ""},
		{http.MethodPost, "/healthz", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodGet, "/webhook/cluster", http.StatusMethodNotAllowed, "POST"},
		{http.MethodPut, "/webhook/route", http.StatusMethodNotAllowed, "POST"},
		{http.MethodGet, "/webhook", http.StatusMethodNotAllowed, "POST"},
		{http.MethodPost, "/", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook/pallet", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook/cluster/", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook//cluster", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook/../webhook/cluster", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook/./route", http.StatusNotFound, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			rig := newRig(t, testSecret)
			req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
			req.Method = tc.method
			req.URL.Path = tc.path
			resp := rig.deliver(req)
			if resp.Code != tc.wantStatus {
				t.Fatalf("status = %d, want %d (Location %q)", resp.Code, tc.wantStatus, resp.Header().Get("Location"))
			}
			if got := resp.Header().Get("Allow"); got != tc.wantAllow {
				t.Errorf("Allow = %q, want %q", got, tc.wantAllow)
			}
			rig.api.assertCalls(t, nil)
		})
	}
}

func TestSignedButMalformedBodiesAskSvixToStop(t *testing.T) {
	for _, body := range []string{
		``,
		`not json`,
		`[]`,
		`null`,
		`{}`,
		`{"request_id": ""}`,
		`{"request_id": 674}`,
		`{"request_id": null}`,
		`{"request_id": "../x"}`,
		`{"request_id": "a b"}`,
		`{"request_id": "` + strings.Repeat("a", 129) + `"}`,
		`{"request_id": "674f5c1e2b8a4d0012ab34cd"`,
	} {
		t.Run(body, func(t *testing.T) {
			rig := newRig(t, testSecret)
			resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/route", []byte(body)))
			if resp.Code != http.StatusBadRequest {
				t.Fatalf("status = %d, want 400", resp.Code)
			}
			if got := resp.Header().Get("webhook-delivery"); got != "abort-message" {
				t.Errorf("webhook-delivery = %q, want abort-message", got)
			}
			rig.api.assertCalls(t, nil)
		})
	}
}

func TestUnknownFieldsInTheBodyAreFine(t *testing.T) {
	rig := newRig(t, testSecret)
	body := []byte(`{"type":"cluster.optimized","request_id":"` + testRequestID + `","extra":{"a":[1,2]}}`)
	if resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", body)); resp.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", resp.Code)
	}
	rig.api.assertCalls(t, []apiCall{{Path: "/optimize/cluster/" + testRequestID, APIKey: testAPIKey}})
}

func TestAPIFailuresMakeSvixRetry(t *testing.T) {
	for _, tc := range []struct {
		name       string
		status     int
		body       string
		wantStatus int
		wantCalls  int
		wantLog    string
	}{
		{"500 is retried, then 502", 500, "internal error", http.StatusBadGateway, maxAttempts, "500 Internal Server Error"},
		{"429 is retried, then 503", 429, "slow down", http.StatusServiceUnavailable, maxAttempts, "429 Too Many Requests"},
		{"403 is not retried", 403, `{"message":"Forbidden"}`, http.StatusBadGateway, 1, "the API key was rejected"},
		{"401 is not retried", 401, `{"message":"Unauthorized"}`, http.StatusBadGateway, 1, "the API key was rejected"},
		{"404 is not retried", 404, `{"detail":"not found"}`, http.StatusBadGateway, 1, "does OPTIPICK_API_URL point at another service?"},
		{"422 is not retried", 422, `{"detail":[]}`, http.StatusBadGateway, 1, "422 Unprocessable Entity"},
		{"200 that is not JSON", 200, "<html>gateway</html>", http.StatusBadGateway, 1, "but not with this result: not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rig := newBubbleRig(t, testSecret)
				rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
					w.WriteHeader(tc.status)
					io.WriteString(w, tc.body)
				}
				start := time.Now()
				resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
				if resp.Code != tc.wantStatus {
					t.Fatalf("status = %d, want %d", resp.Code, tc.wantStatus)
				}
				if took := time.Since(start); took >= deliveryDeadline {
					t.Errorf("answered after %v, want within the %v deadline", took, deliveryDeadline)
				}
				if got := len(rig.api.recorded()); got != tc.wantCalls {
					t.Errorf("API called %d times, want %d", got, tc.wantCalls)
				}
				if logs := rig.logs.String(); !strings.Contains(logs, tc.wantLog) || !strings.Contains(logs, "Svix will retry") {
					t.Errorf("log lacks %q:\n%s", tc.wantLog, logs)
				}
			})
		})
	}
}

func TestHangingAPIGets504WithinTheDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		var hang atomic.Bool
		hang.Store(true)
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			if hang.Load() {
				<-r.Context().Done()
				return
			}
			writeClusterResult(w, testRequestID)
		}
		start := time.Now()
		resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
		if resp.Code != http.StatusGatewayTimeout {
			t.Fatalf("status = %d, want 504", resp.Code)
		}
		if took := time.Since(start); took > deliveryDeadline {
			t.Errorf("answered after %v, want within %v", took, deliveryDeadline)
		}

		// The service lives on, and Svix's retry of the message succeeds.
		hang.Store(false)
		resp = rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
		if resp.Code != http.StatusOK {
			t.Fatalf("after the hang: status = %d, want 200", resp.Code)
		}
	})
}

func TestSecretsNeverReachTheLogs(t *testing.T) {
	rig := newRig(t, testSecret, secondSecret)
	rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
		// An API that echoes what it got must not make the log leak the key.
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"message":"Forbidden","key":%q}`, r.Header.Get("X-API-KEY"))
	}
	rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
	rig.deliver(signedDelivery(t, wrongSecret, "/webhook/cluster", requestBody(testRequestID)))
	rig.deliver(signedDelivery(t, secondSecret, "/webhook/route", []byte(`{"request_id":"../../etc"}`)))
	// assertNoSecrets runs at cleanup for every rig; this test makes sure
	// each kind of line was written.
	for _, s := range []string{"signature not verified", "the API key was rejected", "asked Svix not to retry"} {
		if !strings.Contains(rig.logs.String(), s) {
			t.Errorf("log lacks %q", s)
		}
	}
}

// rig is the real handler with a fake OptiPick API behind it.

// TestRequestIDBoundaries: ids at the edges of [A-Za-z0-9_-]{1,128} are
// fetched; the characters just outside each range are refused.
func TestRequestIDBoundaries(t *testing.T) {
	for _, id := range []string{"a", "z", "A", "Z", "0", "9", "_", "-", "azAZ09_-", strings.Repeat("Z", 128)} {
		t.Run("accepts "+id[:min(len(id), 10)], func(t *testing.T) {
			rig := newRig(t, testSecret)
			if resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/route", requestBody(id))); resp.Code != http.StatusOK {
				t.Fatalf("id %q: status %d, want 200", id, resp.Code)
			}
			rig.api.assertCalls(t, []apiCall{{Path: "/optimize/route/" + id, APIKey: testAPIKey}})
		})
	}
	// Just before and after a-z, A-Z and 0-9 in ASCII; and one over 128.
	for _, id := range []string{"`", "{", "@", "[", "/", ":", ".", "~", strings.Repeat("Z", 129)} {
		t.Run("refuses "+id[:min(len(id), 10)], func(t *testing.T) {
			rig := newRig(t, testSecret)
			resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/route", []byte(`{"request_id":"`+id+`"}`)))
			if resp.Code != http.StatusBadRequest || resp.Header().Get("webhook-delivery") != "abort-message" {
				t.Fatalf("id %q: status %d, want 400 with abort-message", id, resp.Code)
			}
			rig.api.assertCalls(t, nil)
		})
	}
}

// TestSignatureHeaderBounds: an id of up to 256 bytes, and a signature
// header of up to 1 KiB and 10 entries, are verified; one byte or entry
// more is refused before verification.
func TestSignatureHeaderBounds(t *testing.T) {
	body := requestBody(testRequestID)
	// padded signs with id; with entries > 1 it puts the valid signature
	// last, after junk entries that make the header exactly size bytes.
	padded := func(id string, entries, size int) *http.Request {
		req := signedDeliveryAt(t, testSecret, "/webhook/cluster", body, id, time.Now())
		if entries == 1 {
			return req
		}
		valid := req.Header.Get("svix-signature")
		junk := strings.Repeat("v1,A ", entries-2) // each 5 bytes with its space
		first := "v1," + strings.Repeat("A", size-len(valid)-len(junk)-len("v1, "))
		header := first + " " + junk + valid
		if len(header) != size || strings.Count(header, " ") != entries-1 {
			t.Fatalf("header of %d bytes and %d entries, want %d and %d", len(header), strings.Count(header, " ")+1, size, entries)
		}
		req.Header.Set("svix-signature", header)
		return req
	}
	for _, tc := range []struct {
		name   string
		req    *http.Request
		status int
	}{
		{"id of 256 bytes", padded("msg_"+strings.Repeat("x", 252), 1, 0), http.StatusOK},
		{"id of 257 bytes", padded("msg_"+strings.Repeat("x", 253), 1, 0), http.StatusUnauthorized},
		{"10 entries in 1024 bytes", padded("msg_a", 10, 1024), http.StatusOK},
		{"10 entries in 1025 bytes", padded("msg_b", 10, 1025), http.StatusUnauthorized},
		{"11 entries", padded("msg_c", 11, 200), http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newRig(t, testSecret)
			if resp := rig.deliver(tc.req); resp.Code != tc.status {
				t.Fatalf("status %d, want %d\n%s", resp.Code, tc.status, rig.logs)
			}
		})
	}
}

// summaryLine delivers a cluster result with these distances and returns
// its summary log line, parsed from JSON.
func summaryLine(t *testing.T, asis, optimal string) map[string]any {
	t.Helper()
	api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"request_id":%q,"site_name":"S","asis_distance":%s,"optimal_distance":%s,"optimal_clusters":[{}]}`,
			testRequestID, asis, optimal)
	}}
	rig := buildRig(t, rigConfig{api: api, apiURL: "http://optipick.test", transport: handlerTransport{api},
		secrets: []string{testSecret}, level: slog.LevelInfo, format: "json"})
	if resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))); resp.Code != http.StatusOK {
		t.Fatalf("status %d, want 200\n%s", resp.Code, rig.logs)
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(rig.logs.String()), &line); err != nil {
		t.Fatalf("the summary is not one JSON line: %v\n%s", err, rig.logs)
	}
	return line
}

// TestSummaryLineValues: the saving is (as-is − optimal) / as-is in
// percent, to one decimal; without a positive as-is distance there is
// none, and the line stays valid JSON.
func TestSummaryLineValues(t *testing.T) {
	for _, tc := range []struct {
		asis, optimal string
		saving        any // nil: no saving_pct
	}{
		{"200", "150", 25.0},
		{"300", "200", 33.3},
		{"3", "1", 66.7},
		{"100", "150", -50.0},
		{"1000", "999.4", 0.1},
		{"0", "0", nil},
		{"0", "5", nil},
		{"-100", "50", nil},
		{"1e-320", "0", 100.0},
	} {
		t.Run(tc.asis+"→"+tc.optimal, func(t *testing.T) {
			line := summaryLine(t, tc.asis, tc.optimal)
			if got, ok := line["saving_pct"]; got != tc.saving || ok != (tc.saving != nil) {
				t.Errorf("saving_pct = %v, want %v\n%v", got, tc.saving, line)
			}
			if line["clusters"] != 1.0 || line["site_name"] != "S" {
				t.Errorf("summary line %v", line)
			}
			// Distances are logged when the result has any, as sent.
			_, hasAsis := line["asis_distance"]
			if wantDistances := tc.asis != "0" || tc.optimal != "0"; hasAsis != wantDistances || wantDistances && line["optimal_distance"] == nil {
				t.Errorf("distances logged: %v, want %v\n%v", hasAsis, wantDistances, line)
			}
		})
	}
}

// TestWholeNumbersAreLoggedAsTheyWouldBeAsFloats: number logs a whole
// number as an int64. In JSON it must print as slog prints the float64; in
// text it may print in full where slog would use an exponent, but it must
// be the same number. A fraction, or a float too large for an exact int64,
// stays a float64. -0 (a saving that rounds to it) prints as 0.
func TestWholeNumbersAreLoggedAsTheyWouldBeAsFloats(t *testing.T) {
	logged := func(format string, attr slog.Attr) string {
		var out bytes.Buffer
		newLogger(&out, slog.LevelInfo, format).LogAttrs(t.Context(), slog.LevelInfo, "m", attr)
		_, value, _ := strings.Cut(strings.TrimSpace(out.String()), map[string]string{"json": `"n":`, "text": " n="}[format])
		return strings.TrimSuffix(value, "}")
	}
	for _, f := range []float64{0, 1, -3, 22920, 2e6, 1 << 52, 1<<53 - 1, 1 << 53, 1e21, 1e300, 0.5, 33.3, -999.4, 1e-320} {
		if got, want := logged("json", number("n", f)), logged("json", slog.Float64("n", f)); got != want {
			t.Errorf("%v in JSON: logged %s, as a float64 %s", f, got, want)
		}
		got, err := strconv.ParseFloat(logged("text", number("n", f)), 64)
		if err != nil || got != f {
			t.Errorf("%v in text: logged %s (%v)", f, logged("text", number("n", f)), err)
		}
	}
	if got := logged("json", number("n", math.Copysign(0, -1))); got != "0" {
		t.Errorf("-0 logged %s, want 0", got)
	}
}

// TestClientHeadersAreLoggedSafely: an unverified svix-id is logged as it
// is when it is printable ASCII, quoted otherwise, and cut at 128 bytes.
func TestClientHeadersAreLoggedSafely(t *testing.T) {
	for _, tc := range []struct{ id, logged string }{
		{"msg_ ~", "msg_ ~"},
		{"msg_\x1f", `"msg_\x1f"`},
		{"msg_\x7f", `"msg_\x7f"`},
		{"msg_é", `"msg_\u00e9"`},
		{strings.Repeat("x", 200), strings.Repeat("x", 128)},
		{strings.Repeat("x", 127) + "\x01", `"` + strings.Repeat("x", 127) + `\x01"`},
		{strings.Repeat("x", 128) + "\x01", strings.Repeat("x", 128)},
	} {
		rig := buildRig(t, rigConfig{api: &fakeAPI{}, apiURL: "http://optipick.test", transport: handlerTransport{&fakeAPI{}},
			secrets: []string{testSecret}, level: slog.LevelInfo, format: "json"})
		req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
		req.Header["Svix-Id"] = []string{tc.id}
		if resp := rig.deliver(req); resp.Code != http.StatusUnauthorized {
			t.Fatalf("svix-id %q: status %d, want 401", tc.id, resp.Code)
		}
		var line map[string]any
		if err := json.Unmarshal([]byte(rig.logs.String()), &line); err != nil {
			t.Fatal(err)
		}
		if line["svix_id"] != tc.logged {
			t.Errorf("svix-id %q logged as %q, want %q", tc.id, line["svix_id"], tc.logged)
		}
	}
}
