package main

// Regression tests for what a hostile client or a misbehaving API could do
// (README "Limits against unauthenticated clients"). Floods are measured in
// allocations, connections or lines, never in wall time.

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
	"unicode"
)

// bytesAllocated is what f allocates on the heap, all goroutines included.
func bytesAllocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
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

// TestAnAnswerThatIsNotThisResultIsAFailedFetch: a redirect (never
// followed: the key goes nowhere else) or a 200 that is not this result is
// answered 502, logged at ERROR with why, and not remembered, so that
// Svix's retry is fetched again.
func TestAnAnswerThatIsNotThisResultIsAFailedFetch(t *testing.T) {
	elsewhere := &fakeAPI{}
	other := httptest.NewServer(elsewhere)
	defer other.Close()
	text := func(body string) func(w http.ResponseWriter, r *http.Request) {
		return func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }
	}
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
		why    string
	}{
		{"redirect to another host", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
		}, "307 Temporary Redirect (a redirect, not followed"},
		{"gateway error message", text(`{"message":"Internal server error"}`), "not with this result: no request_id"},
		{"null", text(`null`), "not a JSON object"},
		{"array", text(`[]`), "not a JSON object"},
		{"another result", text(`{"request_id":"674f5c1e2b8a4d0012ab0000","site_name":"Elsewhere"}`), "request_id is 674f5c1e2b8a4d0012ab0000, not " + testRequestID},
		{"a request_id that is not an id", text(`{"request_id":"` + strings.Repeat("x ", 5000) + `"}`), "request_id is not " + testRequestID + ", nor an id (10000 bytes)"},
		{"request_id of another type", text(`{"request_id":7}`), "not with this result: no request_id"},
		{"request_id empty, then given", text(`{"request_id":"","request_id":"` + testRequestID + `"}`), "request_id given twice"},
		{"request_id twice", text(`{"request_id":"` + testRequestID + `","request_id":"other"}`), "request_id given twice"},
		{"data after the result", text(`{"request_id":"` + testRequestID + `"} {}`), "data after the JSON object"},
		{"truncated", text(`{"request_id":"` + testRequestID + `","picks":[`), "EOF"},
		{"HTML", text(`<html>502 Bad Gateway</html>`), "not with this result: not JSON"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newRig(t, testSecret)
			var mu sync.Mutex
			broken := true
			rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				if broken {
					tc.answer(w, r)
					return
				}
				writeClusterResult(w, testRequestID)
			}
			body := requestBody(testRequestID)
			resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_not_this", time.Now()))
			if resp.Code != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", resp.Code)
			}
			logs := rig.logs.String()
			if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, tc.why) || strings.Contains(logs, "optimization fetched") {
				t.Errorf("log lacks an ERROR saying %q, or says fetched:\n%s", tc.why, logs)
			}
			elsewhere.assertCalls(t, nil)

			mu.Lock()
			broken = false
			mu.Unlock()
			rig.svixRetriesLater()
			resp = rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_not_this", time.Now()))
			if resp.Code != http.StatusOK || resp.Body.String() != "fetched\n" {
				t.Fatalf("Svix's retry: %d %q, want 200 fetched (the failure must not be remembered)", resp.Code, resp.Body)
			}
		})
	}
}

func TestTheKeyIsRedactedFromEveryExcerpt(t *testing.T) {
	for _, status := range []int{200, 403, 500} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rig := newBubbleRig(t, testSecret)
				rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
					// A proxy that echoes the request, key included, near the
					// excerpt's end, so that a short read window would cut it.
					w.WriteHeader(status)
					fmt.Fprintf(w, "%sX-Api-Key: %s\r\n", strings.Repeat("-", maxExcerptBytes-20), r.Header.Get("X-API-KEY"))
				}
				if resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))); resp.Code < 500 {
					t.Fatalf("status %d, want 5xx", resp.Code)
				}
				// assertNoSecrets runs at cleanup; the marker shows the excerpt was logged.
				if logs := rig.logs.String(); !strings.Contains(logs, "X-Api-Key: [API ke") {
					t.Errorf("log lacks the redacted excerpt:\n%s", logs)
				}
			})
		})
	}
}

