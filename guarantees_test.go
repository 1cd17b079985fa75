package main

// Tests of the guarantees the README promises: at-least-once without
// needless repeats, bounded resources, and no way around verification.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

func TestRetriedMessageIsNotFetchedAgain(t *testing.T) {
	rig := newRig(t, testSecret)
	body := requestBody(testRequestID)
	first := signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_retried", time.Now())
	if resp := rig.deliver(first); resp.Code != http.StatusOK {
		t.Fatalf("first delivery: %d", resp.Code)
	}
	// Svix's retry or a manual resend: same id, new timestamp and signature;
	// /webhook is the cluster path of OptiPick's original example.
	for _, path := range []string{"/webhook/cluster", "/webhook"} {
		again := signedDeliveryAt(t, testSecret, path, body, "msg_retried", time.Now().Add(time.Second))
		if resp := rig.deliver(again); resp.Code != http.StatusOK || resp.Body.String() != "already handled\n" {
			t.Fatalf("resend to %s: %d %q, want 200 already handled", path, resp.Code, resp.Body)
		}
	}
	rig.api.assertCalls(t, []apiCall{{Path: "/optimize/cluster/" + testRequestID, APIKey: testAPIKey}})
}

// TestAMessageIsFetchedOnlyForItsKind: the signature does not cover the
// URL, so a captured delivery verifies on the other kind's path too (with
// one secret, or with both endpoints' secrets configured). A message that
// was handled for one kind is never fetched for the other: 409, no API
// call, and the replays' log lines are rate-limited. Replays that arrive
// while the message is being handled wait for its outcome.
func TestAMessageIsFetchedOnlyForItsKind(t *testing.T) {
	for _, first := range []string{"succeeded", "at work"} {
		t.Run(first, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rig := newBubbleRig(t, testSecret, secondSecret)
				release := make(chan struct{})
				rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
					<-release
					writeClusterResult(w, testRequestID)
				}
				if first == "succeeded" {
					close(release)
				}
				body := requestBody(testRequestID)
				go rig.deliver(signedDeliveryAt(t, secondSecret, "/webhook/cluster", body, "msg_captured", time.Now()))
				synctest.Wait()
				codes := make(chan int, 100)
				var replays sync.WaitGroup
				for range 100 {
					req := signedDeliveryAt(t, secondSecret, "/webhook/route", body, "msg_captured", time.Now())
					replays.Go(func() { codes <- rig.deliver(req).Code })
					if first == "succeeded" {
						replays.Wait()
						time.Sleep(100 * time.Millisecond)
					}
				}
				if first == "at work" {
					synctest.Wait() // every replay waits for the work
					close(release)
				}
				replays.Wait()
				close(codes)
				for code := range codes {
					if code != http.StatusConflict {
						t.Fatalf("a replay to /webhook/route: %d, want 409", code)
					}
				}
				if calls := len(rig.api.recorded()); calls != 1 {
					t.Errorf("a delivery and 100 replays to the other kind made %d API calls, want 1", calls)
				}
				if n := strings.Count(rig.logs.String(), "rejected delivery of a message verified for the other kind"); n > rejectLogBurst {
					t.Errorf("%d log lines for 100 replays, want at most %d", n, rejectLogBurst)
				}
			})
		})
	}
}

