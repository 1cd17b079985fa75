// Command chaos proves that nothing is lost under chaos (make chaos): it
// runs the offline simulator in-process with a scaled Svix retry schedule,
// the real receiver binary as a child process, and submits N optimizations
// while, on a schedule drawn from -seed, it kills the receiver (SIGKILL, or
// SIGTERM some of the time) and restarts it after a pause, makes the
// simulated API fail (500, 503, 429, or hang), and resends bursts of
// already-sent messages (same svix-id). Then it waits until the simulator
// has nothing left to deliver, counts the receiver's "optimization fetched"
// lines over every incarnation, and prints one summary. It exits 1 when an
// event is lost or the run does not settle within -timeout.
//
// Everything stays on 127.0.0.1; every wait is bounded; the run ends by
// itself. A development tool: not part of the receiver.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"optipick-webhooks/internal/optipicksim"
)

const apiKey = "chaos-key"

type options struct {
	n            int
	seed         int64
	rate         float64
	kills        int
	graceful     float64
	minPause     time.Duration
	maxPause     time.Duration
	faultWindows int
	maxOutage    time.Duration
	bursts       int
	burstSize    int
	timeScale    float64
	retryFloor   time.Duration
	timeout      time.Duration
	receiver     string
	logDir       string
	verbose      bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := run(ctx, os.Args[1:], os.Stdout)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
	if !sum.ok() {
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	flags := flag.NewFlagSet("chaos", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.IntVar(&o.n, "n", 1000, "optimizations to submit (both kinds, at random)")
	flags.Int64Var(&o.seed, "seed", 1, "seed of the fault schedule: the same seed, the same schedule")
	flags.Float64Var(&o.rate, "rate", 20, "optimizations submitted per second")
	flags.IntVar(&o.kills, "kills", 24, "receiver stops during the submissions, each followed by a restart")
	flags.Float64Var(&o.graceful, "graceful", 0.25, "share of the stops that are SIGTERM (drain) rather than SIGKILL")
	flags.DurationVar(&o.minPause, "min-pause", 200*time.Millisecond, "shortest pause before a restart")
	flags.DurationVar(&o.maxPause, "max-pause", 2*time.Second, "longest pause before a restart")
	flags.IntVar(&o.faultWindows, "fault-windows", 6, "API outages (500, 503, 429 and hang in turn) during the submissions")
	flags.DurationVar(&o.maxOutage, "max-outage", 10*time.Second, "longest API outage (hangs: 60% of it), if the submissions leave room; one longer than the receiver's 10 s deadline makes it answer 5xx")
	flags.IntVar(&o.bursts, "dup-bursts", 2, "bursts of duplicate deliveries (resends of already-sent messages)")
	flags.IntVar(&o.burstSize, "dup-burst-size", 50, "messages resent per burst, each twice at once")
	flags.Float64Var(&o.timeScale, "time-scale", 0.005, "multiplies Svix's retry schedule (0.005 with the floor: retries after 2.5s, 2.5s, 9s, 36s, 1m30s, 3m, 3m)")
	flags.DurationVar(&o.retryFloor, "retry-floor", optipicksim.DefaultRetryFloor,
		"the shortest wait before a retry, over the receiver's 2 s memory of a failure, as Svix's 5 s is (0: none, so that early retries are answered from that memory)")
	flags.DurationVar(&o.timeout, "timeout", 0, "end the run, failed, after this long (0: the submissions plus the whole scaled retry schedule plus 2 min)")
	flags.StringVar(&o.receiver, "receiver", "", "the receiver binary (default: go build the module's root into a temporary directory)")
	flags.StringVar(&o.logDir, "log-dir", "", "keep every log here (default: a temporary directory, removed after a run that passes)")
	flags.BoolVar(&o.verbose, "v", false, "print each fault as it happens")
	if err := flags.Parse(args); err != nil {
		return o, err
	}
	switch {
	case flags.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments %q", flags.Args())
	case o.n < 1 || o.rate <= 0 || o.kills < 0 || o.faultWindows < 0 || o.bursts < 0 || o.burstSize < 0:
		return o, errors.New("-n and -rate must be positive; -kills, -fault-windows, -dup-bursts and -dup-burst-size not negative")
	case o.graceful < 0 || o.graceful > 1:
		return o, errors.New("-graceful: a share between 0 and 1")
	case o.minPause < 0 || o.maxPause < o.minPause || o.maxOutage <= 0:
		return o, errors.New("-min-pause, -max-pause, -max-outage: need 0 <= min <= max and an outage > 0")
	case o.timeScale <= 0:
		return o, errors.New("-time-scale: must be positive")
	case o.retryFloor < 0:
		return o, errors.New("-retry-floor: must not be negative")
	}
	return o, nil
}

// retryDelays is the simulator's retry schedule for these options.
func (o options) retryDelays() []time.Duration {
	return optipicksim.RetryDelays(o.timeScale, o.retryFloor)
}

// horizon is how long Svix keeps retrying a message, at the time scale.
func (o options) horizon() time.Duration {
	var total time.Duration
	for _, d := range o.retryDelays() {
		total += d
	}
	return total
}

func (o options) scaledSchedule() string {
	var parts []string
	for _, d := range o.retryDelays() {
		parts = append(parts, d.Round(time.Millisecond).String())
	}
	return strings.Join(parts, ", ")
}

// summary is what a run found.
type summary struct {
	seed               int64
	submitted          int
	kinds              map[string]int
	logged             int // distinct submitted events logged
	lost               []string
	unknown            []string // request_ids logged that were never submitted
	duplicates         map[string]int
	incarnations       int
	sigkills, sigterms int
	restarts           int
	badStops           []string
	windows            map[string]int
	outage             time.Duration
	faultedGETs        int64
	resends            int
	resendsAnswered    int
	resendMessages     int
	resendSkipped      int
	maxAttempts        int
	meanAttempts       float64
	retried            int
	gaveUp             int
	settled            bool
	pending            int
	wall               time.Duration
	logDir             string
}

func (s summary) ok() bool {
	return s.settled && len(s.lost) == 0 && len(s.badStops) == 0
}

func run(ctx context.Context, args []string, out io.Writer) (summary, error) {
	o, err := parseFlags(args, out)
	if err != nil {
		return summary{}, err
	}
	sched := newSchedule(o)
	if h := o.horizon(); h < sched.end+time.Minute {
		return summary{}, fmt.Errorf("-time-scale %g: Svix would stop retrying after %v, too soon after the last fault (at most %v in): raise it",
			o.timeScale, h.Round(time.Second), sched.end.Round(time.Second))
	}
	if o.timeout == 0 {
		o.timeout = sched.end + o.horizon() + 2*time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	started := time.Now()

	dir := o.logDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "optipick-chaos-"); err != nil {
			return summary{}, err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return summary{}, err
	}
	bin := o.receiver
	if bin == "" {
		fmt.Fprintln(out, "chaos: building the receiver")
		if bin, err = buildReceiver(ctx, dir); err != nil {
			return summary{}, err
		}
	}

	fmt.Fprintf(out, "chaos: seed %d, schedule %s: %d events at %g/s, %d receiver stops, %d API outages, %d duplicate bursts; retries after %s\n",
		o.seed, sched.fingerprint(), o.n, o.rate, len(sched.stops), len(sched.faults), len(sched.bursts), o.scaledSchedule())

	sum, err := chaos(ctx, o, sched, bin, dir, out)
	sum.wall = time.Since(started)
	sum.logDir = dir
	if err == nil {
		printSummary(out, sum)
	}
	if err == nil && sum.ok() && o.logDir == "" {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(out, "chaos: logs kept in %s\n", dir)
	}
	return sum, err
}

// chaos runs the schedule and counts.
func chaos(ctx context.Context, o options, sched schedule, bin, dir string, out io.Writer) (summary, error) {
	sum := summary{seed: o.seed, kinds: map[string]int{}, windows: map[string]int{}, duplicates: map[string]int{}}
	ctx, abort := context.WithCancel(ctx)
	defer abort()
	say := func(format string, args ...any) {
		if o.verbose {
			fmt.Fprintf(out, "chaos: "+format+"\n", args...)
		}
	}

	port, err := receiverPort()
	if err != nil {
		return sum, err
	}
	receiverURL := "http://127.0.0.1:" + port
	simLog, err := os.Create(dir + "/simulator.log")
	if err != nil {
		return sum, err
	}
	defer simLog.Close()
	secret := optipicksim.NewSecret()
	sim, err := optipicksim.New(optipicksim.Config{
		APIKey:        apiKey,
		Cluster:       optipicksim.Receiver{URL: receiverURL + "/webhook/cluster", Secret: secret},
		Route:         optipicksim.Receiver{URL: receiverURL + "/webhook/route", Secret: secret},
		OptimizeDelay: 20 * time.Millisecond,
		TimeScale:     o.timeScale,
		RetryFloor:    cmp.Or(o.retryFloor, -1), // 0: none (Config's -1)
		Logger:        slog.New(slog.NewJSONHandler(simLog, nil)),
	})
	if err != nil {
		return sum, err
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return sum, err
	}
	simURL := "http://" + listener.Addr().String()
	server := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go server.Serve(listener)
	defer func() {
		sim.Close() // ends pending deliveries and hung GETs
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		server.Shutdown(shutdown)
	}()

	env := []string{"PATH=" + os.Getenv("PATH"), "WEBHOOK_SECRET=" + secret, "OPTIPICK_API_KEY=" + apiKey,
		"OPTIPICK_API_URL=" + simURL, "PORT=" + port, "LOG_FORMAT=json", "LOG_LEVEL=info", "DEDUPE_WINDOW=24h"}
	book := &logBook{}
	var (
		mu      sync.Mutex // guards current, count and up
		current *incarnation
		count   int
		up      bool // listening, and not being stopped
	)
	start := func() error {
		var err error
		for try := 0; try < 5; try++ { // the port may be taken for a moment
			mu.Lock()
			count++
			n := count
			mu.Unlock()
			var inc *incarnation
			if inc, err = startReceiver(ctx, bin, dir, n, env, book); err == nil {
				mu.Lock()
				current, up = inc, true
				mu.Unlock()
				return nil
			}
			if ctx.Err() != nil {
				return err
			}
			if !sleep(ctx, 500*time.Millisecond) {
				return ctx.Err()
			}
		}
		return err
	}
	currentN := func() int {
		mu.Lock()
		defer mu.Unlock()
		if current == nil || current.exited() {
			return 0
		}
		return current.n
	}
	if err := start(); err != nil {
		return sum, err
	}
	defer func() { // whatever happens, no receiver outlives the run
		mu.Lock()
		inc := current
		mu.Unlock()
		if inc != nil && !inc.exited() {
			inc.kill()
		}
	}()
	killedBy := map[int]string{} // incarnation → how it was stopped
	t0 := time.Now()
	at := func(d time.Duration) bool { return sleep(ctx, time.Until(t0.Add(d))) }

	var (
		wg          sync.WaitGroup
		errs        = make(chan error, 4)
		requestIDs  = make([]string, len(sched.events))
		idsMu       sync.Mutex
		submittedOK = 0
	)
	// Submissions.
	wg.Add(1)
	go func() {
		defer wg.Done()
		body, _ := json.Marshal(optipicksim.ExampleRequest())
		client := &http.Client{Timeout: 10 * time.Second}
		for i, ev := range sched.events {
			if !at(ev.at) {
				errs <- ctx.Err()
				return
			}
			id, err := optipicksim.Submit(ctx, client, simURL, apiKey, ev.kind, body, false)
			if err != nil {
				errs <- fmt.Errorf("event %d: %w", i, err)
				return
			}
			idsMu.Lock()
			requestIDs[i] = id
			submittedOK++
			idsMu.Unlock()
		}
	}()
	// Receiver stops and restarts.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, st := range sched.stops {
			if !at(st.at) {
				errs <- ctx.Err()
				return
			}
			mu.Lock()
			inc := current
			up = false
			mu.Unlock()
			if st.graceful {
				say("%6.1fs SIGTERM receiver %d", time.Since(t0).Seconds(), inc.n)
				if err := inc.terminate(); err != nil {
					sum.badStops = append(sum.badStops, err.Error())
				}
				killedBy[inc.n] = "SIGTERM"
				sum.sigterms++
			} else {
				say("%6.1fs SIGKILL receiver %d", time.Since(t0).Seconds(), inc.n)
				inc.kill()
				killedBy[inc.n] = "SIGKILL"
				sum.sigkills++
			}
			if !sleep(ctx, st.pause) {
				errs <- ctx.Err()
				return
			}
			if err := start(); err != nil {
				errs <- fmt.Errorf("restarting the receiver: %w", err)
				return
			}
			sum.restarts++
			say("%6.1fs receiver %d listening after a %v pause", time.Since(t0).Seconds(), currentN(), st.pause.Round(time.Millisecond))
		}
	}()
	// API outages.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, w := range sched.faults {
			if !at(w.at) {
				errs <- ctx.Err()
				return
			}
			sim.SetAPIFault(w.fault)
			say("%6.1fs API outage: GETs %s for %v", time.Since(t0).Seconds(), w.fault, w.length.Round(time.Millisecond))
			ok := sleep(ctx, w.length)
			sim.SetAPIFault(optipicksim.APIFault{})
			if !ok {
				errs <- ctx.Err()
				return
			}
			sum.windows[w.fault.String()]++
			sum.outage += w.length
		}
	}()
	// Duplicate bursts.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, b := range sched.bursts {
			if !at(b.at) {
				errs <- ctx.Err()
				return
			}
			// A resend to a receiver that is down proves nothing: wait
			// (bounded by the run's timeout) until one listens.
			for isUp := false; !isUp; {
				mu.Lock()
				isUp = up
				mu.Unlock()
				if !isUp && !sleep(ctx, 10*time.Millisecond) {
					errs <- ctx.Err()
					return
				}
			}
			var burstWG sync.WaitGroup
			sent := 0
			for _, i := range b.indices {
				idsMu.Lock()
				id := requestIDs[i]
				idsMu.Unlock()
				msgID, ok := sim.MessageID(sched.events[i].kind, id)
				if id == "" || !ok {
					sum.resendSkipped++ // not sent yet: nothing to resend
					continue
				}
				sent++
				for range resendCopies {
					burstWG.Add(1)
					go func() {
						defer burstWG.Done()
						sim.Resend(msgID) // recorded among the simulator's attempts
					}()
				}
			}
			burstWG.Wait()
			sum.resendMessages += sent
			say("%6.1fs resent %d messages %d times each", time.Since(t0).Seconds(), sent, resendCopies)
		}
	}()

	// Progress, until the schedule has run.
	scheduleDone := make(chan struct{})
	go func() { wg.Wait(); close(scheduleDone) }()
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	var runErr error
	for waiting := true; waiting; {
		select {
		case <-scheduleDone:
			waiting = false
		case err := <-errs:
			if runErr == nil {
				runErr = err
			}
			abort() // the schedule cannot go on: stop every part of it
		case <-progress.C:
			idsMu.Lock()
			n := submittedOK
			idsMu.Unlock()
			fmt.Fprintf(out, "chaos: %4.0fs submitted %d/%d, logged %d lines, %d deliveries pending, receiver incarnation %d\n",
				time.Since(t0).Seconds(), n, len(sched.events), book.count(), sim.Pending(), currentN())
		}
	}
	select {
	case err := <-errs:
		if runErr == nil {
			runErr = err
		}
	default:
	}
	if runErr != nil && !errors.Is(runErr, context.DeadlineExceeded) {
		return sum, runErr
	}

	// Settle: the receiver runs; wait until nothing is left to deliver.
	for sum.settled = runErr == nil; sum.settled && sim.Pending() > 0; {
		select {
		case <-ctx.Done():
			sum.settled = false
		case <-progress.C:
			fmt.Fprintf(out, "chaos: %4.0fs settling: logged %d lines, %d deliveries pending\n",
				time.Since(t0).Seconds(), book.count(), sim.Pending())
		case <-time.After(50 * time.Millisecond):
		}
	}
	sum.pending = sim.Pending()
	sum.faultedGETs = sim.FaultedGETs()
	mu.Lock()
	last := current
	mu.Unlock()
	if !last.exited() {
		if err := last.terminate(); err != nil {
			sum.badStops = append(sum.badStops, "final stop: "+err.Error())
		}
	}
	sum.incarnations = count

	// Count.
	idsMu.Lock()
	defer idsMu.Unlock()
	sum.submitted = submittedOK
	submitted := map[string]bool{}
	for i, id := range requestIDs[:submittedOK] {
		submitted[id] = true
		sum.kinds[sched.events[i].kind]++
	}
	byRequest := map[string][]fetched{}
	book.mu.Lock()
	for _, f := range book.fetched {
		byRequest[f.requestID] = append(byRequest[f.requestID], f)
	}
	book.mu.Unlock()
	for _, id := range requestIDs[:submittedOK] {
		if len(byRequest[id]) == 0 {
			sum.lost = append(sum.lost, id)
		}
	}
	for id := range byRequest {
		if submitted[id] {
			sum.logged++
		} else {
			sum.unknown = append(sum.unknown, id)
		}
	}
	sort.Strings(sum.unknown)

	attempts := map[string][]optipicksim.Attempt{}    // scheduled ones, by svix-id
	allAttempts := map[string][]optipicksim.Attempt{} // resends too
	for _, a := range sim.Attempts() {
		allAttempts[a.MsgID] = append(allAttempts[a.MsgID], a)
		if a.Resend {
			sum.resends++
			if a.Succeeded() {
				sum.resendsAnswered++
			}
			continue
		}
		attempts[a.MsgID] = append(attempts[a.MsgID], a)
	}
	total := 0
	for _, list := range attempts {
		total += len(list)
		sum.maxAttempts = max(sum.maxAttempts, len(list))
		if len(list) > 1 {
			sum.retried++
		}
		if last := list[len(list)-1]; !last.Succeeded() {
			sum.gaveUp++
		}
	}
	if len(attempts) > 0 {
		sum.meanAttempts = float64(total) / float64(len(attempts))
	}
	for _, logs := range byRequest {
		for i, later := range logs[1:] {
			sum.duplicates[whyTwice(logs[:i+1], later, killedBy, allAttempts[later.svixID])]++
		}
	}
	return sum, nil
}

