package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"testing/synctest"
	"time"
)

// newBubbleClient is a client whose API is handler, in memory.
func newBubbleClient(t *testing.T, handler http.HandlerFunc) *optiPickClient {
	t.Helper()
	base, _ := url.Parse("http://optipick.test")
	return newOptiPickClient(base, testAPIKey, true, handlerTransport{handler})
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
		client := newOptiPickClient(base, testAPIKey, true, roundTripFunc(func(req *http.Request) (*http.Response, error) {
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
		if got, err := optimizationURL(base.JoinPath("optimize").String(), "cluster", "abc"); err != nil || got != tc.want {
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
	for _, seed := range []string{"674f5c1e2b8a4d0012ab34cd", "../x", "..", ".", "a/b", "x?y", "%2e%2e", "a\r\nb", "a b", strings.Repeat("z", 5000)} {
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

func TestResultDecodingIsLenient(t *testing.T) {
	for _, tc := range []struct {
		name, body   string
		wantErr      bool
		wantSite     string
		wantFailure  string
		wantClusters int
	}{
		{"zone-less timestamp and unknown fields", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"Example","timestamp":"2024-12-04T16:52:49.303000","new_field":{"x":1},"optimal_clusters":[{},{},{}]}`, false, "Example", "", 3},
		{"a field of another type", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"Example","computation_time":"fast","optimal_clusters":[{}]}`, false, "Example", "", 1},
		{"fields of other types, and a number out of range", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":{"x":["y"]},"asis_distance":1e999,"optimal_distance":[1],"error":null,"picks":{},"optimal_clusters":[{}]}`, false, "", "", 1},
		{"error as a string", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":"no picks"}`, false, "S", "no picks", 0},
		{"error as an object", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":{"code":7}}`, false, "S", "OptiPick reported an error as a JSON object or array (KEEP_RESULT_JSON=true keeps the whole result)", 0},
		{"error as an array", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":["x"]}`, false, "S", "OptiPick reported an error as a JSON object or array (KEEP_RESULT_JSON=true keeps the whole result)", 0},
		{"error as a number", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","error":7}`, false, "S", "7", 0},
		{"clusters that are not objects are still counted", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S","optimal_clusters":["a",[1],null]}`, false, "S", "", 3},
		{"not JSON", `<html>`, true, "", "", 0},
		{"truncated", `{"request_id":"674f5c1e2b8a4d0012ab34cd","site_name":"S"`, true, "", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				client := newBubbleClient(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, tc.body) })
				result, err := client.fetch(t.Context(), "cluster", testRequestID)
				if tc.wantErr {
					if err == nil {
						t.Fatal("want an error")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if result.SiteName != tc.wantSite || string(result.Error) != tc.wantFailure || int(result.OptimalClusters) != tc.wantClusters {
					t.Errorf("got site %q, failure %q, %d clusters", result.SiteName, result.Error, int(result.OptimalClusters))
				}
				if string(result.Raw) != tc.body {
					t.Errorf("raw = %q, want the body as sent", result.Raw)
				}
			})
		})
	}
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
	client := newOptiPickClient(base, testAPIKey, false, nil) // the service's own transport
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

// TestResultSizeCap: a result of exactly maxResultBytes is read; one byte
// more is refused.
func TestResultSizeCap(t *testing.T) {
	for _, tc := range []struct {
		size int
		ok   bool
	}{{maxResultBytes, true}, {maxResultBytes + 1, false}} {
		t.Run(fmt.Sprint(tc.size), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				base, _ := url.Parse("http://optipick.test")
				client := newOptiPickClient(base, testAPIKey, false, handlerTransport{http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					// Long strings, each under maxTokenBytes (few tokens, so
					// it is quick), then "0," to make the size exact.
					head, tail := `{"request_id":"`+testRequestID+`","site_name":"Big","pad":[`, `0]}`
					io.WriteString(w, head)
					rest := tc.size - len(head) - len(tail)
					unit := `"` + strings.Repeat("a", maxTokenBytes/2) + `",`
					units := rest/len(unit) - 1
					io.Copy(w, io.LimitReader(&repeatReader{s: unit}, int64(units*len(unit))))
					rest -= units * len(unit)
					if rest%2 == 1 {
						io.WriteString(w, " ")
						rest--
					}
					io.Copy(w, io.LimitReader(&repeatReader{s: "0,"}, int64(rest)))
					io.WriteString(w, tail)
				})})
				result, err := client.fetch(t.Context(), "cluster", testRequestID)
				if tc.ok && (err != nil || result.SiteName != "Big") {
					t.Fatalf("a result of %d bytes: %v", tc.size, err)
				}
				if !tc.ok && (err == nil || !strings.Contains(err.Error(), "more than")) {
					t.Fatalf("a result of %d bytes: %v, want a size error", tc.size, err)
				}
			})
		})
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
	if _, err := client.fetch(t.Context(), "pallet", testRequestID); err == nil || !strings.Contains(err.Error(), `unknown optimization kind "pallet"`) {
		t.Fatalf("fetch of kind pallet: %v", err)
	}
}

// repeatReader reads as s repeated without end.
type repeatReader struct {
	s   string
	off int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	for n := 0; n < len(p); {
		copied := copy(p[n:], r.s[r.off%len(r.s):])
		n += copied
		r.off += copied
	}
	return len(p), nil
}

// TestTokenGuard: a result whose one token (a string, with or without
// escapes, a number, white space) is far over maxTokenBytes is refused,
// however the text arrives in reads; a large token under the cap, and many
// small tokens whatever their total, are read.
func TestTokenGuard(t *testing.T) {
	long := func(s string, n int) string { return strings.Repeat(s, n) }
	const over = maxTokenBytes + maxTokenBytes/4 + 1 // the guard lets at most a quarter more through
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"string under the cap", `"` + long("a", maxTokenBytes-64) + `"`, true},
		{"string over the cap", `"` + long("a", over) + `"`, false},
		{"escapes", `"` + long(`\n`, over/2) + `"`, false},
		{"escaped quotes do not end it", `"` + long(`\"`, over/2) + `"`, false},
		{"number", `1` + long("0", over), false},
		{"white space", long(" ", over) + `1`, false},
		{"many small strings", `[` + long(`"`+long("a", 1000)+`\"",`, 300) + `""]`, true},
		{"many small numbers", `[` + long(`12345,`, 60000) + `0]`, true},
	} {
		for _, oneByte := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/one-byte-reads=%v", tc.name, oneByte), func(t *testing.T) {
				text := `{"request_id":"` + testRequestID + `","x":` + tc.text + `}`
				var r io.Reader = strings.NewReader(text)
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				_, err := decodeResult(r, testRequestID)
				if tc.ok && err != nil {
					t.Fatalf("decodeResult: %v", err)
				}
				if !tc.ok && !errors.Is(err, errTokenTooLong) {
					t.Fatalf("decodeResult: %v, want errTokenTooLong", err)
				}
			})
		}
	}
}

