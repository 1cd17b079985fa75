package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// service is run() started in this process, with the fake API.
type service struct {
	base, metricsURL string
	lines            *logLines
	stop             context.CancelFunc
	done             chan error
}

func startService(t *testing.T, api *fakeAPI, env map[string]string) *service {
	t.Helper()
	apiServer := httptest.NewServer(api)
	t.Cleanup(apiServer.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second) // nothing here may hang
	t.Cleanup(cancel)
	logs, logWriter := io.Pipe()
	env = merge(map[string]string{"WEBHOOK_SECRET": testSecret, "OPTIPICK_API_KEY": testAPIKey,
		"OPTIPICK_API_URL": apiServer.URL, "PORT": "0", "LOG_FORMAT": "json", "METRICS_ADDR": "127.0.0.1:0"}, env)
	s := &service{stop: cancel, done: make(chan error, 1)}
	go func() {
		err := run(ctx, []string{"optipick-webhooks"}, getenvFrom(env), logWriter, io.Discard)
		logWriter.Close()
		s.done <- err
	}()
	s.lines = readLogLines(t, logs)
	if env["METRICS_ADDR"] != "" {
		s.metricsURL = "http://" + fmt.Sprint(s.lines.waitFor(t, "serving metrics")["addr"]) + "/metrics"
	}
	_, port, _ := net.SplitHostPort(fmt.Sprint(s.lines.waitFor(t, "listening")["addr"]))
	s.base = "http://127.0.0.1:" + port
	return s
}

func (s *service) send(t *testing.T, req *http.Request) int {
	t.Helper()
	target, _ := http.NewRequest(req.Method, s.base+req.URL.Path, req.Body)
	target.Header = req.Header
	resp, err := http.DefaultClient.Do(target)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// scrape reads the metrics, as name{labels} → value.
func scrape(t *testing.T, url string) map[string]string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	out := map[string]string{}
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		if name, value, ok := strings.Cut(scanner.Text(), " "); ok && !strings.HasPrefix(name, "#") {
			out[name] = value
		}
	}
	return out
}

func TestMetricsCountDeliveriesByOutcome(t *testing.T) {
	api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/gone") {
			http.NotFound(w, r)
			return
		}
		writeClusterResult(w, r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:])
	}}
	s := startService(t, api, nil)

	repeated := signedDeliveryAt(t, testSecret, "/webhook/cluster", requestBody(testRequestID), "msg_twice", time.Now())
	again := signedDeliveryAt(t, testSecret, "/webhook/cluster", requestBody(testRequestID), "msg_twice", time.Now())
	otherKind := signedDeliveryAt(t, testSecret, "/webhook/route", requestBody(testRequestID), "msg_twice", time.Now())
	for _, d := range []struct {
		req  *http.Request
		want int
	}{
		{repeated, 200},
		{again, 200},
		{otherKind, 409},
		{signedDelivery(t, testSecret, "/webhook/route", requestBody("other1")), 200},
		{signedDelivery(t, wrongSecret, "/webhook/route", requestBody(testRequestID)), 401},
		{signedDelivery(t, wrongSecret, "/webhook/route", requestBody(testRequestID)), 401},
		{signedDelivery(t, testSecret, "/webhook/route", []byte(`{"request_id":"../x"}`)), 400},
		{signedDelivery(t, testSecret, "/webhook/cluster", requestBody("gone")), 502},
		{signedDelivery(t, testSecret, "/webhook/cluster", make([]byte, maxBodyBytes+1)), 413},
	} {
		if got := s.send(t, d.req); got != d.want {
			t.Fatalf("delivery answered %d, want %d", got, d.want)
		}
	}

	m := scrape(t, s.metricsURL)
	for name, want := range map[string]string{
		`optipick_webhooks_deliveries_total{kind="cluster",outcome="processed"}`:          "1",
		`optipick_webhooks_deliveries_total{kind="cluster",outcome="duplicate"}`:          "1",
		`optipick_webhooks_deliveries_total{kind="route",outcome="processed"}`:            "1",
		`optipick_webhooks_deliveries_total{kind="route",outcome="other_kind"}`:           "1",
		`optipick_webhooks_deliveries_total{kind="route",outcome="invalid_signature"}`:    "2",
		`optipick_webhooks_deliveries_total{kind="route",outcome="bad_request"}`:          "1",
		`optipick_webhooks_deliveries_total{kind="cluster",outcome="fetch_failed"}`:       "1",
		`optipick_webhooks_deliveries_total{kind="cluster",outcome="too_large"}`:          "1",
		`optipick_webhooks_deliveries_total{kind="cluster",outcome="process_failed"}`:     "0",
		`optipick_webhooks_delivery_duration_seconds_count{outcome="processed"}`:          "2",
		`optipick_webhooks_delivery_duration_seconds_bucket{outcome="processed",le="15"}`: "2",
		`optipick_webhooks_api_request_duration_seconds_count{status_class="2xx"}`:        "2",
		`optipick_webhooks_api_request_duration_seconds_count{status_class="4xx"}`:        "1",
		`optipick_webhooks_deliveries_in_flight`:                                          "0",
		`optipick_webhooks_dedupe_entries`:                                                "3", // failures too, for a while
	} {
		if got := m[name]; got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	var buildInfo bool
	for name := range m {
		buildInfo = buildInfo || strings.HasPrefix(name, `optipick_webhooks_build_info{version=`) && strings.Contains(name, `goversion="go1.`)
	}
	if !buildInfo || m["go_goroutines"] == "" || m["process_resident_memory_bytes"] == "" {
		t.Errorf("build_info, Go or process metrics missing:\n%v", m)
	}

	// Never on the webhook port.
	resp, err := http.Get(s.base + "/metrics")
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /metrics on the webhook port: %v %v, want 404", resp, err)
	}
	s.stop()
	if err := <-s.done; err != nil {
		t.Fatal(err)
	}
}