// whyTwice explains why later logged an event that earlier lines had
// logged already, from when each line was written and which delivery
// attempts of the message were open then.
func whyTwice(earlier []fetched, later fetched, killedBy map[int]string, attempts []optipicksim.Attempt) string {
	during := func(f fetched, match func(optipicksim.Attempt) bool) bool {
		return slices.ContainsFunc(attempts, func(a optipicksim.Attempt) bool {
			const slack = 5 * time.Millisecond // log lines carry their own clock reading
			return match(a) && !f.at.Before(a.At.Add(-slack)) && !f.at.After(a.At.Add(a.Latency+slack))
		})
	}
	resend := func(a optipicksim.Attempt) bool { return a.Resend }
	scheduled := func(a optipicksim.Attempt) bool { return !a.Resend }
	unanswered := func(a optipicksim.Attempt) bool { return !a.Resend && a.Status == 0 }
	for _, e := range earlier {
		if e.incarnation == later.incarnation {
			return "UNEXPECTED: one receiver process logged it twice"
		}
	}
	if during(later, resend) {
		return "a resend reached a receiver process that had not handled it (dedupe memory is per process)"
	}
	for _, e := range earlier {
		if killedBy[e.incarnation] == "SIGKILL" && during(e, unanswered) {
			return "the receiver was SIGKILLed between logging and answering, so Svix retried"
		}
	}
	for _, e := range earlier {
		if during(e, resend) && during(later, scheduled) {
			return "a resend was handled while Svix was still retrying the original, whose retry reached a restarted receiver"
		}
	}
	return "UNEXPLAINED"
}