// TestJunkSignatureHeadersCostWhatAnyRejectionCosts: thousands of junk
// signatures are refused before the library splits and compares them.
func TestJunkSignatureHeadersCostWhatAnyRejectionCosts(t *testing.T) {
	rig := buildRig(t, rigConfig{secrets: []string{testSecret, secondSecret, wrongSecret}, apiURL: "http://optipick.test",
		transport: handlerTransport{&fakeAPI{}}, level: slog.LevelInfo, format: "text"})
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
	if _, err := newVerifier(secrets + " " + secondSecret); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("at most %d", maxSecrets)) {
		t.Fatalf("%d secrets: %v, want a refusal naming the limit", maxSecrets+1, err)
	}
}

// TestLargeResultsAreStreamedNotHeld: eight concurrent large results cost
// a small fraction of their size in memory (at info level, where the raw
// JSON is not kept).
func TestLargeResultsAreStreamedNotHeld(t *testing.T) {
	const deliveries = 8
	// 8 MiB each proves the point (the README's figure, 30 MiB each, was
	// measured on the built binary) and leaves a loaded machine time.
	size := 8 << 20
	if raceEnabled { // the race detector slows streaming about tenfold
		size = 2 << 20
	}
	pick := []byte(`{"pick_id":"p","location_id":"A-01","optim_sequence":1,"asis_sequence":2},`)
	picks := size / len(pick)
	api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		fmt.Fprintf(w, `{"request_id":%q,"site_name":"Big","picks":[`, id)
		for range picks {
			w.Write(pick)
		}
		io.WriteString(w, `{"pick_id":"last"}]}`)
	}}
	server := httptest.NewServer(api)
	defer server.Close()
	rig := buildRig(t, rigConfig{api: api, apiURL: server.URL, secrets: []string{testSecret}, level: slog.LevelInfo, format: "text"})

	var wg sync.WaitGroup
	codes := make([]int, deliveries)
	allocated := bytesAllocated(func() {
		for i := range deliveries {
			req := signedDelivery(t, testSecret, "/webhook/route", requestBody(fmt.Sprintf("big%d", i)))
			wg.Go(func() { codes[i] = rig.deliver(req).Code })
		}
		wg.Wait()
	})
	for i, code := range codes {
		if code != http.StatusOK {
			t.Errorf("delivery %d: status %d, want 200\n%s", i, code, rig.logs)
		}
	}
	if want := fmt.Sprintf("picks=%d", picks+1); strings.Count(rig.logs.String(), want) != deliveries {
		t.Errorf("log lacks %d lines with %s:\n%.2000s", deliveries, want, rig.logs)
	}
	// Both ends of every connection run in this process: the fake API's
	// writes are counted too.
	if total := uint64(size * deliveries); allocated > max(total/20, 4<<20) {
		t.Errorf("streaming %d MiB of results allocated %d MiB", total>>20, allocated>>20)
	}
}

// TestRejectionsCannotFloodTheLogs: the first rejectLogBurst rejections of
// an interval are logged, the rest counted in one line when it ends.
func TestRejectionsCannotFloodTheLogs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		unsigned := func() *http.Request {
			return httptest.NewRequest(http.MethodPost, "/webhook/cluster", bytes.NewReader(requestBody(testRequestID)))
		}
		for range 1000 {
			if resp := rig.deliver(unsigned()); resp.Code != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", resp.Code)
			}
		}
		if got := strings.Count(rig.logs.String(), "\n"); got != rejectLogBurst {
			t.Fatalf("%d log lines for 1000 rejections, want %d", got, rejectLogBurst)
		}
		time.Sleep(rejectLogInterval)
		synctest.Wait()
		logs := rig.logs.String()
		if !strings.Contains(logs, `msg="rejected or repeated deliveries not logged, over the log rate limit" count=980`) {
			t.Fatalf("no count of the suppressed lines:\n%s", logs[max(0, len(logs)-500):])
		}
		// A new interval logs again.
		rig.deliver(unsigned())
		if got := strings.Count(rig.logs.String(), "\n"); got != rejectLogBurst+2 {
			t.Errorf("%d log lines, want %d", got, rejectLogBurst+2)
		}
	})
}