// TestReadinessFollowsTheDrain: from the moment a shutdown starts, /readyz
// answers 503 while /healthz stays 200 and in-flight deliveries finish.
func TestReadinessFollowsTheDrain(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(arrived) })
		<-release
		writeClusterResult(w, testRequestID)
	}}
	s := startService(t, api, map[string]string{"SHUTDOWN_DELAY": "1s", "METRICS_ADDR": ""})
	get := func(path string) int {
		resp, err := http.Get(s.base + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("/readyz"); got != http.StatusOK {
		t.Fatalf("/readyz before the shutdown: %d, want 200", got)
	}
	inFlight := make(chan int, 1)
	go func() {
		inFlight <- s.send(t, signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
	}()
	<-arrived

	s.stop() // as SIGTERM does
	s.lines.waitFor(t, "shutting down: /readyz answers 503 while load balancers catch up")
	if got := get("/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz during the shutdown: %d, want 503", got)
	}
	if got := get("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz during the shutdown: %d, want 200 (the process is alive)", got)
	}
	close(release)
	if got := <-inFlight; got != http.StatusOK {
		t.Errorf("in-flight delivery: %d, want 200", got)
	}
	if err := <-s.done; err != nil {
		t.Fatal(err)
	}
}

// TestAPICallsAreCountedByStatusClass: every status lands in its class;
// no answer, or one outside 200-599, is an error.
func TestAPICallsAreCountedByStatusClass(t *testing.T) {
	m := newServiceMetrics("test", func() int { return 0 })
	for _, status := range []int{0, 199, 200, 299, 302, 404, 500, 599, 600} {
		m.apiCalled(status, time.Millisecond)
	}
	server := httptest.NewServer(m.handler())
	defer server.Close()
	got := scrape(t, server.URL+"/metrics")
	for class, want := range map[string]string{"2xx": "2", "3xx": "1", "4xx": "1", "5xx": "2", "error": "3"} {
		if name := `optipick_webhooks_api_request_duration_seconds_count{status_class="` + class + `"}`; got[name] != want {
			t.Errorf("%s = %q, want %q", name, got[name], want)
		}
	}
}

// TestFailedProcessingIsCountedAsSuch: a processor's error, and a panic in
// the work, count as process_failed, not as a failed fetch.
func TestFailedProcessingIsCountedAsSuch(t *testing.T) {
	m := newServiceMetrics("test", func() int { return 0 })
	v, err := newVerifier(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	fetch := func(ctx context.Context, k kind, id string) (*optimization, error) {
		return &optimization{}, nil
	}
	calls := 0
	process := func(ctx context.Context, d delivery, res *optimization) error {
		if calls++; calls == 1 {
			return errors.New("the store is down")
		}
		panic("a bug in the processor")
	}
	handler := newServer(services{logger: slog.New(slog.DiscardHandler), verifier: v, fetch: fetch, process: process, seen: newDedupe(time.Hour, 10), rec: m})
	for range 2 {
		resp := httptest.NewRecorder()
		handler.ServeHTTP(resp, signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
		if resp.Code < 500 {
			t.Fatalf("a failed processing answered %d, want 5xx", resp.Code)
		}
	}
	server := httptest.NewServer(m.handler())
	defer server.Close()
	got := scrape(t, server.URL+"/metrics")
	for outcome, want := range map[string]string{"process_failed": "2", "fetch_failed": "0"} {
		if name := `optipick_webhooks_deliveries_total{kind="cluster",outcome="` + outcome + `"}`; got[name] != want {
			t.Errorf("%s = %q, want %q", name, got[name], want)
		}
	}
}