func printSummary(out io.Writer, s summary) {
	line := func(label, format string, args ...any) {
		fmt.Fprintf(out, "  %-22s %s\n", label, fmt.Sprintf(format, args...))
	}
	fmt.Fprintf(out, "chaos summary (seed %d)\n", s.seed)
	line("events submitted", "%d (cluster %d, route %d)", s.submitted, s.kinds["cluster"], s.kinds["route"])
	line("fetched and logged", "%d (counted in the logs of %d receiver incarnations)", s.logged, s.incarnations)
	line("lost", "%d", len(s.lost))
	dups := 0
	var why []string
	for reason, n := range s.duplicates {
		dups += n
		why = append(why, fmt.Sprintf("%d: %s", n, reason))
	}
	sort.Strings(why)
	if dups == 0 {
		why = []string{"no kill landed between logging and answering"}
	}
	line("duplicates logged", "%d (%s)", dups, strings.Join(why, "; "))
	line("receiver stops", "%d SIGKILL, %d SIGTERM (drained, exit 0 expected); %d restarts", s.sigkills, s.sigterms, s.restarts)
	var kinds []string
	for _, k := range []string{"500", "503", "429", "hang"} {
		if s.windows[k] > 0 {
			kinds = append(kinds, fmt.Sprintf("%s ×%d", k, s.windows[k]))
		}
	}
	windows := 0
	for _, n := range s.windows {
		windows += n
	}
	if windows == 0 {
		kinds = []string{"none"}
	}
	line("API fault windows", "%d (%s; %.1f s in all; %d GETs faulted)", windows, strings.Join(kinds, ", "), s.outage.Seconds(), s.faultedGETs)
	skipped := ""
	if s.resendSkipped > 0 {
		skipped = fmt.Sprintf("; %d picked messages not yet sent, so not resent", s.resendSkipped)
	}
	line("duplicate deliveries", "%d resends of %d messages (same svix-id), %d answered 2xx%s", s.resends, s.resendMessages, s.resendsAnswered, skipped)
	line("delivery attempts", "per event max %d, mean %.2f; %d events needed a retry; Svix gave up on %d", s.maxAttempts, s.meanAttempts, s.retried, s.gaveUp)
	line("wall time", "%s", s.wall.Round(100*time.Millisecond))
	if len(s.badStops) > 0 {
		line("FAILED stops", "%s", strings.Join(s.badStops, "; "))
	}
	if len(s.unknown) > 0 {
		line("SUSPICIOUS", "%d request_ids logged that were never submitted: %s", len(s.unknown), strings.Join(s.unknown, " "))
	}
	switch {
	case !s.settled:
		fmt.Fprintf(out, "chaos: FAILED (seed %d): did not settle: %d deliveries still pending\n", s.seed, s.pending)
	case len(s.lost) > 0:
		fmt.Fprintf(out, "chaos: FAILED (seed %d): %d lost: %s\n", s.seed, len(s.lost), strings.Join(s.lost, " "))
	case len(s.badStops) > 0:
		fmt.Fprintf(out, "chaos: FAILED (seed %d): a receiver did not stop cleanly\n", s.seed)
	default:
		fmt.Fprintln(out, "chaos: OK: nothing lost")
	}
	if !s.settled && len(s.lost) > 0 {
		fmt.Fprintf(out, "chaos: not logged (seed %d): %s\n", s.seed, strings.Join(s.lost, " "))
	}
}

// submit starts an asynchronous optimization and returns its request_id.
// sleep waits d, or less if ctx ends; it reports whether the whole wait passed.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// receiverPort finds a free port for the receiver outside the system's
// ephemeral range: the receiver is restarted on the same port, and while it
// is down, an outgoing connection of this run (thousands of them) could
// otherwise be given that port as its own, and the restart would fail with
// "address already in use".
func receiverPort() (string, error) {
	low := 32768 // Linux's default start of the ephemeral range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	if low > 2048 {
		for range 100 {
			port := strconv.Itoa(1024 + rand.IntN(low-1024))
			if l, err := net.Listen("tcp", ":"+port); err == nil {
				l.Close()
				return port, nil
			}
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	_, port, err := net.SplitHostPort(l.Addr().String())
	return port, err
}
