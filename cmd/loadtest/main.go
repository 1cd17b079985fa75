// Command loadtest measures the built receiver against a bare baseline
// server on loopback (make loadtest). It is a development tool.
//
// It starts a fake OptiPick API in this process, the receiver binary, and a
// baseline server (this program with -serve-baseline) that does the same
// I/O as the receiver (read the body, one GET to the API, one log line,
// 200) with no verification and no decoding. Then, in alternating rounds,
// it sends N distinct signed deliveries at concurrency C to each, and
// prints throughput, latency, failures, peak RSS and the ratio of the two.
// Everything stays on 127.0.0.1, and every round is bounded in count and
// time.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	svix "github.com/svix/svix-webhooks/go"

	"optipick-webhooks/internal/optipicksim"
)

const (
	apiKey       = "loadtest-key"
	roundTimeout = 60 * time.Second
	startTimeout = 10 * time.Second
)

func main() {
	var err error
	if len(os.Args) > 1 && os.Args[1] == "-serve-baseline" {
		err = serveBaseline()
	} else {
		err = run(os.Args[1:], os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	flags := flag.NewFlagSet("loadtest", flag.ContinueOnError)
	receiverBin := flags.String("receiver", "bin/optipick-webhooks", "the receiver binary (make build)")
	n := flags.Int("n", 5000, "deliveries per round (at most 100000)")
	c := flags.Int("c", 64, "concurrent deliveries (at most 1024)")
	rounds := flags.Int("rounds", 3, "rounds per server, alternating (at most 20)")
	withMetrics := flags.Bool("metrics", false, "also run the receiver with METRICS_ADDR set, to measure what metrics cost")
	if err := flags.Parse(args); err != nil {
		return err
	}
	if *n < 1 || *n > 100_000 || *c < 1 || *c > 1024 || *rounds < 1 || *rounds > 20 {
		return errors.New("-n, -c or -rounds out of bounds")
	}

	binary, err := filepath.Abs(*receiverBin)
	if err != nil {
		return err
	}
	secret := optipicksim.NewSecret()
	signer, err := svix.NewWebhook(secret)
	if err != nil {
		return err
	}
	apiURL, apiCalls, stopAPI, err := startFakeAPI()
	if err != nil {
		return err
	}
	defer stopAPI()
	env := []string{"WEBHOOK_SECRET=" + secret, "OPTIPICK_API_KEY=" + apiKey, "OPTIPICK_API_URL=" + apiURL,
		"PORT=0", "LOG_FORMAT=json", "LOG_LEVEL=info"}

	self, err := os.Executable()
	if err != nil {
		return err
	}
	receiver, err := startServer("receiver", []string{binary}, env)
	if err != nil {
		return err
	}
	defer receiver.stop()
	baseline, err := startServer("baseline", []string{self, "-serve-baseline"}, env)
	if err != nil {
		return err
	}
	defer baseline.stop()
	servers := []*server{receiver, baseline}
	var metered *server
	if *withMetrics {
		if metered, err = startServer("metrics", []string{binary}, append(env, "METRICS_ADDR=127.0.0.1:0")); err != nil {
			return err
		}
		defer metered.stop()
		servers = append(servers, metered)
	}

	fmt.Fprintf(out, "loadtest: %d distinct signed deliveries a round at concurrency %d, %d rounds each, alternating; %d cores, %s\n",
		*n, *c, *rounds, runtime.NumCPU(), runtime.Version())
	for _, s := range servers { // warm up connections and caches
		if _, err := s.round(signer, "warmup", min(*n, 500), *c); err != nil {
			return err
		}
	}
	apiCalls.Store(0)
	cpuBefore := map[*server]time.Duration{}
	for _, s := range servers {
		cpuBefore[s] = s.cpuTime()
	}
	results := map[*server][]roundResult{}
	for r := range *rounds {
		for _, s := range servers {
			result, err := s.round(signer, strconv.Itoa(r), *n, *c)
			if err != nil {
				return err
			}
			results[s] = append(results[s], result)
			fmt.Fprintf(out, "  round %d %-8s %8.0f req/s  p50 %7s  p99 %7s  failed %d\n",
				r+1, s.name, result.rate, result.p50.Round(10*time.Microsecond), result.p99.Round(10*time.Microsecond), result.failed)
		}
	}

	fmt.Fprintf(out, "\n%-9s %10s %9s %9s %7s %11s %14s\n", "server", "req/s", "p50", "p99", "failed", "peak RSS", "CPU/delivery")
	summary := map[*server]roundResult{}
	for _, s := range servers {
		sum := median(results[s])
		summary[s] = sum
		cpu := (s.cpuTime() - cpuBefore[s]) / time.Duration(*n**rounds)
		fmt.Fprintf(out, "%-9s %10.0f %9s %9s %7d %7.1f MiB %11.0f µs\n", s.name, sum.rate, sum.p50.Round(10*time.Microsecond),
			sum.p99.Round(10*time.Microsecond), sum.failed, float64(s.peakRSS())/(1<<20), float64(cpu)/float64(time.Microsecond))
	}
	fmt.Fprintf(out, "\nreceiver/baseline throughput: %.2fx (median of rounds); API calls: %d for %d deliveries\n",
		summary[receiver].rate/summary[baseline].rate, apiCalls.Load(), len(servers)**n**rounds)
	// Each round's ratio compares two runs a second apart: the spread says
	// how much the machine moved under the figures.
	pairs := make([]float64, *rounds)
	for r := range pairs {
		pairs[r] = results[receiver][r].rate / results[baseline][r].rate
	}
	slices.Sort(pairs)
	fmt.Fprintf(out, "round by round: %.2fx median, %.2fx to %.2fx\n", pairs[len(pairs)/2], pairs[0], pairs[len(pairs)-1])
	if metered != nil {
		fmt.Fprintf(out, "receiver with METRICS_ADDR / without: %.2fx throughput\n", summary[metered].rate/summary[receiver].rate)
	}
	if summary[receiver].failed+summary[baseline].failed+summary[metered].failed > 0 {
		return errors.New("some deliveries failed")
	}
	return nil
}

type roundResult struct {
	rate     float64 // deliveries a second
	p50, p99 time.Duration
	failed   int
}

// median takes each figure's median over the rounds, and all the failures.
func median(rounds []roundResult) roundResult {
	pick := func(f func(roundResult) float64) float64 {
		values := make([]float64, len(rounds))
		for i, r := range rounds {
			values[i] = f(r)
		}
		slices.Sort(values)
		return values[len(values)/2]
	}
	out := roundResult{
		rate: pick(func(r roundResult) float64 { return r.rate }),
		p50:  time.Duration(pick(func(r roundResult) float64 { return float64(r.p50) })),
		p99:  time.Duration(pick(func(r roundResult) float64 { return float64(r.p99) })),
	}
	for _, r := range rounds {
		out.failed += r.failed
	}
	return out
}

// server is a started receiver or baseline.
type server struct {
	name   string
	cmd    *exec.Cmd
	url    string
	client *http.Client
	done   chan struct{}
}

func startServer(name string, argv, env []string) (*server, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	dir, err := os.MkdirTemp("", "loadtest-") // away from any .env
	if err != nil {
		return nil, err
	}
	defer os.Remove(dir)
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the %s: %w", name, err)
	}
	s := &server{name: name, cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		defer close(s.done)
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() { // read every log line, as a log collector would
			if bytes.Contains(scanner.Bytes(), []byte(`"msg":"listening"`)) {
				var line struct{ Addr string }
				json.Unmarshal(scanner.Bytes(), &line)
				addr <- line.Addr
			}
		}
		cmd.Wait()
	}()
	select {
	case a := <-addr:
		_, port, _ := net.SplitHostPort(a)
		s.url = "http://127.0.0.1:" + port
	case <-s.done:
		return nil, fmt.Errorf("the %s exited at start", name)
	case <-time.After(startTimeout):
		cmd.Process.Kill()
		return nil, fmt.Errorf("the %s did not start within %v", name, startTimeout)
	}
	s.client = &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}
	return s, nil
}

