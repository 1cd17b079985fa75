package main

// Tests of the API client: retries, deadlines, bounds on what the API
// sends, and what it refuses as not this result.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// TestSlowAPIBoundsCallsInFlight: with an API slower than deliveries
// arrive, calls in flight stay bounded and the excess gets 503 within the
// deadline instead of piling up.
func TestSlowAPIBoundsCallsInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 300
		var inFlight, peak, calls atomic.Int32
		api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			select {
			case <-time.After(4 * time.Second):
				writeClusterResult(w, path.Base(r.URL.Path))
			case <-r.Context().Done():
			}
		}}
		// Count calls in flight where the client sees them.
		counting := roundTripFunc(func(req *http.Request) (*http.Response, error) {
			now := inFlight.Add(1)
			defer inFlight.Add(-1)
			for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
			}
			return handlerTransport{api}.RoundTrip(req)
		})
		rig := newRigWith(t, api, "http://optipick.test", counting, []string{testSecret})
		codes := make([]int, n)
		took := make([]time.Duration, n)
		var wg sync.WaitGroup
		for i := range n {
			req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(fmt.Sprintf("id%d", i)))
			wg.Go(func() {
				start := time.Now()
				codes[i] = rig.deliver(req).Code
				took[i] = time.Since(start)
			})
		}
		wg.Wait()

		count := map[int]int{}
		for i, code := range codes {
			count[code]++
			if took[i] > deliveryDeadline {
				t.Errorf("delivery %d answered after %v, past the %v deadline", i, took[i], deliveryDeadline)
			}
		}
		if p := peak.Load(); p > maxConcurrentFetches {
			t.Errorf("peak API calls in flight = %d, want at most %d", p, maxConcurrentFetches)
		}
		// 504: got a slot, but the API did not answer before the deadline.
		if count[200]+count[503]+count[504] != n || count[503] == 0 || count[200] < maxConcurrentFetches {
			t.Errorf("answers %v: want 200s, 503s and maybe 504s", count)
		}
		// Each id is fetched at most once; every 200 was fetched; a 504 may
		// have had no call (its slot came free just as its deadline passed).
		perPath := map[string]int{}
		for _, call := range api.recorded() {
			if perPath[call.Path]++; perPath[call.Path] > 1 {
				t.Errorf("%s fetched more than once", call.Path)
			}
		}
		if n := int(calls.Load()); n < count[200] || n > count[200]+count[504] {
			t.Errorf("%d API calls for %d answers of 200 and %d of 504", n, count[200], count[504])
		}
	})
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
		{"request_id twice: the last counts", text(`{"request_id":"` + testRequestID + `","request_id":"other"}`), "request_id is other, not"},
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
			if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, tc.why) ||
				strings.Contains(logs, "optimization fetched") {
				t.Errorf("log lacks an ERROR saying %q, or says fetched:\n%s", tc.why, logs)
			}
			elsewhere.assertCalls(t, nil)

			mu.Lock()
			broken = false
			mu.Unlock()
			rig.svixRetriesLater()
			resp = rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_not_this", time.Now()))
			if resp.Code != http.StatusOK || resp.Body.String() != "fetched\n" {
				t.Fatalf(
					"Svix's retry: %d %q, want 200 fetched (the failure must not be remembered)",
					resp.Code,
					resp.Body,
				)
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
					fmt.Fprintf(
						w,
						"%sX-Api-Key: %s\r\n",
						strings.Repeat("-", maxExcerptBytes-20),
						r.Header.Get("X-API-KEY"),
					)
				}
				resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
				if resp.Code < 500 {
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
					rig := buildRig(
						t,
						rigConfig{
							api:       api,
							apiURL:    "http://svc:" + secret.inURL + "@optipick.test/latest/",
							transport: handlerTransport{api},
							secrets:   []string{testSecret},
							level:     slog.LevelDebug,
							format:    "text",
						},
					)
					resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
					if resp.Code != http.StatusBadGateway {
						t.Fatalf("status %d, want 502", resp.Code)
					}
					if user != "svc" || password != secret.password {
						t.Errorf("the API got user %q password %q", user, password)
					}
					logs := rig.logs.String()
					if strings.Contains(logs, secret.password) || strings.Contains(logs, secret.inURL) ||
						!strings.Contains(logs, "Svix will retry") {
						t.Errorf("logs hold the password, or lack the failure:\n%s", logs)
					}
				})
			})
		}
	}
}