// TestUnverifiedHeadersReachTheLogsEscaped: no control or bidirectional
// character from a client reaches a log line, in either format.
func TestUnverifiedHeadersReachTheLogsEscaped(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			rig := buildRig(t, rigConfig{secrets: []string{testSecret}, apiURL: "http://optipick.test",
				transport: handlerTransport{&fakeAPI{}}, level: slog.LevelDebug, format: format})
			for _, id := range []string{"msg_\u202egnp.exe", "msg_\x1b[31mred", "msg_\r\nlevel=ERROR", "msg_\u2028x", "msg_\xff"} {
				req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
				req.Header["Svix-Id"] = []string{id}
				if resp := rig.deliver(req); resp.Code != http.StatusUnauthorized {
					t.Fatalf("svix-id %q: status %d, want 401", id, resp.Code)
				}
			}
			logs := rig.logs.String()
			if strings.Count(logs, "\n") != 5 {
				t.Errorf("want 5 lines:\n%s", logs)
			}
			for _, r := range strings.TrimSuffix(logs, "\n") {
				if r != '\n' && (!unicode.IsPrint(r) || r == unicode.ReplacementChar) {
					t.Fatalf("log holds %U:\n%q", r, logs)
				}
			}
		})
	}
}

// TestAnAPIEchoingTheKeyNeverPutsItInTheLogs: whatever part of its answer
// the API (or a proxy) fills with the key, the logs show "[API key]".
func TestAnAPIEchoingTheKeyNeverPutsItInTheLogs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer string // %[1]s is the key, %[2]s the request_id
	}{
		{"as the request_id", `{"request_id":%[1]q}`},
		{"in a name of a broken result", `{"request_id":%[2]q,%[1]q:tru}`},
		{"in the site and the error of a result", `{"request_id":%[2]q,"site_name":"site of %[1]s","error":"no key %[1]s"}`},
		{"in a string too long to read", `{"request_id":%[2]q,"x":"%[1]s` + strings.Repeat("k", maxTokenBytes) + `"}`},
		{"in an answer that is not JSON", `not json %[1]s`},
		{"in a 200 that is not the result", `{"message":"bad key %[1]s"}`},
		// Where a field is cut for the log, the key straddling the cut
		// (15 of its bytes before it).
		{"across the cut of a long site name", `{"request_id":%[2]q,"site_name":"` + strings.Repeat("a", maxSiteNameBytes-15) + `%[1]s"}`},
		{"across the cut of a long error", `{"request_id":%[2]q,"error":"` + strings.Repeat("a", maxErrorBytes-15) + `%[1]s"}`},
		{"in a long request_id", `{"request_id":"` + strings.Repeat("a", 49) + `%[1]s"}`},
		{"in a request_id that is not an id", `{"request_id":"` + strings.Repeat("a", 48) + ` %[1]s"}`},
		// jsontext's syntax errors say where they are by the object names,
		// cut to 100 bytes keeping the start and the end.
		{"in the names around a syntax error", `{"request_id":%[2]q,"` + strings.Repeat("a", 35) + `%[1]s":{"%[1]s` + strings.Repeat("a", 35) + `":nonsense}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rig := newRig(t, testSecret)
			rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, tc.answer, r.Header.Get("X-API-KEY"), testRequestID)
			}
			rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
			// assertNoSecrets runs at cleanup; this shows the key was there to leak.
			if logs := rig.logs.String(); !strings.Contains(logs, "[API key]") {
				t.Errorf("log lacks the redacted key:\n%s", logs)
			}
		})
	}
}

// TestHugeTokensAreRefusedNotHeld: a result that is one enormous string
// (the decoder would hold it whole), plain or compressed 1,000 to 1, is a
// failed fetch that costs a small fraction of its size.
func TestHugeTokensAreRefusedNotHeld(t *testing.T) {
	const size = 30 << 20
	var compressed bytes.Buffer
	zw := gzip.NewWriter(&compressed)
	fmt.Fprintf(zw, `{"request_id":%q,"site_name":"`, testRequestID)
	zw.Write(bytes.Repeat([]byte("a"), size))
	io.WriteString(zw, `"}`)
	zw.Close()
	for _, gzipped := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip=%v", gzipped), func(t *testing.T) {
			api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
				if gzipped {
					w.Header().Set("Content-Encoding", "gzip")
					w.Write(compressed.Bytes())
					return
				}
				fmt.Fprintf(w, `{"request_id":%q,"site_name":"`, testRequestID)
				io.Copy(w, io.LimitReader(zeros{}, size))
				io.WriteString(w, `"}`)
			}}
			server := httptest.NewServer(api)
			defer server.Close()
			rig := buildRig(t, rigConfig{api: api, apiURL: server.URL, secrets: []string{testSecret}, level: slog.LevelInfo, format: "text"})
			const deliveries = 4
			codes := make([]int, deliveries)
			var wg sync.WaitGroup
			allocated := bytesAllocated(func() {
				for i := range deliveries {
					req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
					wg.Go(func() { codes[i] = rig.deliver(req).Code })
				}
				wg.Wait()
			})
			for i, code := range codes {
				if code != http.StatusBadGateway {
					t.Errorf("delivery %d: status %d, want 502", i, code)
				}
			}
			if !strings.Contains(rig.logs.String(), "a JSON token over") {
				t.Errorf("log does not say why:\n%.1000s", rig.logs)
			}
			if allocated > 16<<20 {
				t.Errorf("%d results of one %d MiB string allocated %d MiB", deliveries, size>>20, allocated>>20)
			}
		})
	}
}

