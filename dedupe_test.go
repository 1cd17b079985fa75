package main

// Tests of the message memory: repeats, duplicates, kinds, windows and
// capacity, through the handler where the answer matters.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// unbranded moves a delivery's svix-* headers to webhook-*, as Svix's
// unbranded (Standard Webhooks) headers.
func unbranded(req *http.Request) *http.Request {
	for _, name := range []string{"id", "timestamp", "signature"} {
		req.Header.Set("webhook-"+name, req.Header.Get("svix-"+name))
		req.Header.Del("svix-" + name)
	}
	return req
}

// TestUnbrandedDeliveriesAreDedupedByTheirOwnID: with webhook-* headers,
// each message is remembered by its own webhook-id, not all under one key.
func TestUnbrandedDeliveriesAreDedupedByTheirOwnID(t *testing.T) {
	rig := newRig(t, testSecret)
	deliver := func(msgID, requestID string) (int, string) {
		resp := rig.deliver(
			unbranded(signedDeliveryAt(t, testSecret, "/webhook/cluster", requestBody(requestID), msgID, time.Now())),
		)
		return resp.Code, resp.Body.String()
	}
	if code, body := deliver("msg_first", "aaa"); code != http.StatusOK || body != "fetched\n" {
		t.Fatalf("first message: %d %q, want 200 fetched", code, body)
	}
	if code, body := deliver("msg_second", "bbb"); code != http.StatusOK || body != "fetched\n" {
		t.Fatalf("another message: %d %q, want 200 fetched (not taken for the first)", code, body)
	}
	if code, body := deliver("msg_first", "aaa"); code != http.StatusOK || body != "already handled\n" {
		t.Fatalf("the first message again: %d %q, want 200 already handled", code, body)
	}
	rig.api.assertCalls(t, []apiCall{
		{Path: "/optimize/cluster/aaa", APIKey: testAPIKey},
		{Path: "/optimize/cluster/bbb", APIKey: testAPIKey},
	})
}

// TestDuplicatesOfAFailingDeliveryFailToo: a duplicate that arrives while
// the first delivery is at work waits for it and answers as it does: never
// 200 for work that failed, whether the API refused it or never answered
// within the deadline.
func TestDuplicatesOfAFailingDeliveryFailToo(t *testing.T) {
	for _, tc := range []struct {
		name    string
		respond func(w http.ResponseWriter, r *http.Request)
	}{
		{"the API refuses after 5 s", func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(5 * time.Second)
			http.Error(w, `{"message":"Forbidden"}`, http.StatusForbidden)
		}},
		{"the API hangs past the deadline", func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rig := newBubbleRig(t, testSecret)
				rig.api.respond = tc.respond
				body := requestBody(testRequestID)
				codes := make([]int, 2)
				bodies := make([]string, 2)
				var wg sync.WaitGroup
				for i := range 2 {
					req := signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_dup", time.Now())
					wg.Go(func() {
						resp := rig.deliver(req)
						codes[i], bodies[i] = resp.Code, resp.Body.String()
					})
					time.Sleep(time.Second) // the duplicate comes a second later
				}
				wg.Wait()
				for i := range 2 {
					if codes[i] < 500 {
						t.Errorf("delivery %d: %d %q, want 5xx: the work failed", i, codes[i], bodies[i])
					}
				}
				if calls := len(rig.api.recorded()); calls != 1 {
					t.Errorf("API called %d times, want once (the duplicate waits)", calls)
				}
			})
		})
	}
}

// TestSimultaneousDuplicatesAreAnsweredAlreadyHandled: of duplicates that
// arrive together, one fetches and the others say the work was done.
func TestSimultaneousDuplicatesAreAnsweredAlreadyHandled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			time.Sleep(time.Second)
			writeRouteResult(w, testRequestID)
		}
		var wg sync.WaitGroup
		bodies := make(chan string, 3)
		for range 3 {
			req := signedDeliveryAt(t, testSecret, "/webhook/route", requestBody(testRequestID), "msg_twin", time.Now())
			wg.Go(func() { bodies <- rig.deliver(req).Body.String() })
		}
		wg.Wait()
		close(bodies)
		count := map[string]int{}
		for b := range bodies {
			count[b]++
		}
		if count["fetched\n"] != 1 || count["already handled\n"] != 2 {
			t.Errorf("answers %v, want one fetched and two already handled", count)
		}
	})
}

// TestARenewedEntryOutlivesItsExpiredOne: a message handled again after
// its window ended is remembered for a whole new window, even when the
// expired entry is swept.
func TestARenewedEntryOutlivesItsExpiredOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret) // a window of an hour
		deliver := func(msgID string) string {
			req := signedDeliveryAt(t, testSecret, "/webhook/cluster", requestBody(testRequestID), msgID, time.Now())
			return rig.deliver(req).Body.String()
		}
		if got := deliver("msg_a"); got != "fetched\n" {
			t.Fatalf("msg_a: %q", got)
		}
		time.Sleep(time.Hour)
		if got := deliver("msg_a"); got != "fetched\n" {
			t.Fatalf("msg_a after the window: %q, want fetched again", got)
		}
		time.Sleep(time.Minute)
		if got := deliver("msg_b"); got != "fetched\n" { // sweeps msg_a's expired entry
			t.Fatalf("msg_b: %q", got)
		}
		time.Sleep(30 * time.Minute)
		if got := deliver("msg_a"); got != "already handled\n" {
			t.Errorf("msg_a 31 min after it was handled again: %q, want already handled", got)
		}
	})
}