// newBubbleClient is a client whose API is handler, in memory.
func newBubbleClient(t *testing.T, handler http.HandlerFunc) *optiPickClient {
	t.Helper()
	base, _ := url.Parse("http://optipick.test")
	return clientOver(base, true, handlerTransport{handler})
}

func TestFetchRetries(t *testing.T) {
	for _, tc := range []struct {
		name      string
		answers   []int  // status per call; the last repeats
		header    string // Retry-After on non-200 answers
		wantCalls int
		wantErr   error // nil: the fetch succeeds
		minTook   time.Duration
	}{
		{"503 twice, then 200", []int{503, 503, 200}, "", 3, nil, 2 * firstBackoff / 2},
		{"502, then 200", []int{502, 200}, "", 2, nil, 0},
		{"429 with Retry-After that fits", []int{429, 200}, "3", 2, nil, 3 * time.Second},
		{"503 with Retry-After that fits", []int{503, 200}, "2", 2, nil, 2 * time.Second},
		{"429 with Retry-After past the deadline", []int{429}, "120", 1, errRetryLater, 0},
		{"429 without Retry-After, until attempts run out", []int{429}, "", maxAttempts, nil, 0},
		{"400 is final", []int{400, 200}, "", 1, nil, 0},
		{"403 is final", []int{403, 200}, "", 1, nil, 0},
		{"404 is final", []int{404, 200}, "", 1, nil, 0},
		{"500 until attempts run out", []int{500}, "", maxAttempts, nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls atomic.Int32
				client := newBubbleClient(t, func(w http.ResponseWriter, r *http.Request) {
					n := int(calls.Add(1))
					status := tc.answers[min(n, len(tc.answers))-1]
					if status == http.StatusOK {
						writeClusterResult(w, testRequestID)
						return
					}
					if tc.header != "" {
						w.Header().Set("Retry-After", tc.header)
					}
					w.WriteHeader(status)
				})
				ctx, cancel := context.WithTimeout(t.Context(), deliveryDeadline)
				defer cancel()
				start := time.Now()
				result, err := client.fetch(ctx, "cluster", testRequestID)
				took := time.Since(start)

				succeeds := tc.answers[min(tc.wantCalls, len(tc.answers))-1] == http.StatusOK
				switch {
				case succeeds && err != nil:
					t.Fatalf("fetch: %v, want a result", err)
				case succeeds && result.SiteName != "Example":
					t.Fatalf("result = %+v", result)
				case !succeeds && err == nil:
					t.Fatal("fetch succeeded, want an error")
				case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
					t.Fatalf("fetch: %v, want %v", err, tc.wantErr)
				}
				if got := int(calls.Load()); got != tc.wantCalls {
					t.Errorf("API called %d times, want %d", got, tc.wantCalls)
				}
				if took < tc.minTook || took >= deliveryDeadline {
					t.Errorf("took %v, want at least %v and less than %v", took, tc.minTook, deliveryDeadline)
				}
			})
		})
	}
}

func TestFetchRetriesNetworkErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		base, _ := url.Parse("http://optipick.test")
		client := clientOver(base, true, roundTripFunc(func(req *http.Request) (*http.Response, error) {
			if calls.Add(1) == 1 {
				return nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
			}
			return handlerTransport{&fakeAPI{}}.RoundTrip(req)
		}))
		result, err := client.fetch(t.Context(), "route", testRequestID)
		if err != nil {
			t.Fatal(err)
		}
		if int(result.Picks) != 3 || calls.Load() != 2 {
			t.Errorf("picks = %d, calls = %d; want 3 picks after 2 calls", result.Picks, calls.Load())
		}
	})
}