// TestResultFieldNamesMayBeEscaped: JSON allows a name written with
// escapes; it is the same name.
func TestResultFieldNamesMayBeEscaped(t *testing.T) {
	body := `{"request\u005fid":"` + testRequestID + `","site\u005Fname":"Escaped"}`
	result, err := decodeResult(strings.NewReader(body), testRequestID)
	if err != nil || result.SiteName != "Escaped" {
		t.Fatalf("decodeResult: %+v, %v", result, err)
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

// TestReadingStopsAtTheResultCap: however much more the API sends, no
// more than one byte past maxResultBytes is read.
func TestReadingStopsAtTheResultCap(t *testing.T) {
	// Long strings, each under the token cap: few tokens, so it is quick.
	pad := &repeatReader{s: `"` + strings.Repeat("a", maxTokenBytes/2) + `",`}
	body := &countingReader{r: io.MultiReader(strings.NewReader(`{"request_id":"`+testRequestID+`","pad":[`), pad)}
	if _, err := decodeResult(body, testRequestID); !errors.Is(err, errResultTooLarge) {
		t.Fatalf("decodeResult: %v, want errResultTooLarge", err)
	}
	if body.n != maxResultBytes+1 {
		t.Errorf("read %d bytes of the body, want %d", body.n, maxResultBytes+1)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
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
	client := newOptiPickClient(base, testAPIKey, false, nil)
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
		if resp.Code != http.StatusGatewayTimeout {
			t.Errorf("a result body that stalls past the deadline: %d %q, want 504\n%s", resp.Code, resp.Body, rig.logs)
		}
	})
}