// TestDedupeWindowIsExact: a message is remembered for the whole window,
// and not a moment longer.
func TestDedupeWindowIsExact(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDedupe(time.Hour, 10)
		runs := 0
		do := func() bool {
			already, err := d.do(t.Context(), kindCluster, "k", func(context.Context) error { runs++; return nil })
			if err != nil {
				t.Fatal(err)
			}
			return already
		}
		do()
		time.Sleep(time.Hour - time.Nanosecond)
		if !do() {
			t.Error("forgotten before the window ended")
		}
		time.Sleep(time.Nanosecond)
		if do() {
			t.Error("remembered when the window ended")
		}
		if runs != 2 {
			t.Errorf("work ran %d times, want 2", runs)
		}
	})
}

// TestAMessageIsForgottenExactlyWhenItNoLongerMatters: an entry is swept
// when it has ended max(window, bindFor) ago, to the nanosecond, and not
// before: a message's kind stays bound that long.
func TestAMessageIsForgottenExactlyWhenItNoLongerMatters(t *testing.T) {
	for _, window := range []time.Duration{0, time.Hour} {
		synctest.Test(t, func(t *testing.T) {
			d := newDedupe(window, 10)
			ok := func(context.Context) error { return nil }
			d.do(t.Context(), kindCluster, "a", ok)
			time.Sleep(max(window, bindFor) - time.Nanosecond)
			d.do(t.Context(), kindCluster, "b", ok) // sweeps what has expired
			if _, err := d.do(t.Context(), kindRoute, "a", ok); d.Len() != 2 || err != errOtherKind {
				t.Fatalf(
					"window %v: %d remembered and %v for a's other kind, want 2 and errOtherKind a moment before",
					window,
					d.Len(),
					err,
				)
			}
			time.Sleep(time.Nanosecond)
			d.do(t.Context(), kindCluster, "c", ok)
			if d.Len() != 2 { // b and c
				t.Errorf("window %v: %d remembered, want a forgotten", window, d.Len())
			}
		})
	}
}

// TestReplacedEntriesCountTowardsCapacity: work that runs again for a
// message (after a failure) replaces its kind's entry; the old one still
// counts until it is swept, so the memory stays within capacity.
func TestReplacedEntriesCountTowardsCapacity(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := newDedupe(time.Hour, 10)
		fail := func(context.Context) error { return errors.New("API down") }
		for i := range 1000 {
			d.do(t.Context(), []kind{kindCluster, kindRoute}[i%2], "msg", fail)
			time.Sleep(recentFor)
		}
		if len(d.ended) > 10 || d.Len() != 2 {
			t.Errorf(
				"%d entries held, %d remembered: want at most the capacity, 10, and one per kind",
				len(d.ended),
				d.Len(),
			)
		}
	})
}

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
				n := strings.Count(rig.logs.String(), "rejected delivery of a message verified for the other kind")
				if n > rejectLogBurst {
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
		resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_failing", time.Now()))
		if resp.Code != http.StatusBadGateway {
			t.Fatalf("first delivery: %d, want 502", resp.Code)
		}
		for i := range 100 { // 10 s of replays, to either path in turn
			path := []string{"/webhook/route", "/webhook/cluster"}[i%2]
			resp := rig.deliver(signedDeliveryAt(t, testSecret, path, body, "msg_failing", time.Now()))
			if resp.Code < 500 {
				t.Fatalf("replay to %s: %d, want a 5xx", path, resp.Code)
			}
			time.Sleep(100 * time.Millisecond)
		}
		limit := 2 * (int(10*time.Second/recentFor) + 1)
		if calls := len(rig.api.recorded()); calls > limit {
			t.Errorf(
				"a failure and 100 replays in 10 s made %d API calls, want at most one per kind per %v (%d)",
				calls,
				recentFor,
				limit,
			)
		}
		if n := strings.Count(rig.logs.String(), "level=ERROR"); n > limit {
			t.Errorf("%d ERROR lines, want at most one per kind per %v (%d)", n, recentFor, limit)
		}
		apiDown.Store(false)
		time.Sleep(5 * time.Second) // Svix's retry of the genuine delivery
		resp = rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_failing", time.Now()))
		if resp.Code != http.StatusOK {
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
					if err := <-first; !errors.Is(err, tc.want) || !strings.Contains(err.Error(), "boom") ||
						!strings.Contains(err.Error(), "goroutine") {
						t.Errorf("the first caller: %v, want %v with the value and the stack", err, tc.want)
					}
				}
				time.Sleep(recentFor) // Svix's retry
				ran := false
				already, err := d.do(t.Context(), kindCluster, "k", func(context.Context) error {
					ran = true
					return nil
				})
				if already || err != nil || !ran {
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
		_, err := d.do(waiterCtx, kindCluster, "k", func(context.Context) error { return nil })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("waiter: %v, want its own deadline", err)
		}
		close(release)
		if err := <-first; err != nil {
			t.Fatalf("first caller: %v", err)
		}
		already, err := d.do(t.Context(), kindCluster, "k", func(context.Context) error {
			t.Error("ran again")
			return nil
		})
		if !already || err != nil {
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
		first := rig.deliver(
			signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_gone", time.Now()).WithContext(ctx),
		)
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
			rig.deliver(
				signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_slow", time.Now()).WithContext(ctx),
			)
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