// TestAFailedMessageBindsNoKind: a capture of a failing delivery, replayed
// to the other kind's path (for example after a restart, when nothing is
// remembered), must not hold up Svix's retries of the message to its own
// path. Replays to either path, in any order, cost at most one fetch (and
// one ERROR line) per kind per recentFor.
func TestAFailedMessageBindsNoKind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		var apiDown atomic.Bool
		apiDown.Store(true)
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.Contains(r.URL.Path, "/route/"):
				http.NotFound(w, r)
			case apiDown.Load(): // final, so that a fetch is one call
				http.Error(w, `{"message":"Forbidden"}`, http.StatusForbidden)
			default:
				writeClusterResult(w, testRequestID)
			}
		}
		body := requestBody(testRequestID)
		if resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_failing", time.Now())); resp.Code != http.StatusBadGateway {
			t.Fatalf("first delivery: %d, want 502", resp.Code)
		}
		for i := range 100 { // 10 s of replays, to either path in turn
			path := []string{"/webhook/route", "/webhook/cluster"}[i%2]
			if resp := rig.deliver(signedDeliveryAt(t, testSecret, path, body, "msg_failing", time.Now())); resp.Code < 500 {
				t.Fatalf("replay to %s: %d, want a 5xx", path, resp.Code)
			}
			time.Sleep(100 * time.Millisecond)
		}
		limit := 2 * (int(10*time.Second/recentFor) + 1)
		if calls := len(rig.api.recorded()); calls > limit {
			t.Errorf("a failure and 100 replays in 10 s made %d API calls, want at most one per kind per %v (%d)", calls, recentFor, limit)
		}
		if n := strings.Count(rig.logs.String(), "level=ERROR"); n > limit {
			t.Errorf("%d ERROR lines, want at most one per kind per %v (%d)", n, recentFor, limit)
		}
		apiDown.Store(false)
		time.Sleep(5 * time.Second) // Svix's retry of the genuine delivery
		if resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_failing", time.Now())); resp.Code != http.StatusOK {
			t.Fatalf("Svix's retry to /webhook/cluster: %d %q, want 200: the replays held it up", resp.Code, resp.Body)
		}
	})
}

// TestWrongPathReplaysDoNotHoldUpTheRightPath: a cluster delivery fails
// while the API is down. Once the API is back, its capture replayed to
// /webhook/route every 100 ms (where the id is a 404) does not answer
// Svix's retries to /webhook/cluster: the first retry is fetched. The
// replays cost at most one fetch per recentFor.
func TestWrongPathReplaysDoNotHoldUpTheRightPath(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		var apiDown atomic.Bool
		apiDown.Store(true)
		var routeCalls atomic.Int32
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			switch {
			case strings.Contains(r.URL.Path, "/route/"):
				routeCalls.Add(1)
				http.NotFound(w, r)
			case apiDown.Load():
				http.Error(w, `{"message":"Forbidden"}`, http.StatusForbidden)
			default:
				writeClusterResult(w, testRequestID)
			}
		}
		body := requestBody(testRequestID)
		deliver := func(path string) int {
			return rig.deliver(signedDeliveryAt(t, testSecret, path, body, "msg_retried", time.Now())).Code
		}
		if code := deliver("/webhook/cluster"); code != http.StatusBadGateway {
			t.Fatalf("first delivery: %d, want 502", code)
		}
		apiDown.Store(false)
		stop := make(chan struct{})
		replayed := make(chan struct{})
		go func() {
			defer close(replayed)
			for {
				// 409 once the retry succeeded: the message is then bound.
				if code := deliver("/webhook/route"); code < 500 && code != http.StatusConflict {
					t.Errorf("a replay to /webhook/route: %d, want a 5xx or 409", code)
				}
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
		time.Sleep(5 * time.Second) // Svix's first retry
		code := deliver("/webhook/cluster")
		close(stop)
		<-replayed
		if code != http.StatusOK {
			t.Errorf("Svix's retry to /webhook/cluster amid replays to /webhook/route: %d, want 200", code)
		}
		if n, limit := int(routeCalls.Load()), int(5*time.Second/recentFor)+1; n > limit {
			t.Errorf("5 s of replays made %d API calls, want at most one per %v (%d)", n, recentFor, limit)
		}
	})
}

// TestRepeatsOfAHandledMessageCannotFloodTheLogs: a replayed capture of a
// handled message is answered "already handled" at once, and those lines
// are rate-limited like rejections.
func TestRepeatsOfAHandledMessageCannotFloodTheLogs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		body := requestBody(testRequestID)
		for i := range 1000 {
			resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_replayed", time.Now()))
			if want := map[bool]string{true: "fetched\n", false: "already handled\n"}[i == 0]; resp.Code != http.StatusOK || resp.Body.String() != want {
				t.Fatalf("delivery %d: %d %q, want 200 %q", i, resp.Code, resp.Body, want)
			}
		}
		if n := strings.Count(rig.logs.String(), "already handled"); n != rejectLogBurst {
			t.Errorf("%d \"already handled\" lines for 999 repeats, want %d", n, rejectLogBurst)
		}
	})
}

