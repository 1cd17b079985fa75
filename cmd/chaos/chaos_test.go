package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// TestScheduleComesFromTheSeed: one seed, one schedule; another seed,
// another.
func TestScheduleComesFromTheSeed(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	a, b := newSchedule(o), newSchedule(o)
	if a.fingerprint() != b.fingerprint() {
		t.Errorf("seed %d gave two schedules", o.seed)
	}
	o.seed++
	if c := newSchedule(o); c.fingerprint() == a.fingerprint() {
		t.Errorf("seeds %d and %d gave the same schedule", o.seed-1, o.seed)
	}
	if len(a.events) != 1000 || len(a.stops) < 20 || len(a.faults) < 5 || len(a.bursts) < 1 {
		t.Errorf("defaults: %d events, %d stops, %d API outages, %d bursts; want 1000, >= 20, >= 5, >= 1",
			len(a.events), len(a.stops), len(a.faults), len(a.bursts))
	}
	kinds := map[string]bool{}
	for i, w := range a.faults {
		kinds[w.fault.String()] = true
		if i > 0 && w.at < a.faults[i-1].at+a.faults[i-1].length {
			t.Errorf("outages %d and %d overlap", i-1, i)
		}
	}
	if len(kinds) != 4 {
		t.Errorf("outage kinds %v, want 500, 503, 429 and hang", kinds)
	}
	if h := horizon(o.timeScale); h < a.end+time.Minute {
		t.Errorf("default time scale: retries end after %v, the last fault at %v", h, a.end)
	}
}

func TestTooShortARetryScheduleIsRefused(t *testing.T) {
	_, err := run(context.Background(), []string{"-time-scale", "0.0001", "-receiver", "/nonexistent"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "Svix would stop retrying") {
		t.Errorf("err = %v, want a refusal", err)
	}
}

// TestShortChaosRun is the short version of make chaos: 200 events through
// receiver kills, restarts, API outages and resends, and none lost. It
// builds the receiver, so it is skipped with -short.
func TestShortChaosRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the receiver for about a minute; make chaos runs the long version")
	}
	var out strings.Builder
	sum, err := run(context.Background(), []string{"-n", "200", "-rate", "10", "-kills", "6", "-fault-windows", "4",
		"-dup-bursts", "1", "-dup-burst-size", "20", "-time-scale", "0.002", "-seed", "13", "-timeout", "4m"}, &out)
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !sum.ok() {
		t.Fatalf("lost %d (%v), settled %v, failed stops %v", len(sum.lost), sum.lost, sum.settled, sum.badStops)
	}
	if sum.submitted != 200 || sum.logged != 200 || sum.sigkills+sum.sigterms != 6 || sum.restarts != 6 || sum.gaveUp != 0 {
		t.Errorf("submitted %d, logged %d, stops %d, restarts %d, given up %d", sum.submitted, sum.logged, sum.sigkills+sum.sigterms, sum.restarts, sum.gaveUp)
	}
	windows := 0
	for _, n := range sum.windows {
		windows += n
	}
	if windows != 4 || sum.faultedGETs == 0 || sum.resends == 0 {
		t.Errorf("%d API outages faulting %d GETs, %d resends: the faults did not happen", windows, sum.faultedGETs, sum.resends)
	}
	for why := range sum.duplicates {
		if strings.HasPrefix(why, "UNEXPECTED") || why == "UNEXPLAINED" {
			t.Errorf("duplicates: %d %s", sum.duplicates[why], why)
		}
	}
	if len(sum.unknown) > 0 {
		t.Errorf("logged request_ids never submitted: %v", sum.unknown)
	}
}