func (s *server) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
	}
}

// peakRSS is the process's high-water resident set size, in bytes.
func (s *server) peakRSS() int64 {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// cpuTime is the user and system CPU time the process has used so far.
func (s *server) cpuTime() time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	const ticksPerSecond = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticksPerSecond
}

// round sends n distinct signed deliveries at concurrency c.
func (s *server) round(signer *svix.Webhook, label string, n, c int) (roundResult, error) {
	type delivery struct {
		body   []byte
		header http.Header
	}
	deliveries := make([]delivery, n)
	now := time.Now()
	for i := range deliveries {
		body := []byte(fmt.Sprintf(`{"request_id":"%024x"}`, i))
		msgID := fmt.Sprintf("msg_load_%s_%s_%d", s.name, label, i)
		signature, err := signer.Sign(msgID, now, body)
		if err != nil {
			return roundResult{}, err
		}
		deliveries[i] = delivery{body, http.Header{
			"Content-Type": {"application/json"}, "Svix-Id": {msgID},
			"Svix-Timestamp": {strconv.FormatInt(now.Unix(), 10)}, "Svix-Signature": {signature},
		}}
	}

	ctx, cancel := context.WithTimeout(context.Background(), roundTimeout)
	defer cancel()
	latencies := make([]time.Duration, n)
	var next, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.url+"/webhook/cluster", bytes.NewReader(deliveries[i].body))
				req.Header = deliveries[i].header
				sent := time.Now()
				resp, err := s.client.Do(req)
				latencies[i] = time.Since(sent)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if ctx.Err() != nil {
		return roundResult{}, fmt.Errorf("%s round %s did not finish within %v", s.name, label, roundTimeout)
	}
	slices.Sort(latencies)
	return roundResult{
		rate:   float64(n) / elapsed.Seconds(),
		p50:    latencies[n/2],
		p99:    latencies[n*99/100],
		failed: int(failed.Load()),
	}, nil
}