// TestFailedDeliveryIsProcessedAgainOnRetry: a failure is not remembered
// for Svix's retry, 5 s later; but a repeat within recentFor (a replayed
// capture) shares the failure: the same status, no API call, and its log
// lines are rate-limited.
func TestFailedDeliveryIsProcessedAgainOnRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		var fail atomic.Bool
		fail.Store(true)
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			if fail.Load() {
				http.Error(w, `{"message":"Forbidden"}`, http.StatusForbidden)
				return
			}
			writeClusterResult(w, testRequestID)
		}
		body := requestBody(testRequestID)
		deliver := func() *httptest.ResponseRecorder {
			return rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_x", time.Now()))
		}
		if resp := deliver(); resp.Code != http.StatusBadGateway {
			t.Fatalf("first attempt: %d, want 502", resp.Code)
		}
		for i := range 1000 {
			if resp := deliver(); resp.Code != http.StatusBadGateway {
				t.Fatalf("repeat %d within %v: %d, want the failure's 502", i, recentFor, resp.Code)
			}
			time.Sleep(recentFor / 1000)
		}
		if got := len(rig.api.recorded()); got != 1 {
			t.Errorf("API called %d times for a failure and 1,000 repeats within %v, want once", got, recentFor)
		}
		if n := strings.Count(rig.logs.String(), "level=ERROR"); n != 1 {
			t.Errorf("%d ERROR lines, want 1 (the repeats rate-limited)", n)
		}
		if n := strings.Count(rig.logs.String(), "msg_x"); n > 1+rejectLogBurst+1 {
			t.Errorf("%d log lines name the message, want at most %d", n, 1+rejectLogBurst+1)
		}
		fail.Store(false)
		time.Sleep(5*time.Second - recentFor) // Svix's first retry
		if resp := deliver(); resp.Code != http.StatusOK {
			t.Fatalf("retry: %d, want 200", resp.Code)
		}
		if got := len(rig.api.recorded()); got != 2 {
			t.Errorf("API called %d times, want 2", got)
		}
	})
}

func TestSimultaneousDuplicatesShareOneAPICall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		release := make(chan struct{})
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			<-release
			writeRouteResult(w, testRequestID)
		}
		var wg sync.WaitGroup
		codes := make([]int, 3)
		for i := range codes {
			req := signedDeliveryAt(t, testSecret, "/webhook/route", requestBody(testRequestID), "msg_twin", time.Now())
			wg.Go(func() { codes[i] = rig.deliver(req).Code })
		}
		synctest.Wait() // all three are in: one at the API, two waiting for it
		close(release)
		wg.Wait()
		for i, code := range codes {
			if code != http.StatusOK {
				t.Errorf("delivery %d: %d, want 200", i, code)
			}
		}
		if got := len(rig.api.recorded()); got != 1 {
			t.Errorf("API called %d times, want once", got)
		}
	})
}

func TestDedupeWindowAndCapacity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDedupe(time.Hour, 3)
		var runs int
		work := func(id string) bool {
			already, err := d.do(t.Context(), kindCluster, id, func(ctx context.Context) error { runs++; return nil })
			if err != nil {
				t.Fatal(err)
			}
			return already
		}
		if work("a") || !work("a") {
			t.Fatal("a second do of a within the window ran again")
		}
		time.Sleep(time.Hour)
		if work("a") {
			t.Fatal("a was still remembered after the window")
		}
		for _, id := range []string{"b", "c", "d"} { // capacity 3: a, the oldest, goes
			work(id)
		}
		if d.Len() != 3 {
			t.Fatalf("remembers %d, want the capacity, 3", d.Len())
		}
		if work("a") {
			t.Error("a was remembered past capacity")
		}
		if !work("d") {
			t.Error("d, the newest, was forgotten")
		}

		// A zero window remembers success for recentFor only.
		off := newDedupe(0, 10)
		off.do(t.Context(), kindCluster, "x", func(context.Context) error { return nil })
		if shared, _ := off.do(t.Context(), kindCluster, "x", func(context.Context) error { return nil }); !shared {
			t.Error("a zero window ran a message again at once")
		}
		time.Sleep(recentFor)
		if shared, _ := off.do(t.Context(), kindCluster, "x", func(context.Context) error { return nil }); shared {
			t.Error("a zero window remembered a delivery past recentFor")
		}
	})
}