func TestFetchStopsWhenTheDeadlinePasses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newBubbleClient(t, func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		})
		ctx, cancel := context.WithTimeout(t.Context(), deliveryDeadline)
		defer cancel()
		start := time.Now()
		_, err := client.fetch(ctx, "cluster", testRequestID)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("fetch: %v, want DeadlineExceeded", err)
		}
		if statusFor(err) != http.StatusGatewayTimeout {
			t.Errorf("status = %d, want 504", statusFor(err))
		}
		if took := time.Since(start); took != deliveryDeadline {
			t.Errorf("took %v, want exactly the deadline %v", took, deliveryDeadline)
		}
	})
}

func TestBackoffGrowsWithJitterAndACap(t *testing.T) {
	for attempt := 1; attempt <= 10; attempt++ {
		ceiling := min(firstBackoff<<(attempt-1), maxBackoff)
		for range 100 {
			if d := backoff(attempt); d < ceiling/2 || d > ceiling {
				t.Fatalf("backoff(%d) = %v, want within [%v, %v]", attempt, d, ceiling/2, ceiling)
			}
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	for value, want := range map[string]time.Duration{
		"":                              0,
		"7":                             7 * time.Second,
		"-3":                            0,
		"soon":                          0,
		"Thu, 26 Nov 2026 12:00:30 GMT": 30 * time.Second,
		"Thu, 26 Nov 2026 11:59:00 GMT": 0,
		"99999999999999999999":          0,
	} {
		if got := parseRetryAfter(value, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", value, got, want)
		}
	}
}

func TestOptimizationURL(t *testing.T) {
	for _, tc := range []struct{ base, want string }{
		{"https://optipick.api.optioryx.com", "https://optipick.api.optioryx.com/optimize/cluster/abc"},
		{"https://optipick.api.optioryx.com/", "https://optipick.api.optioryx.com/optimize/cluster/abc"},
		{"https://x.execute-api.eu-west-1.amazonaws.com/latest", "https://x.execute-api.eu-west-1.amazonaws.com/latest/optimize/cluster/abc"},
		{"https://x.execute-api.eu-west-1.amazonaws.com/latest/", "https://x.execute-api.eu-west-1.amazonaws.com/latest/optimize/cluster/abc"},
		{"http://127.0.0.1:9000//v1//", "http://127.0.0.1:9000/v1/optimize/cluster/abc"},
	} {
		base, _ := url.Parse(tc.base)
		if got, err := optimizationURL(base.JoinPath("optimize").String(), "cluster", "abc"); err != nil ||
			got != tc.want {
			t.Errorf("optimizationURL(%q) = %q, %v; want %q", tc.base, got, err, tc.want)
		}
	}
	base := "https://optipick.example/optimize"
	for _, id := range []string{"", ".", "..", "../x", "a/b", "x?y", "%2e%2e", "a\r\nb", "a#b", "ä", "a b"} {
		if got, err := optimizationURL(base, "route", id); err == nil {
			t.Errorf("optimizationURL(id %q) = %q, want an error", id, got)
		}
	}
	if _, err := optimizationURL(base, "pallet", "abc"); err == nil {
		t.Error("unknown kind accepted")
	}
}

// FuzzOptimizationURL: whatever the id, the URL is refused or names exactly
// /optimize/{kind}/{id} under the base.
func FuzzOptimizationURL(f *testing.F) {
	seeds := []string{"674f5c1e2b8a4d0012ab34cd", "../x", "..", ".", "a/b", "x?y", "%2e%2e", "a\r\nb", "a b"}
	for _, seed := range append(seeds, strings.Repeat("z", 5000)) {
		f.Add(seed)
	}
	bases := []string{"https://optipick.api.optioryx.com", "https://gw.example/latest/"}
	f.Fuzz(func(t *testing.T, id string) {
		for _, raw := range bases {
			base, _ := url.Parse(raw)
			got, err := optimizationURL(base.JoinPath("optimize").String(), "route", id)
			if err != nil {
				continue
			}
			u, err := url.Parse(got)
			if err != nil {
				t.Fatalf("built an unparseable URL %q", got)
			}
			wantPath := strings.TrimSuffix(base.Path, "/") + "/optimize/route/" + id
			if u.Path != wantPath || u.Host != base.Host || u.RawQuery != "" || u.Fragment != "" {
				t.Fatalf("id %q gave %q, want path %q on %q", id, got, wantPath, base.Host)
			}
		}
	})
}

func TestAPIErrorMessages(t *testing.T) {
	for status, want := range map[int]string{
		401: "the API key was rejected",
		403: "the API key was rejected",
		404: "for https://optipick.test/optimize/cluster/x (is the request_id unknown or unfinished, or does OPTIPICK_API_URL point at another service?)",
		500: "500 Internal Server Error",
	} {
		err := &apiError{Status: status, URL: "https://optipick.test/optimize/cluster/x", Excerpt: `{"message":"x"}`}
		if !strings.Contains(err.Error(), want) || !strings.HasSuffix(err.Error(), `: {"message":"x"}`) {
			t.Errorf("%d: %q lacks %q or the excerpt", status, err, want)
		}
	}
	// "é" is 2 bytes: 255 bytes cut inside the 128th.
	if got, want := excerpt(strings.Repeat("é", 200), 255), strings.Repeat("é", 127)+"\uFFFD"; got != want {
		t.Errorf("excerpt = %q, want %q", got, want)
	}
}

// TestRetriesOnlyWhatFitsBeforeTheDeadline: a retry is made only if its
// wait leaves more than a second for the call; otherwise the last answer
// is returned at once, not after the deadline.
func TestRetriesOnlyWhatFitsBeforeTheDeadline(t *testing.T) {
	for _, tc := range []struct {
		name       string
		left       time.Duration // before the deadline, at the first call
		status     int
		retryAfter string
		wantCalls  int
		wantStatus int // of a delivery that ends so
	}{
		// The first backoff is at most 200 ms: it does not fit in 1.1 s.
		{"backoff that does not fit", 1100 * time.Millisecond, 500, "", 1, http.StatusBadGateway},
		{"backoff that fits", 1300 * time.Millisecond, 500, "", 2, http.StatusBadGateway},
		{"Retry-After leaving exactly 1 s", 3 * time.Second, 429, "2", 1, http.StatusServiceUnavailable},
		{"Retry-After leaving over 1 s", 3*time.Second + time.Millisecond, 429, "2", 2, http.StatusServiceUnavailable},
		{"Retry-After on a 503 leaving exactly 1 s", 3 * time.Second, 503, "2", 1, http.StatusServiceUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var calls atomic.Int32
				client := newBubbleClient(t, func(w http.ResponseWriter, r *http.Request) {
					calls.Add(1)
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					w.WriteHeader(tc.status)
				})
				ctx, cancel := context.WithTimeout(t.Context(), tc.left)
				defer cancel()
				start := time.Now()
				_, err := client.fetch(ctx, "cluster", testRequestID)
				if err == nil {
					t.Fatal("fetch succeeded")
				}
				if got := int(calls.Load()); got != tc.wantCalls {
					t.Errorf("API called %d times, want %d (%v)", got, tc.wantCalls, err)
				}
				if tc.wantCalls == 1 && time.Since(start) != 0 {
					t.Errorf("returned after %v, want at once: there was no time to retry", time.Since(start))
				}
				if errors.Is(err, context.DeadlineExceeded) && tc.wantCalls == 1 {
					t.Errorf("fetch: %v, want the API's answer, not the deadline", err)
				}
				if got := statusFor(err); got != tc.wantStatus {
					t.Errorf("a delivery would be answered %d, want %d (%v)", got, tc.wantStatus, err)
				}
			})
		})
	}
}

