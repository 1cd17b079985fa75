package main

import (
	"fmt"
	"net/http"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// outcome is how a delivery ended, as counted in the metrics.
type outcome string

const (
	outcomeProcessed        outcome = "processed"         // fetched and processed: 200
	outcomeDuplicate        outcome = "duplicate"         // already handled: 200, no fetch
	outcomeOtherKind        outcome = "other_kind"        // 409: verified for the other kind before
	outcomeInvalidSignature outcome = "invalid_signature" // 401
	outcomeTooLarge         outcome = "too_large"         // 413
	outcomeUnreadableBody   outcome = "unreadable_body"   // 400: the body could not be read
	outcomeBadRequest       outcome = "bad_request"       // 400 + abort: genuine, but no valid request_id
	outcomeFetchFailed      outcome = "fetch_failed"      // 5xx: the API did not give this result
	outcomeProcessFailed    outcome = "process_failed"    // 5xx: the processFunc returned an error
)

var (
	outcomes = []outcome{outcomeProcessed, outcomeDuplicate, outcomeOtherKind, outcomeInvalidSignature, outcomeTooLarge,
		outcomeUnreadableBody, outcomeBadRequest, outcomeFetchFailed, outcomeProcessFailed}
	apiStatusClasses = []string{"2xx", "3xx", "4xx", "5xx", "error"}

	// Up to Svix's 15 s, finer where deliveries usually end.
	durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 7.5, 10, 12.5, 15}
)

// serviceMetrics are the service's Prometheus metrics. Every label has a
// handful of fixed values, all created at start (so that rate() sees zeros).
// A nil *serviceMetrics records nothing: tests and copiers may pass nil.
type serviceMetrics struct {
	set            *metrics.Set
	deliveries     map[kind]map[outcome]*metrics.Counter
	durations      map[outcome]*metrics.PrometheusHistogram
	apiCalls       map[string]*metrics.PrometheusHistogram
	apiRetries     *metrics.Counter
	suppressedLogs *metrics.Counter
	inFlight       atomic.Int64
}

func newServiceMetrics(version string, dedupeEntries func() int) *serviceMetrics {
	const prefix = "optipick_webhooks_"
	m := &serviceMetrics{
		set:        metrics.NewSet(),
		deliveries: map[kind]map[outcome]*metrics.Counter{},
		durations:  map[outcome]*metrics.PrometheusHistogram{},
		apiCalls:   map[string]*metrics.PrometheusHistogram{},
	}
	for _, k := range []kind{kindCluster, kindRoute} {
		m.deliveries[k] = map[outcome]*metrics.Counter{}
		for _, o := range outcomes {
			m.deliveries[k][o] = m.set.NewCounter(fmt.Sprintf(`%sdeliveries_total{kind=%q,outcome=%q}`, prefix, k, o))
		}
	}
	for _, o := range outcomes {
		m.durations[o] = m.set.NewPrometheusHistogramExt(fmt.Sprintf(`%sdelivery_duration_seconds{outcome=%q}`, prefix, o), durationBuckets)
	}
	for _, class := range apiStatusClasses {
		m.apiCalls[class] = m.set.NewPrometheusHistogramExt(fmt.Sprintf(`%sapi_request_duration_seconds{status_class=%q}`, prefix, class), durationBuckets)
	}
	m.apiRetries = m.set.NewCounter(prefix + "api_retries_total")
	m.suppressedLogs = m.set.NewCounter(prefix + "rejection_log_lines_suppressed_total")
	m.set.NewGauge(prefix+"deliveries_in_flight", func() float64 { return float64(m.inFlight.Load()) })
	m.set.NewGauge(prefix+"dedupe_entries", func() float64 { return float64(dedupeEntries()) })
	m.set.NewGauge(fmt.Sprintf(`%sbuild_info{version=%q,goversion=%q}`, prefix, version, runtime.Version()), func() float64 { return 1 })
	return m
}

// started counts a delivery in flight until the returned func records how
// it ended.
func (m *serviceMetrics) started(k kind) (ended func(outcome)) {
	if m == nil {
		return func(outcome) {}
	}
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

// apiCall records one call to the OptiPick API: status 0 is a call that
// got no answer.
func (m *serviceMetrics) apiCall(status int, took time.Duration) {
	if m == nil {
		return
	}
	class := "error"
	switch status / 100 {
	case 2, 3, 4, 5:
		class = apiStatusClasses[status/100-2]
	}
	m.apiCalls[class].Update(took.Seconds())
}

func (m *serviceMetrics) apiRetry() {
	if m != nil {
		m.apiRetries.Inc()
	}
}

func (m *serviceMetrics) logLinesSuppressed(n int) {
	if m != nil {
		m.suppressedLogs.Add(n)
	}
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