// TestDedupeSurvivesWorkThatDoesNotReturn: work that panics, or ends its
// goroutine with runtime.Goexit, fails for its caller and for a duplicate
// waiting on it; it is not remembered, so the next delivery runs it again.
func TestDedupeSurvivesWorkThatDoesNotReturn(t *testing.T) {
	for _, tc := range []struct {
		name string
		end  func()
		want error
	}{
		{"panic", func() { panic("boom") }, errWorkDidNotReturn},
		{"Goexit", runtime.Goexit, errWorkDidNotReturn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := newDedupe(time.Hour, 10)
				first, waiter := make(chan error, 1), make(chan error, 1)
				go func() {
					var err error
					defer func() { first <- err }() // runs after a Goexit too
					_, err = d.do(t.Context(), kindCluster, "k", func(context.Context) error {
						time.Sleep(time.Second) // the duplicate arrives meanwhile
						tc.end()
						return nil
					})
				}()
				synctest.Wait()
				go func() {
					_, err := d.do(t.Context(), kindCluster, "k", func(context.Context) error { return nil })
					if err == nil {
						err = errors.New("answered already handled")
					}
					waiter <- err
				}()
				if err := <-waiter; !errors.Is(err, tc.want) {
					t.Errorf("the waiting duplicate: %v, want %v", err, tc.want)
				}
				if tc.name == "panic" {
					if err := <-first; !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "boom") || !strings.Contains(err.Error(), "goroutine") {
						t.Errorf("the first caller: %v, want %v with the value and the stack", err, tc.want)
					}
				}
				time.Sleep(recentFor) // Svix's retry
				ran := false
				if already, err := d.do(t.Context(), kindCluster, "k", func(context.Context) error { ran = true; return nil }); already || err != nil || !ran {
					t.Fatalf("afterwards: already=%v err=%v ran=%v; want the work to run again", already, err, ran)
				}
			})
		})
	}
}

// TestManyDistinctDeliveriesAtOnce sends 300 deliveries over real TCP at
// once: all succeed, each is fetched exactly once, and the API sees no more
// connections than calls allowed in flight.
func TestManyDistinctDeliveriesAtOnce(t *testing.T) {
	const n = 300
	api := &fakeAPI{}
	apiServer := httptest.NewUnstartedServer(api)
	var apiConns atomic.Int32
	apiServer.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			apiConns.Add(1)
		}
	}
	apiServer.Start()
	defer apiServer.Close()
	rig := newRigWith(t, api, apiServer.URL, nil, []string{testSecret})
	receiver := httptest.NewServer(rig.handler)
	defer receiver.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	var wg sync.WaitGroup
	failures := make(chan string, n)
	for i := range n {
		id := fmt.Sprintf("674f5c1e2b8a4d0012%06d", i)
		req := signedDelivery(t, testSecret, receiver.URL+"/webhook/cluster", requestBody(id))
		req.RequestURI = ""
		wg.Go(func() {
			resp, err := client.Do(req)
			if err != nil {
				failures <- err.Error()
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				failures <- fmt.Sprintf("%s: %d", id, resp.StatusCode)
			}
		})
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	perID := map[string]int{}
	for _, call := range api.recorded() {
		perID[call.Path]++
	}
	if len(perID) != n {
		t.Errorf("%d distinct results fetched, want %d", len(perID), n)
	}
	for path, count := range perID {
		if count != 1 {
			t.Errorf("%s fetched %d times", path, count)
		}
	}
	if got := apiConns.Load(); got > maxConcurrentFetches {
		t.Errorf("API saw %d connections, want at most %d (reused)", got, maxConcurrentFetches)
	}
}

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
			req.Body = io.NopCloser(io.MultiReader(strings.NewReader(`{"request_id":"67`), errReader{io.ErrUnexpectedEOF}))
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

// statusError is a processor's error that names an HTTP status.
type statusError int

func (e statusError) Error() string   { return fmt.Sprintf("store said %d", int(e)) }
func (e statusError) HTTPStatus() int { return int(e) }