// TestErrorAnswersLeaveTheConnectionReusable: the body of an error answer
// is read to its end (up to 64 KiB), so the next call reuses the
// connection instead of opening another.
func TestErrorAnswersLeaveTheConnectionReusable(t *testing.T) {
	var conns atomic.Int32
	var calls atomic.Int32
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, strings.Repeat("not found ", 3000)) // 30 KB
			return
		}
		writeClusterResult(w, testRequestID)
	}))
	server.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	server.Start()
	defer server.Close()
	base, _ := url.Parse(server.URL)
	client := clientOver(base, false, nil) // the service's own transport
	if _, err := client.fetch(t.Context(), "cluster", testRequestID); err == nil {
		t.Fatal("first fetch succeeded, want the 404")
	}
	if _, err := client.fetch(t.Context(), "cluster", testRequestID); err != nil {
		t.Fatal(err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("two calls used %d connections, want 1", n)
	}
}

// TestFetchStopsWaitingWhenTheDeliveryEnds: a delivery whose sender went
// away during a backoff stops at once, with both reasons.
func TestFetchStopsWaitingWhenTheDeliveryEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		client := newBubbleClient(t, func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			w.WriteHeader(http.StatusServiceUnavailable)
		})
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(50*time.Millisecond, cancel) // the first backoff is at least 100 ms
		start := time.Now()
		_, err := client.fetch(ctx, "cluster", testRequestID)
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "503") {
			t.Fatalf("fetch: %v, want context.Canceled after the 503", err)
		}
		if took := time.Since(start); took != 50*time.Millisecond || calls.Load() != 1 {
			t.Errorf("returned after %v and %d calls, want at the cancel, after 1", took, calls.Load())
		}
	})
}