// startFakeAPI serves the simulator's realistic cluster result (the Example
// warehouse, about 2.5 KB) for any id, carrying the id asked for, as a fast
// OptiPick would.
func startFakeAPI() (url string, calls *atomic.Int64, stop func(), err error) {
	sim, err := optipicksim.New(optipicksim.Config{APIKey: apiKey})
	if err != nil {
		return "", nil, nil, err
	}
	defer sim.Close()
	example, _ := json.Marshal(optipicksim.ExampleRequest())
	req, _ := http.NewRequest(http.MethodPost, "/optimize/cluster", bytes.NewReader(example))
	req.Header.Set("X-API-KEY", apiKey)
	recorder := httptest.NewRecorder()
	sim.Handler().ServeHTTP(recorder, req)
	result := recorder.Body.Bytes()
	var made struct {
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(result, &made); err != nil || made.RequestID == "" {
		return "", nil, nil, fmt.Errorf("the simulator's result has no request_id: %v", err)
	}
	madeID := []byte(`"` + made.RequestID + `"`)

	calls = &atomic.Int64{}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("X-API-KEY") != apiKey {
			http.Error(w, `{"message":"Forbidden"}`, http.StatusForbidden)
			return
		}
		// The result, carrying the id asked for.
		id := strconv.Quote(r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:])
		w.Header().Set("Content-Type", "application/json")
		w.Write(bytes.Replace(result, madeID, []byte(id), 1))
	})}
	go srv.Serve(listener)
	return "http://" + listener.Addr().String(), calls, func() { srv.Close() }, nil
}

// serveBaseline is the bare server the receiver is compared with: it does
// the receiver's I/O (read the body, one GET to the API, one log line,
// 200) and nothing else.
func serveBaseline() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	apiURL, key := os.Getenv("OPTIPICK_API_URL"), os.Getenv("OPTIPICK_API_KEY")
	logger := slog.New(slog.NewJSONHandler(os.Stdout, nil))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "body", http.StatusBadRequest)
			return
		}
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, apiURL+"/optimize/cluster/baseline", nil)
		req.Header.Set("X-API-KEY", key)
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, "api", http.StatusBadGateway)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		logger.Info("delivered", "svix_id", r.Header.Get("svix-id"), "body_bytes", len(body), "api_status", resp.StatusCode)
	})
	listener, err := net.Listen("tcp", ":"+os.Getenv("PORT"))
	if err != nil {
		return err
	}
	logger.Info("listening", "addr", listener.Addr().String())
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(listener)
	<-ctx.Done()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdownCtx)
}