// TestAFailedProcessorIsNeverAcknowledged: whatever status a processor's
// error names, the delivery is answered 5xx, so that Svix retries it, and
// not remembered.
func TestAFailedProcessorIsNeverAcknowledged(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{errors.New("database down"), http.StatusBadGateway},
		{statusError(http.StatusServiceUnavailable), http.StatusServiceUnavailable},
		{statusError(http.StatusOK), http.StatusBadGateway},
		{statusError(http.StatusConflict), http.StatusBadGateway},
		{statusError(0), http.StatusBadGateway},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			rig := newRig(t, testSecret)
			rig.process = func(context.Context, delivery, *optimization) error { return tc.err }
			body := requestBody(testRequestID)
			if resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/route", body, "msg_store", time.Now())); resp.Code != tc.want {
				t.Fatalf("status %d, want %d", resp.Code, tc.want)
			}
			rig.process = func(context.Context, delivery, *optimization) error { return nil }
			rig.svixRetriesLater()
			if resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/route", body, "msg_store", time.Now())); resp.Body.String() != "fetched\n" {
				t.Fatalf("Svix's retry: %d %q, want it processed again", resp.Code, resp.Body)
			}
		})
	}
}

// TestAWaitingDuplicateLeavesAtItsOwnDeadline: a duplicate waiting for the
// first delivery's work answers 5xx when its own deadline passes, and the
// work still ends and is shared.
func TestAWaitingDuplicateLeavesAtItsOwnDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDedupe(time.Hour, 10)
		release := make(chan struct{})
		first := make(chan error, 1)
		go func() {
			_, err := d.do(t.Context(), kindCluster, "k", func(ctx context.Context) error {
				<-release
				return nil
			})
			first <- err
		}()
		synctest.Wait()
		waiterCtx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if _, err := d.do(waiterCtx, kindCluster, "k", func(context.Context) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiter: %v, want its own deadline", err)
		}
		close(release)
		if err := <-first; err != nil {
			t.Fatalf("first caller: %v", err)
		}
		if already, err := d.do(t.Context(), kindCluster, "k", func(context.Context) error { t.Error("ran again"); return nil }); !already || err != nil {
			t.Errorf("after the work ended: already=%v err=%v, want it remembered", already, err)
		}
	})
}

// TestASenderThatGoesAwayDoesNotCancelTheWork: when the sender of a
// delivery disconnects while its optimization is fetched, the fetch goes
// on, and Svix's retry finds the delivery handled, without a second call.
func TestASenderThatGoesAwayDoesNotCancelTheWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-time.After(3 * time.Second):
				writeClusterResult(w, testRequestID)
			case <-r.Context().Done(): // the receiver gave up the call
				http.Error(w, "cancelled", http.StatusServiceUnavailable)
			}
		}
		body := requestBody(testRequestID)
		ctx, goAway := context.WithCancel(t.Context())
		time.AfterFunc(time.Second, goAway)
		first := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_gone", time.Now()).WithContext(ctx))
		if first.Code != http.StatusOK {
			t.Errorf("the delivery whose sender left: %d %q, want the work done (200)", first.Code, first.Body)
		}
		retry := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_gone", time.Now()))
		if retry.Code != http.StatusOK || retry.Body.String() != "already handled\n" {
			t.Errorf("Svix's retry: %d %q, want 200 already handled", retry.Code, retry.Body)
		}
		if calls := len(rig.api.recorded()); calls != 1 {
			t.Errorf("API called %d times, want once", calls)
		}
	})
}

// TestAWaitingDuplicateLeavesWhenItsSenderDoes: a duplicate waiting for a
// message's work holds nothing once its sender goes away (a replayed
// capture's connection, shed): its handler returns at once, while the work
// goes on and is answered to its own sender.
func TestAWaitingDuplicateLeavesWhenItsSenderDoes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		release := make(chan struct{})
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			<-release
			writeClusterResult(w, testRequestID)
		}
		body := requestBody(testRequestID)
		first := make(chan int, 1)
		go func() {
			first <- rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_slow", time.Now())).Code
		}()
		synctest.Wait()
		ctx, goAway := context.WithCancel(t.Context())
		waiter := make(chan struct{})
		go func() {
			rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_slow", time.Now()).WithContext(ctx))
			close(waiter)
		}()
		synctest.Wait()
		goAway()
		synctest.Wait()
		select {
		case <-waiter:
		default:
			t.Fatal("the duplicate's handler still waits after its sender went away")
		}
		close(release)
		if code := <-first; code != http.StatusOK {
			t.Errorf("the first delivery: %d, want 200", code)
		}
	})
}
