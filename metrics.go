package main

import (
	"fmt"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// serviceMetrics are the service's Prometheus metrics, a recorder. Every
// label has a few fixed values, all created at start (rate() sees zeros).
type serviceMetrics struct {
	set        *metrics.Set
	deliveries map[kind]map[outcome]*metrics.Counter
	durations  map[outcome]*metrics.PrometheusHistogram
	apiCalls   [5]*metrics.PrometheusHistogram // by status class: no answer, 2xx, 3xx, 4xx, 5xx
	inFlight   atomic.Int64
}

func newServiceMetrics(version string, dedupeEntries func() int) *serviceMetrics {
	const prefix = "optipick_webhooks_"
	// Up to Svix's 15 s, finer where deliveries usually end.
	buckets := []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 7.5, 10, 12.5, 15}
	m := &serviceMetrics{set: metrics.NewSet(), deliveries: map[kind]map[outcome]*metrics.Counter{}, durations: map[outcome]*metrics.PrometheusHistogram{}}
	for _, o := range []outcome{outcomeProcessed, outcomeDuplicate, outcomeOtherKind, outcomeInvalidSignature, outcomeTooLarge,
		outcomeUnreadableBody, outcomeBadRequest, outcomeFetchFailed, outcomeProcessFailed} {
		for _, k := range []kind{kindCluster, kindRoute} {
			if m.deliveries[k] == nil {
				m.deliveries[k] = map[outcome]*metrics.Counter{}
			}
			m.deliveries[k][o] = m.set.NewCounter(fmt.Sprintf(`%sdeliveries_total{kind=%q,outcome=%q}`, prefix, k, o))
		}
		m.durations[o] = m.set.NewPrometheusHistogramExt(fmt.Sprintf(`%sdelivery_duration_seconds{outcome=%q}`, prefix, o), buckets)
	}
	for i, class := range []string{"error", "2xx", "3xx", "4xx", "5xx"} {
		m.apiCalls[i] = m.set.NewPrometheusHistogramExt(fmt.Sprintf(`%sapi_request_duration_seconds{status_class=%q}`, prefix, class), buckets)
	}
	m.set.NewGauge(prefix+"deliveries_in_flight", func() float64 { return float64(m.inFlight.Load()) })
	m.set.NewGauge(prefix+"dedupe_entries", func() float64 { return float64(dedupeEntries()) })
	m.set.NewGauge(fmt.Sprintf(`%sbuild_info{version=%q,goversion=%q}`, prefix, version, runtime.Version()), func() float64 { return 1 })
	return m
}

func (m *serviceMetrics) started(k kind) func(outcome) {
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
	class := 0 // no answer, or a status out of range
	if status >= 200 && status < 600 {
		class = status/100 - 1
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