func TestFetchRefusesAnUnknownKind(t *testing.T) {
	client := newBubbleClient(t, func(w http.ResponseWriter, r *http.Request) { t.Error("the API was called") })
	if _, err := client.fetch(t.Context(), "pallet", testRequestID); err == nil ||
		!strings.Contains(err.Error(), `unknown optimization kind "pallet"`) {
		t.Fatalf("fetch of kind pallet: %v", err)
	}
}

// TestTheExcerptShowsTheBodyWhereTheDecoderStopped: a 200 whose first byte
// is already wrong still logs the start of the body, not only what the
// decoder had read.
func TestTheExcerptShowsTheBodyWhereTheDecoderStopped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		client := newBubbleClient(t, func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "<")
			w.(http.Flusher).Flush()
			time.Sleep(time.Millisecond) // the rest comes in a later read
			io.WriteString(w, "html><title>502 Bad Gateway</title></html>")
		})
		_, err := client.fetch(t.Context(), kindCluster, testRequestID)
		if err == nil || !strings.Contains(err.Error(), "body starts: <html><title>502 Bad Gateway</title></html>") {
			t.Fatalf("fetch: %v, want the body's start", err)
		}
	})
}

// TestHugeResponseHeadersAreAFailedFetch: an API (or a proxy in front of
// it) that answers with megabytes of headers is refused once it has sent
// maxResponseHeaderBytes, instead of being held, times every fetch in
// flight; the error says why.
func TestHugeResponseHeadersAreAFailedFetch(t *testing.T) {
	junk := strings.Repeat("a", 64<<10)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for i := range 64 {
			w.Header()[fmt.Sprintf("X-Junk-%d", i)] = []string{junk}
		}
		writeClusterResult(w, testRequestID)
	}))
	defer api.Close()
	base, _ := url.Parse(api.URL)
	client := clientOver(base, false, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second) // no time for a retry
	defer cancel()
	var err error
	allocated := bytesAllocated(func() { _, err = client.fetch(ctx, kindCluster, testRequestID) })
	if err == nil || !strings.Contains(err.Error(), "headers exceeded") {
		t.Fatalf("fetch with 4 MiB of response headers: %v, want an error about their size", err)
	}
	if allocated > 1<<20 {
		t.Errorf("a fetch with 4 MiB of response headers allocated %d bytes", allocated)
	}
}

