package main

// Deduplication as Svix sees it: by endpoint and message id, success only,
// shared by simultaneous duplicates, forgotten after the window.

import (
	"context"
	"errors"
	"net/http"
	"sync"
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
		resp := rig.deliver(unbranded(signedDeliveryAt(t, testSecret, "/webhook/cluster", requestBody(requestID), msgID, time.Now())))
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
				t.Fatalf("window %v: %d remembered and %v for a's other kind, want 2 and errOtherKind a moment before", window, d.Len(), err)
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
			t.Errorf("%d entries held, %d remembered: want at most the capacity, 10, and one per kind", len(d.ended), d.Len())
		}
	})
}
