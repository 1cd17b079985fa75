package main

// Tests of a delivery: reading, verifying, answering, and what a hostile
// client cannot make it do.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// signed1KiB is a 1 KiB body with its svix-* headers, signed with secret.
func signed1KiB(b *testing.B, secret string) ([]byte, http.Header) {
	prefix := `{"request_id":"` + testRequestID + `","padding":"`
	body := []byte(prefix + strings.Repeat("x", 1024-len(prefix)-2) + `"}`)
	if len(body) != 1024 {
		b.Fatalf("body is %d bytes", len(body))
	}
	req := signedDeliveryAt(b, secret, "/webhook/cluster", body, "msg_bench", time.Now())
	return body, req.Header
}

// BenchmarkVerify1KiB compares the Svix library's verification with the
// floor: one bare HMAC-SHA256 and base64 of the same bytes, and a compare.
func BenchmarkVerify1KiB(b *testing.B) {
	body, header := signed1KiB(b, testSecret)

	b.Run("floor=bare-HMAC-SHA256+base64", func(b *testing.B) {
		key, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(testSecret, "whsec_"))
		want := []byte(strings.TrimPrefix(header.Get("svix-signature"), "v1,"))
		prefix := []byte(header.Get("svix-id") + "." + header.Get("svix-timestamp") + ".")
		sig := make([]byte, base64.StdEncoding.EncodedLen(sha256.Size))
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			mac := hmac.New(sha256.New, key)
			mac.Write(prefix)
			mac.Write(body)
			base64.StdEncoding.Encode(sig, mac.Sum(nil))
			if !hmac.Equal(sig, want) {
				b.Fatal("floor does not match")
			}
		}
	})
	for _, tc := range []struct {
		name    string
		secrets []string
	}{
		{"library/1-secret", []string{testSecret}},
		{"library/2-secrets,first-matches", []string{testSecret, secondSecret}},
		{"library/2-secrets,second-matches", []string{secondSecret, testSecret}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			v, err := newVerifier(strings.Join(tc.secrets, " "))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if err := v.verify(body, header); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHandler is one whole delivery through ServeHTTP: read, verify,
// decode, dedupe bookkeeping, an in-memory fetch and the info log line.
func BenchmarkHandler(b *testing.B) {
	v, _ := newVerifier(testSecret)
	raw := clusterResultJSON(10)
	result, err := decodeResult(bytes.NewReader(raw))
	if err != nil {
		b.Fatal(err)
	}
	fetch := func(ctx context.Context, k kind, requestID string) (*optimization, error) { return result, nil }
	handler := serverFetchingWith(v, fetch, newLogger(io.Discard, slog.LevelInfo, "json"))

	body := requestBody(testRequestID)
	template := signedDelivery(b, testSecret, "/webhook/cluster", body)
	reader := &rewindBody{body: body}
	req := template.Clone(context.Background())
	req.Body = reader
	w := &benchResponseWriter{header: http.Header{}}

	b.ReportAllocs()
	for b.Loop() {
		reader.Reset()
		clear(w.header)
		w.status = 0
		handler.ServeHTTP(w, req)
		if w.status != 0 && w.status != http.StatusOK {
			b.Fatalf("status %d", w.status)
		}
	}
}

// rewindBody is a request body that can be read again, so that the
// benchmark measures the handler and not the making of requests.
type rewindBody struct {
	body []byte
	r    bytes.Reader
}

func (b *rewindBody) Reset() { b.r.Reset(b.body) }

func (b *rewindBody) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b *rewindBody) Close() error { return nil }

type benchResponseWriter struct {
	header http.Header
	status int
}

func (w *benchResponseWriter) Header() http.Header { return w.header }

func (w *benchResponseWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *benchResponseWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}

// FuzzWebhook sends arbitrary bodies and header values to the real handler.
// Whatever they are, it must not panic, and without a signature that the
// Svix library itself accepts it must neither call the API nor answer 2xx.
// With sign set, the harness signs the body, to reach the decoding steps.
func FuzzWebhook(f *testing.F) {
	f.Add(requestBody(testRequestID), "msg_1", "", "", true, false)
	f.Add(requestBody(testRequestID), "msg_1", "", "", true, true)
	f.Add([]byte(`{"request_id":"../../x"}`), "msg_2", "", "", true, false)
	f.Add([]byte(`{"request_id":"a","request_id":"b/c"}`), "msg_3", "", "", true, true)
	f.Add(
		[]byte(`{"test": 2432232314}`),
		"msg_p5jXN8AQM9LWM0D4loKWxJek",
		"1614265330",
		"v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
		false,
		false,
	)
	f.Add(requestBody(testRequestID), "msg_4", "+99999999999", "v1, v1,, ,v1", false, true)
	f.Add([]byte("\xff\xfe{"), "msg\r\n5", "12345678901234567890", "v1a,xyz", false, false)

	v, err := newVerifier(testSecret)
	if err != nil {
		f.Fatal(err)
	}
	signer, _ := svix.NewWebhook(testSecret)
	const optimizeURL = "https://optipick.test/latest/optimize"

	f.Fuzz(func(t *testing.T, body []byte, msgID, timestamp, signature string, sign, route bool) {
		var mu sync.Mutex
		var fetched []string
		fetch := func(ctx context.Context, k kind, requestID string) (*optimization, error) {
			target, err := optimizationURL(optimizeURL, k, requestID)
			if err != nil {
				t.Fatalf("the handler fetched an id the URL builder refuses: %q", requestID)
			}
			mu.Lock()
			fetched = append(fetched, target)
			mu.Unlock()
			return &optimization{}, nil
		}
		handler := serverFetchingWith(v, fetch, slog.New(slog.DiscardHandler))

		kind := "cluster"
		if route {
			kind = "route"
		}
		req := httptest.NewRequest(http.MethodPost, "/webhook/"+kind, bytes.NewReader(body))
		if sign {
			now := time.Now()
			timestamp = strconv.FormatInt(now.Unix(), 10)
			signature, _ = signer.Sign(msgID, now, body)
		}
		// Set the raw values, as a hostile client could send them.
		req.Header["Svix-Id"] = []string{msgID}
		req.Header["Svix-Timestamp"] = []string{timestamp}
		req.Header["Svix-Signature"] = []string{signature}
		resp := httptest.NewRecorder()
		handler.ServeHTTP(resp, req)

		genuine := signer.Verify(body, req.Header) == nil
		if !genuine && (len(fetched) > 0 || resp.Code < 300) {
			t.Fatalf("unsigned delivery got %d and fetched %v", resp.Code, fetched)
		}
		for _, target := range fetched {
			u, err := url.Parse(target)
			if err != nil || !strings.HasPrefix(u.Path, "/latest/optimize/"+kind+"/") ||
				strings.Count(u.Path, "/") != 4 ||
				u.RawQuery != "" {
				t.Fatalf("fetched %q, outside /optimize/%s/", target, kind)
			}
		}
	})
}

// TestHostileInput: none of these reach the API unverified, leave
// /optimize/{kind}/, log a secret or panic.
func TestHostileInput(t *testing.T) {
	signed := func(body string) func() *http.Request {
		return func() *http.Request { return signedDelivery(t, testSecret, "/webhook/cluster", []byte(body)) }
	}
	withHeaders := func(edit func(h http.Header)) func() *http.Request {
		return func() *http.Request {
			req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
			edit(req.Header)
			return req
		}
	}
	withTimestamp := func(edit func(signed string) string) func() *http.Request {
		return withHeaders(func(h http.Header) { h.Set("svix-timestamp", edit(h.Get("svix-timestamp"))) })
	}
	nested := strings.Repeat(`{"a":[`, 6000) + strings.Repeat(`]}`, 6000) // just under the body cap
	for _, tc := range []struct {
		name       string
		request    func() *http.Request
		wantStatus int
		wantFetch  string // the id fetched, if any
	}{
		{"id ../x", signed(`{"request_id":"../x"}`), 400, ""},
		{"id ..", signed(`{"request_id":".."}`), 400, ""},
		{"id .", signed(`{"request_id":"."}`), 400, ""},
		{"id a/b", signed(`{"request_id":"a/b"}`), 400, ""},
		{"id x?y", signed(`{"request_id":"x?y"}`), 400, ""},
		{"id %2e%2e", signed(`{"request_id":"%2e%2e"}`), 400, ""},
		{"id with CR LF", signed(`{"request_id":"a\r\nX-Injected: 1"}`), 400, ""},
		{"id of 5000 chars", signed(`{"request_id":"` + strings.Repeat("a", 5000) + `"}`), 400, ""},
		{"id with a NUL", signed(`{"request_id":"a\u0000b"}`), 400, ""},
		{"invalid UTF-8", signed("{\"request_id\":\"\xff\xfe\"}"), 400, ""},
		{"duplicate keys are refused", signed(`{"request_id":"first","request_id":"second"}`), 400, ""},
		{"names match exactly", signed(`{"REQUEST_ID":"first"}`), 400, ""},
		{"deeply nested JSON", signed(nested), 400, ""},
		{"deeply nested beside a valid id", signed(`{"request_id":"ok1","x":` + nested + `}`), 400, ""},
		{"unsigned valid body", func() *http.Request {
			return httptest.NewRequest(http.MethodPost, "/webhook/cluster", bytes.NewReader(requestBody(testRequestID)))
		}, 401, ""},
		{"32 MiB body", func() *http.Request {
			req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
			req.Body = io.NopCloser(io.LimitReader(zeros{}, 32<<20))
			req.ContentLength = 32 << 20
			return req
		}, 413, ""},
		{"32 MiB chunked body", func() *http.Request {
			req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
			req.Body = io.NopCloser(io.LimitReader(zeros{}, 32<<20))
			req.ContentLength = -1
			return req
		}, 413, ""},
		{"body that stops half way", func() *http.Request {
			req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
			cut := io.MultiReader(strings.NewReader(`{"request_id":"67`), errReader{io.ErrUnexpectedEOF})
			req.Body = io.NopCloser(cut)
			return req
		}, 400, ""},
		{"signature header twice, valid one second", withHeaders(func(h http.Header) {
			h["Svix-Signature"] = []string{"v1,AAAA", h.Get("svix-signature")}
		}), 401, ""},
		{"signature header twice, valid one first", withHeaders(func(h http.Header) {
			h.Add("svix-signature", "v1,AAAA")
		}), 200, testRequestID},
		{"svix-id alone beside a full webhook-* set", withHeaders(func(h http.Header) {
			for _, name := range []string{"id", "timestamp", "signature"} {
				h.Set("webhook-"+name, h.Get("svix-"+name))
			}
			h.Del("svix-signature")
			h.Set("svix-id", "msg_decoy")
		}), 200, testRequestID},
		{"svix-* signature beside a wrong webhook-* set", withHeaders(func(h http.Header) {
			h.Set("webhook-id", "msg_other")
			h.Set("webhook-timestamp", h.Get("svix-timestamp"))
			h.Set("webhook-signature", "v1,AAAA")
		}), 200, testRequestID},
		{"timestamp of 20 digits", withTimestamp(func(string) string { return "12345678901234567890" }), 401, ""},
		{"timestamp with a minus", withTimestamp(func(ts string) string { return "-" + ts }), 401, ""},
		// The same instant, so the signature over its canonical form holds.
		{"timestamp with a plus", withTimestamp(func(ts string) string { return "+" + ts }), 200, testRequestID},
		{"timestamp with a space", withTimestamp(func(ts string) string { return " " + ts }), 401, ""},
		{"signature of 100k entries", withHeaders(func(h http.Header) {
			h.Set("svix-signature", strings.Repeat("v1,AAAA ", 100_000))
		}), 401, ""},
		{"svix-id with CR LF and 10k chars", withHeaders(func(h http.Header) {
			h.Set("svix-id", "msg\r\nlevel=ERROR "+strings.Repeat("x", 10_000))
		}), 401, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newRig(t, "  ,"+testSecret+",,")
			resp := rig.deliver(tc.request())
			if resp.Code != tc.wantStatus {
				t.Fatalf("status = %d, want %d", resp.Code, tc.wantStatus)
			}
			var want []apiCall
			if tc.wantFetch != "" {
				want = []apiCall{{Path: "/optimize/cluster/" + tc.wantFetch, APIKey: testAPIKey}}
			}
			rig.api.assertCalls(t, want)
			for _, line := range strings.Split(strings.TrimSpace(rig.logs.String()), "\n") {
				if !strings.HasPrefix(line, "time=") || len(line) > 4096 {
					t.Errorf("log line forged or unbounded: %.200q", line)
				}
			}
		})
	}
}

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

			if resp.Code != http.StatusOK || resp.Body.String() != "fetched\n" ||
				resp.Header().Get("Content-Type") != "text/plain; charset=utf-8" {
				t.Fatalf(
					"answer = %d %q (%s), want 200 \"fetched\\n\" (text/plain; charset=utf-8)",
					resp.Code,
					resp.Body,
					resp.Header().Get("Content-Type"),
				)
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
			if !strings.Contains(logs, `msg="optimization result"`) ||
				!strings.Contains(logs, `\"timestamp\":\"2024-12-04T16:52:49.303000\"`) {
				t.Errorf("debug log lacks the whole result:\n%s", logs)
			}
		})
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
			if logs := rig.logs.String(); !strings.Contains(logs, "signature not verified") ||
				!strings.Contains(logs, tc.reason) {
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
					at := time.Now().Add(tc.signedAt)
					body := requestBody(testRequestID)
					req = signedDeliveryAt(t, testSecret, "/webhook/route", body, "msg_future", at)
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
			t.Fatalf(
				"status = %d, abort header %q: want 400 with abort-message",
				resp.Code,
				resp.Header().Get("webhook-delivery"),
			)
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
				if logs := rig.logs.String(); !strings.Contains(logs, tc.wantLog) ||
					!strings.Contains(logs, "Svix will retry") {
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
			resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/route", requestBody(id)))
			if resp.Code != http.StatusOK {
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
			t.Fatalf(
				"header of %d bytes and %d entries, want %d and %d",
				len(header),
				strings.Count(header, " ")+1,
				size,
				entries,
			)
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

func TestMemoryFollowsTheBytesSentNotTheDeclaredLength(t *testing.T) {
	rig := newRig(t, testSecret)
	// Declared over the cap: refused before a byte is read.
	req := httptest.NewRequest(http.MethodPost, "/webhook/cluster", io.LimitReader(zeros{}, 1))
	req.ContentLength = 1 << 20
	if resp := rig.deliver(req); resp.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("1 MiB declared: status %d, want 413", resp.Code)
	}

	// Declared at the cap, one byte sent, then the client stalls and goes.
	const n = 100
	allocated := bytesAllocated(func() {
		for range n {
			req := httptest.NewRequest(http.MethodPost, "/webhook/cluster",
				io.MultiReader(strings.NewReader("{"), errReader{io.ErrUnexpectedEOF}))
			req.ContentLength = maxBodyBytes
			if resp := rig.deliver(req); resp.Code != http.StatusBadRequest {
				t.Fatalf("status %d, want 400", resp.Code)
			}
		}
	})
	if perRequest := allocated / n; perRequest > maxBodyBytes/8 {
		t.Errorf("a request that declared %d bytes and sent 1 allocated %d bytes", maxBodyBytes, perRequest)
	}
	rig.api.assertCalls(t, nil)
}

// TestJunkSignatureHeadersCostWhatAnyRejectionCosts: thousands of junk
// signatures are refused before the library splits and compares them.
func TestJunkSignatureHeadersCostWhatAnyRejectionCosts(t *testing.T) {
	rig := buildRig(
		t,
		rigConfig{secrets: []string{testSecret, secondSecret, wrongSecret}, apiURL: "http://optipick.test",
			transport: handlerTransport{&fakeAPI{}}, level: slog.LevelInfo, format: "text"},
	)
	allocsFor := func(signature string) float64 {
		req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
		req.Header.Set("svix-signature", signature)
		body := requestBody(testRequestID)
		return testing.AllocsPerRun(50, func() {
			setBody(req, body)
			if resp := rig.deliver(req); resp.Code != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", resp.Code)
			}
		})
	}
	plain := allocsFor("v1,AAAA")
	junk := allocsFor(strings.TrimSpace(strings.Repeat("v1,A ", 3500))) // fits the 16 KiB header cap
	if junk > plain {
		t.Errorf("junk signatures: %.0f allocations per request, a plain wrong one %.0f", junk, plain)
	}
	// Rotation, with a few signatures, still verifies.
	req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
	other := signedDelivery(t, secondSecret, "/webhook/cluster", requestBody(testRequestID))
	req.Header.Set("svix-signature", "v1,AAAA "+other.Header.Get("svix-signature")+" "+req.Header.Get("svix-signature"))
	if resp := rig.deliver(req); resp.Code != http.StatusBadGateway && resp.Code != http.StatusOK {
		t.Fatalf("three signatures, the last valid: status %d, want it verified", resp.Code)
	}
}

func TestTooManySecretsAreRefused(t *testing.T) {
	secrets := strings.TrimSpace(strings.Repeat(testSecret+" ", maxSecrets))
	if _, err := newVerifier(secrets); err != nil {
		t.Fatalf("%d secrets: %v", maxSecrets, err)
	}
	if _, err := newVerifier(secrets + " " + secondSecret); err == nil ||
		!strings.Contains(err.Error(), fmt.Sprintf("at most %d", maxSecrets)) {
		t.Fatalf("%d secrets: %v, want a refusal naming the limit", maxSecrets+1, err)
	}
}

// TestARefusedDeliveryLogsTheIDItClaimed: a refused delivery's log line
// names the message id it sent, whichever headers it used: svix-id
// without the other svix-* headers, or webhook-id (Standard Webhooks).
func TestARefusedDeliveryLogsTheIDItClaimed(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header map[string]string
	}{
		{"svix-id alone", map[string]string{"Svix-Id": "msg_claimed"}},
		{"svix-id without a signature", map[string]string{"Svix-Id": "msg_claimed", "Svix-Timestamp": "1"}},
		{"webhook-* headers", map[string]string{"Webhook-Id": "msg_claimed", "Webhook-Timestamp": "1",
			"Webhook-Signature": "v1,AAAA"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newBubbleRig(t, testSecret)
			req := httptest.NewRequest(http.MethodPost, "/webhook/cluster", bytes.NewReader(requestBody(testRequestID)))
			for name, value := range tc.header {
				req.Header.Set(name, value)
			}
			if resp := rig.deliver(req); resp.Code != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", resp.Code)
			}
			if !strings.Contains(rig.logs.String(), "svix_id=msg_claimed") {
				t.Errorf("the log does not name the id the delivery claimed:\n%s", rig.logs)
			}
		})
	}
}

// serverFetchingWith is the whole service with fetch in place of the API
// client, and a dedupe window of 0: every delivery is a new one, not a
// remembered one.
func serverFetchingWith(v verifier, fetch func(context.Context, kind, string) (*optimization, error),
	logger *slog.Logger) http.Handler {
	return newServer(webhookDeps{
		logger:   logger,
		verifier: v,
		seen:     newDedupe(0, 1),
		fetch:    fetch,
		process:  logSummary(logger),
		metrics:  noMetrics{},
	}, alwaysReady)
}