// TestAStalledResultBodyIs504: a 200 whose body stalls until the deadline
// is a deadline that passed: 504, as for an API that does not answer.
func TestAStalledResultBodyIs504(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"request_id":"`+testRequestID+`","picks":[`)
			<-r.Context().Done()
		}
		resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
		if !strings.Contains(rig.logs.String(), "but its result had not arrived by the deadline") {
			t.Errorf("the log does not say the result did not arrive in time:\n%s", rig.logs)
		}
		if resp.Code != http.StatusGatewayTimeout {
			t.Errorf("a result body that stalls past the deadline: %d %q, want 504\n%s", resp.Code, resp.Body, rig.logs)
		}
	})
}

// TestAnUnreachableAPINamesTheSetting: an API that refuses connections is
// a failed fetch whose error names OPTIPICK_API_URL, the setting to check.
func TestAnUnreachableAPINamesTheSetting(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close() // its port now refuses connections
	base, _ := url.Parse(closed.URL)
	ctx, cancel := context.WithTimeout(t.Context(), time.Second) // no time for a retry
	defer cancel()
	_, err := clientOver(base, false, nil).fetch(ctx, kindCluster, testRequestID)
	if err == nil || !strings.Contains(err.Error(), "is OPTIPICK_API_URL right") {
		t.Fatalf("fetch from a closed port: %v, want an error naming OPTIPICK_API_URL", err)
	}
	if !retryable(ctx, err) && ctx.Err() == nil {
		t.Errorf("%v is not retryable", err)
	}
}

// TestThrottlingPassesRetryAfterOnToSvix: when OptiPick throttles us (429)
// or is unavailable (503), or asks to retry later than the deadline allows,
// the delivery's 503 carries a Retry-After that Svix honours: what OptiPick
// asked for, at least minRetryAfter, at most maxRetryAfter. Other failures
// carry none.
func TestThrottlingPassesRetryAfterOnToSvix(t *testing.T) {
	for _, tc := range []struct {
		name       string
		status     int
		retryAfter string // what OptiPick sent
		wantStatus int
		want       string // the Retry-After answered; "" for none
	}{
		{"429 with Retry-After", http.StatusTooManyRequests, "120", http.StatusServiceUnavailable, "120"},
		{"429 without Retry-After", http.StatusTooManyRequests, "", http.StatusServiceUnavailable, "30"},
		{"429 asking for 2 s, again and again", http.StatusTooManyRequests, "2", http.StatusServiceUnavailable, "30"},
		{"503 asking for a day", http.StatusServiceUnavailable, "86400", http.StatusServiceUnavailable, "3600"},
		{"500 asking for 2 min", http.StatusInternalServerError, "120", http.StatusServiceUnavailable, "120"},
		{"500", http.StatusInternalServerError, "", http.StatusBadGateway, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rig := newBubbleRig(t, testSecret)
				rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
					if tc.retryAfter != "" {
						w.Header().Set("Retry-After", tc.retryAfter)
					}
					http.Error(w, `{"message":"Too Many Requests"}`, tc.status)
				}
				resp := rig.deliver(signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
				if resp.Code != tc.wantStatus || resp.Header().Get("Retry-After") != tc.want {
					t.Errorf("answered %d with Retry-After %q, want %d with %q",
						resp.Code, resp.Header().Get("Retry-After"), tc.wantStatus, tc.want)
				}
			})
		})
	}
}
