package main

// Tests of the Prometheus metrics.

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

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
	s := startService(t, api, withMetrics)

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
		// Failures are remembered too, for a while.
		`optipick_webhooks_dedupe_entries`: "3",
	} {
		if got := m[name]; got != want {
			t.Errorf("%s = %q, want %q", name, got, want)
		}
	}
	var buildInfo bool
	for name := range m {
		buildInfo = buildInfo ||
			strings.HasPrefix(name, `optipick_webhooks_build_info{version=`) &&
				strings.Contains(name, `goversion="go1.`)
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
		name := `optipick_webhooks_api_request_duration_seconds_count{status_class="` + class + `"}`
		if got[name] != want {
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
	handler := newServer(webhookDeps{
		logger:   slog.New(slog.DiscardHandler),
		verifier: v,
		fetch:    fetch,
		process:  process,
		seen:     newDedupe(time.Hour, 10),
		metrics:  m,
	}, alwaysReady)
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

// withMetrics is the environment of a service that serves metrics.
var withMetrics = map[string]string{"METRICS_ADDR": "127.0.0.1:0"}
