package main

// This file is optional: without it, METRICS_ADDR is refused at start
// (see newMetrics in server.go).

import (
	"fmt"
	"net/http"
	"runtime"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

func init() {
	newMetrics = func(version string, dedupeEntries func() int) (recorder, http.Handler) {
		m := newServiceMetrics(version, dedupeEntries)
		return m, m.handler()
	}
}

const metricsPrefix = "optipick_webhooks_"

// durationBuckets go up to Svix's 15 s, finer where deliveries usually end.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 7.5, 10, 12.5, 15}

// serviceMetrics are the service's Prometheus metrics, a recorder. Every
// label has a few fixed values, all created at start (rate() sees zeros).
type serviceMetrics struct {
	set        *metrics.Set
	deliveries map[kind]map[outcome]*metrics.Counter
	durations  map[outcome]*metrics.PrometheusHistogram
	apiCalls   map[string]*metrics.PrometheusHistogram // by status class
	inFlight   atomic.Int64
}

func newServiceMetrics(version string, dedupeEntries func() int) *serviceMetrics {
	m := &serviceMetrics{
		set:        metrics.NewSet(),
		deliveries: map[kind]map[outcome]*metrics.Counter{},
		durations:  map[outcome]*metrics.PrometheusHistogram{},
		apiCalls:   map[string]*metrics.PrometheusHistogram{},
	}
	for _, k := range kinds {
		m.deliveries[k] = map[outcome]*metrics.Counter{}
		for _, o := range outcomes {
			name := fmt.Sprintf(`%sdeliveries_total{kind=%q,outcome=%q}`, metricsPrefix, k, o)
			m.deliveries[k][o] = m.set.NewCounter(name)
		}
	}
	for _, o := range outcomes {
		name := fmt.Sprintf(`%sdelivery_duration_seconds{outcome=%q}`, metricsPrefix, o)
		m.durations[o] = m.set.NewPrometheusHistogramExt(name, durationBuckets)
	}
	for _, class := range []string{"error", "2xx", "3xx", "4xx", "5xx"} {
		name := fmt.Sprintf(`%sapi_request_duration_seconds{status_class=%q}`, metricsPrefix, class)
		m.apiCalls[class] = m.set.NewPrometheusHistogramExt(name, durationBuckets)
	}
	m.set.NewGauge(metricsPrefix+"deliveries_in_flight", func() float64 { return float64(m.inFlight.Load()) })
	m.set.NewGauge(metricsPrefix+"dedupe_entries", func() float64 { return float64(dedupeEntries()) })
	buildInfo := fmt.Sprintf(`%sbuild_info{version=%q,goversion=%q}`, metricsPrefix, version, runtime.Version())
	m.set.NewGauge(buildInfo, func() float64 { return 1 })
	return m
}

func (m *serviceMetrics) deliveryStarted(k kind) func(outcome) {
	m.inFlight.Add(1)
	start := time.Now()
	return func(o outcome) {
		m.inFlight.Add(-1)
		if c := m.deliveries[k][o]; c != nil { // a kind or outcome added without its metric is not counted
			c.Inc()
			m.durations[o].UpdateDuration(start)
		}
	}
}

func (m *serviceMetrics) apiCalled(status int, took time.Duration) {
	class := "error" // no answer, or a status out of range
	if status >= 200 && status < 600 {
		class = strconv.Itoa(status/100) + "xx"
	}
	m.apiCalls[class].Update(took.Seconds())
}

// handler serves the metrics in Prometheus text format, with the Go runtime
// and process metrics.
func (m *serviceMetrics) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		m.set.WritePrometheus(w)
		metrics.WriteProcessMetrics(w)
	})
	return mux
}
