package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"optipick-webhooks/internal/optipicksim"
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
	if h := o.horizon(); h < a.end+time.Minute {
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

// TestMain doubles as a broken receiver when the chaos run starts this
// test binary in place of the real one (it recognises the run's API key):
// it answers 200 to every delivery but logs only some, as a receiver that
// acknowledged before it had logged would lose events.
func TestMain(m *testing.M) {
	if os.Getenv("OPTIPICK_API_KEY") == apiKey && os.Getenv("PORT") != "" {
		serveLossyReceiver()
		return
	}
	os.Exit(m.Run())
}

// lossyDrop is which events the broken receiver acknowledges unlogged:
// those whose request_id ends in 0, 4 or 8.
func lossyDrop(requestID string) bool {
	return strings.IndexByte("048", requestID[len(requestID)-1]) >= 0
}

func serveLossyReceiver() {
	listener, err := net.Listen("tcp", "127.0.0.1:"+os.Getenv("PORT"))
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	var mu sync.Mutex
	logLine := func(v map[string]any) {
		v["time"] = time.Now().Format(time.RFC3339Nano)
		b, _ := json.Marshal(v)
		mu.Lock()
		defer mu.Unlock()
		os.Stdout.Write(append(b, '\n'))
	}
	stop := make(chan os.Signal, 1) // SIGTERM: exit 0, as the receiver does
	signal.Notify(stop, syscall.SIGTERM)
	go func() {
		<-stop
		os.Exit(0)
	}()
	logLine(map[string]any{"msg": "listening", "addr": listener.Addr().String()})
	http.Serve(listener, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			RequestID string `json:"request_id"`
		}
		json.NewDecoder(r.Body).Decode(&body)
		if body.RequestID != "" && !lossyDrop(body.RequestID) {
			logLine(map[string]any{"msg": "optimization fetched", "request_id": body.RequestID, "svix_id": r.Header.Get("svix-id")})
		}
		io.WriteString(w, "fetched\n")
	}))
}

// TestALostEventFailsTheRun: against a receiver that acknowledges events it
// did not log, the run fails and names the seed and every lost request_id.
func TestALostEventFailsTheRun(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	sum, err := run(context.Background(), []string{"-receiver", self, "-n", "30", "-rate", "100", "-kills", "1", "-min-pause", "0",
		"-max-pause", "10ms", "-fault-windows", "0", "-dup-bursts", "0", "-seed", "42", "-timeout", "1m", "-log-dir", t.TempDir()}, &out)
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	t.Log("\n" + out.String())
	if sum.ok() || len(sum.lost) == 0 {
		t.Fatalf("the run passed with %d lost:\n%s", len(sum.lost), out.String())
	}
	for _, id := range sum.lost {
		if !lossyDrop(id) {
			t.Errorf("%s counted lost, but it was logged", id)
		}
	}
	if len(sum.badStops) > 0 {
		t.Errorf("stops failed: %v", sum.badStops)
	}
	if sum.logged+len(sum.lost) != 30 {
		t.Errorf("logged %d + lost %d != 30 submitted", sum.logged, len(sum.lost))
	}
	want := fmt.Sprintf("chaos: FAILED (seed 42): %d lost: %s", len(sum.lost), strings.Join(sum.lost, " "))
	if !strings.Contains(out.String(), want) {
		t.Errorf("output lacks %q:\n%s", want, out.String())
	}
}

func TestWhyTwice(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	killed := map[int]string{1: "SIGKILL", 2: "SIGTERM"}
	attempts := []optipicksim.Attempt{
		{At: at(0), Latency: 20 * time.Millisecond},                  // killed: no answer
		{At: at(1000), Latency: 10 * time.Millisecond, Status: 200},  // a retry
		{At: at(2000), Latency: 10 * time.Millisecond, Resend: true}, // a resend
		{At: at(3000), Latency: 10 * time.Millisecond, Status: 200},  // a later scheduled retry
		{At: at(4000), Latency: 10 * time.Millisecond, Status: 200, Resend: true},
	}
	for _, tc := range []struct {
		earlier fetched
		later   fetched
		want    string
	}{
		{fetched{incarnation: 1, at: at(10)}, fetched{incarnation: 3, at: at(1005)}, "SIGKILLed between logging and answering"},
		{fetched{incarnation: 2, at: at(10)}, fetched{incarnation: 3, at: at(1005)}, "UNEXPLAINED"}, // a drain answers
		{fetched{incarnation: 3, at: at(1005)}, fetched{incarnation: 4, at: at(4005)}, "a resend reached a receiver process"},
		{fetched{incarnation: 3, at: at(2005)}, fetched{incarnation: 4, at: at(3005)}, "still retrying the original"},
		{fetched{incarnation: 3, at: at(1005)}, fetched{incarnation: 3, at: at(3005)}, "UNEXPECTED"},
	} {
		if got := whyTwice([]fetched{tc.earlier}, tc.later, killed, attempts); !strings.Contains(got, tc.want) {
			t.Errorf("%+v then %+v: %q, want %q", tc.earlier, tc.later, got, tc.want)
		}
	}
}