// TestURLCredentialsNeverReachTheLogs: a user and password in
// OPTIPICK_API_URL are sent to the API, and redacted wherever the URL is
// logged.
func TestURLCredentialsNeverReachTheLogs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(w http.ResponseWriter, r *http.Request)
	}{
		{"404", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) }},
		{"500", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "down", http.StatusInternalServerError) }},
		{"200 that is not this result", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, `{"message":"x"}`) }},
	} {
		for _, secret := range []struct{ inURL, password string }{
			{"pa55word", "pa55word"},
			{"p%40ss%2Fw0rd", "p@ss/w0rd"}, // percent-encoded in the URL
		} {
			t.Run(tc.name+"/"+secret.inURL, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					api := &fakeAPI{}
					var user, password string
					api.respond = func(w http.ResponseWriter, r *http.Request) {
						user, password, _ = r.BasicAuth()
						tc.answer(w, r)
					}
					rig := buildRig(t, rigConfig{api: api, apiURL: "http://svc:" + secret.inURL + "@optipick.test/latest/", transport: handlerTransport{api},
						secrets: []string{testSecret}, level: slog.LevelDebug, format: "text"})
					if resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))); resp.Code != http.StatusBadGateway {
						t.Fatalf("status %d, want 502", resp.Code)
					}
					if user != "svc" || password != secret.password {
						t.Errorf("the API got user %q password %q", user, password)
					}
					logs := rig.logs.String()
					if strings.Contains(logs, secret.password) || strings.Contains(logs, secret.inURL) || !strings.Contains(logs, "Svix will retry") {
						t.Errorf("logs hold the password, or lack the failure:\n%s", logs)
					}
				})
			})
		}
	}
}

// TestReplaysOfAnUnusableBodyCannotFloodTheLogs: a genuine delivery whose
// body has no valid request_id is logged at ERROR (OptiPick may have
// changed its body), but its replays are rate-limited like rejections.
func TestReplaysOfAnUnusableBodyCannotFloodTheLogs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		for range 100 {
			resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", []byte(`{"id":1}`), "msg_unusable", time.Now()))
			if resp.Code != http.StatusBadRequest || resp.Header().Get("webhook-delivery") != "abort-message" {
				t.Fatalf("status %d, want 400 with abort-message", resp.Code)
			}
		}
		if n := strings.Count(rig.logs.String(), "level=ERROR"); n != rejectLogBurst {
			t.Errorf("%d ERROR lines for 100 replays, want %d", n, rejectLogBurst)
		}
	})
}
