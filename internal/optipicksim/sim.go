// Package optipicksim is a development tool: a local stand-in for the
// OptiPick API and for Svix's delivery of OptiPick's webhooks, so that the
// receiver can be run, demonstrated and tested offline. It is not OptiPick:
// its optimizer is a plain heuristic, and it keeps results in memory.
//
// It serves POST /optimize/{cluster|route} (synchronous or not) and
// GET /optimize/{kind}/{request_id} in OptiPick's shapes, and delivers a
// Svix-signed {"request_id": ...} for every asynchronous optimization,
// retrying on Svix's schedule (scaled by Config.TimeScale).
package optipicksim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// RetrySchedule is Svix's: the waits before each attempt after the first.
var RetrySchedule = []time.Duration{5 * time.Second, 5 * time.Minute, 30 * time.Minute, 2 * time.Hour, 5 * time.Hour, 10 * time.Hour, 10 * time.Hour}

// deliveryTimeout is Svix's: an answer after it counts as a failure.
const deliveryTimeout = 15 * time.Second

// Receiver is a webhook endpoint: where to deliver one kind, and the
// endpoint's signing secret.
type Receiver struct {
	URL    string // empty: do not deliver this kind
	Secret string // whsec_...
}

// Config configures a Simulator.
type Config struct {
	APIKey        string        // the X-API-KEY it accepts
	Cluster       Receiver      // where cluster.optimized goes
	Route         Receiver      // where route.optimized goes
	OptimizeDelay time.Duration // how long an optimization "takes"
	TimeScale     float64       // multiplies RetrySchedule; 0 means 1
	Logger        *slog.Logger  // nil: no logs
}

// Attempt is one delivery attempt, as the Svix dashboard would list it.
type Attempt struct {
	MsgID     string
	Kind      string
	RequestID string
	Number    int    // 1 for the first attempt
	Status    int    // 0 when there was no answer
	Err       string // why there was no answer
	Latency   time.Duration
	Aborted   bool // the receiver answered webhook-delivery: abort-message
}

// Succeeded reports whether Svix would count the attempt as delivered.
func (a Attempt) Succeeded() bool { return a.Status >= 200 && a.Status < 300 }

// Simulator is the stand-in. Create it with New, serve Handler, and Close
// it to stop pending deliveries.
type Simulator struct {
	cfg    Config
	log    *slog.Logger
	client *http.Client
	signer map[string]*svix.Webhook // by kind

	ctx     context.Context // ends at Close
	cancel  context.CancelFunc
	pending sync.WaitGroup

	started int64 // nanoseconds; makes ids unique across restarts
	ids     atomic.Uint64

	mu       sync.Mutex
	results  map[string][]byte // kind/request_id → result JSON
	attempts []Attempt
}

// New checks cfg and returns a Simulator.
func New(cfg Config) (*Simulator, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("optipicksim: an API key is required")
	}
	if cfg.TimeScale <= 0 {
		cfg.TimeScale = 1
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Simulator{
		cfg: cfg,
		log: log,
		client: &http.Client{
			Timeout: deliveryTimeout,
			// Svix counts a redirect as a failure; it does not follow it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		signer:  map[string]*svix.Webhook{},
		results: map[string][]byte{},
		started: time.Now().UnixNano(),
	}
	for kind, r := range map[string]Receiver{"cluster": cfg.Cluster, "route": cfg.Route} {
		if r.URL == "" {
			continue
		}
		wh, err := svix.NewWebhook(r.Secret)
		if err != nil || r.Secret == "" {
			return nil, fmt.Errorf("optipicksim: the %s receiver needs a whsec_ signing secret", kind)
		}
		s.signer[kind] = wh
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// Close stops pending optimizations and deliveries and waits for them.
func (s *Simulator) Close() {
	s.cancel()
	s.pending.Wait()
}

// Attempts lists every delivery attempt so far, oldest first.
func (s *Simulator) Attempts() []Attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Attempt(nil), s.attempts...)
}

// Handler serves the simulated OptiPick API.
func (s *Simulator) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /optimize/{kind}", s.handleOptimize)
	mux.HandleFunc("GET /optimize/{kind}/{request_id}", s.handleResult)
	return s.requireAPIKey(mux)
}

// requireAPIKey answers as OptiPick's API gateway does to a missing or
// wrong key.
func (s *Simulator) requireAPIKey(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-API-KEY") != s.cfg.APIKey {
			writeJSON(w, http.StatusForbidden, []byte(`{"message":"Forbidden"}`))
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Simulator) handleOptimize(w http.ResponseWriter, r *http.Request) {
	kind := r.PathValue("kind")
	if kind != "cluster" && kind != "route" {
		writeJSON(w, http.StatusNotFound, []byte(`{"detail":"Not Found"}`))
		return
	}
	synchronous := true
	if v := r.URL.Query().Get("synchronous"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeJSON(w, http.StatusUnprocessableEntity, detail("query", "synchronous", "value could not be parsed to a boolean"))
			return
		}
		synchronous = b
	}
	var req OptimizeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 10<<20)).Decode(&req); err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, detail("body", "", "invalid JSON: "+err.Error()))
		return
	}
	if req.SiteName == "" {
		writeJSON(w, http.StatusUnprocessableEntity, detail("body", "site_name", "field required"))
		return
	}
	if len(req.Picks) == 0 {
		writeJSON(w, http.StatusUnprocessableEntity, detail("body", "picks", "field required"))
		return
	}

	requestID := s.newObjectID()
	if synchronous {
		result := s.optimize(kind, requestID, req, 0)
		s.store(kind, requestID, result)
		writeJSON(w, http.StatusOK, result)
		return
	}
	s.log.Info("optimization accepted", "kind", kind, "request_id", requestID, "picks", len(req.Picks))
	s.pending.Add(1)
	go func() {
		defer s.pending.Done()
		if !s.sleep(s.cfg.OptimizeDelay) {
			return
		}
		s.store(kind, requestID, s.optimize(kind, requestID, req, s.cfg.OptimizeDelay))
		s.deliver(kind, requestID)
	}()
	writeJSON(w, http.StatusOK, []byte(`{"request_id":"`+requestID+`"}`))
}

func (s *Simulator) handleResult(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	result, ok := s.results[r.PathValue("kind")+"/"+r.PathValue("request_id")]
	s.mu.Unlock()
	if !ok {
		writeJSON(w, http.StatusNotFound, []byte(`{"detail":"Not Found"}`))
		return
	}
	writeJSON(w, http.StatusOK, result)
}

func (s *Simulator) store(kind, requestID string, result []byte) {
	s.mu.Lock()
	s.results[kind+"/"+requestID] = result
	s.mu.Unlock()
}

// optimize computes the result of a request, in OptiPick's shape.
func (s *Simulator) optimize(kind, requestID string, req OptimizeRequest, took time.Duration) []byte {
	stops, invalid := validate(req.Picks)
	result := map[string]any{
		"request_id":       requestID,
		"site_name":        req.SiteName,
		"wave_id":          req.WaveID,
		"timestamp":        time.Now().UTC().Format("2006-01-02T15:04:05.000000"), // OptiPick's: no zone
		"computation_time": took.Seconds(),
		"error":            nil,
		"type":             map[string]string{"cluster": "CLUSTER", "route": "ROUTE"}[kind],
		"invalid_picks":    append([]string{}, invalid...),
		"unit":             "cm",
		"extra":            map[string]any{},
	}
	if len(stops) == 0 {
		result["error"] = "no valid picks: every pick needs a pick_id and a location_id"
	}
	switch kind {
	case "cluster":
		asisLists, optimalLists := clusterStops(stops)
		result["_id"] = s.newObjectID()
		result["ownerId"] = "000000000000000000000000"
		result["site_id"] = req.SiteName
		result["purpose"] = req.Purpose
		result["visualization_url"] = ""
		result["asis_clusters"] = nonNil(asisLists)
		result["optimal_clusters"] = nonNil(optimalLists)
		result["asis_distance"] = totalDistance(asisLists)
		result["optimal_distance"] = totalDistance(optimalLists)
	case "route":
		picks, asisDistance, optimalDistance := routeStops(stops)
		result["route_id"] = s.newObjectID()
		result["picks"] = nonNil(picks)
		result["asis_distance"] = asisDistance
		result["optimal_distance"] = optimalDistance
	}
	out, _ := json.Marshal(result) // maps of plain values always marshal
	return out
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// deliver sends the webhook as Svix would: one message id, a new timestamp
// and signature for each attempt, success only for a 2xx within 15 s,
// retries on RetrySchedule, and no retry after abort-message.
func (s *Simulator) deliver(kind, requestID string) {
	receiver := s.cfg.Cluster
	if kind == "route" {
		receiver = s.cfg.Route
	}
	if receiver.URL == "" {
		s.log.Info("optimization finished; no receiver configured for this kind", "kind", kind, "request_id", requestID)
		return
	}
	_, msgID := s.newID()
	body := []byte(`{"request_id":"` + requestID + `"}`)
	for number := 1; number <= len(RetrySchedule)+1; number++ {
		if number > 1 && !s.sleep(time.Duration(float64(RetrySchedule[number-2])*s.cfg.TimeScale)) {
			return
		}
		attempt := s.attempt(receiver.URL, s.signer[kind], msgID, body)
		attempt.Kind, attempt.RequestID, attempt.Number = kind, requestID, number
		s.mu.Lock()
		s.attempts = append(s.attempts, attempt)
		s.mu.Unlock()
		attrs := []any{"kind", kind, "request_id", requestID, "svix_id", msgID, "attempt", number,
			"status", attempt.Status, "latency", attempt.Latency.Round(time.Microsecond).String()}
		if attempt.Err != "" {
			attrs = append(attrs, "err", attempt.Err)
		}
		s.log.Info("delivery attempt", attrs...)
		switch {
		case attempt.Succeeded():
			return
		case attempt.Aborted:
			s.log.Warn("receiver asked not to retry (abort-message)", "svix_id", msgID)
			return
		}
	}
	s.log.Warn("delivery failed after every retry", "kind", kind, "request_id", requestID, "svix_id", msgID)
}

func (s *Simulator) attempt(url string, signer *svix.Webhook, msgID string, body []byte) Attempt {
	now := time.Now()
	signature, err := signer.Sign(msgID, now, body)
	if err != nil {
		return Attempt{MsgID: msgID, Err: err.Error()}
	}
	ctx, cancel := context.WithTimeout(s.ctx, deliveryTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Attempt{MsgID: msgID, Err: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "optipick-sim (Svix-style delivery)")
	req.Header.Set("svix-id", msgID)
	req.Header.Set("svix-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("svix-signature", signature)
	resp, err := s.client.Do(req)
	latency := time.Since(now)
	if err != nil {
		return Attempt{MsgID: msgID, Err: err.Error(), Latency: latency}
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return Attempt{MsgID: msgID, Status: resp.StatusCode, Latency: latency,
		Aborted: resp.Header.Get("webhook-delivery") == "abort-message"}
}

// sleep waits d, or less if the simulator closes; it reports whether the
// whole wait passed.
func (s *Simulator) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-s.ctx.Done():
		return false
	}
}

func writeJSON(w http.ResponseWriter, status int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

// detail is a FastAPI-style validation error, as OptiPick answers 422.
func detail(where, field, msg string) []byte {
	out, _ := json.Marshal(map[string]any{"detail": []map[string]any{{"loc": []string{where, field}, "msg": msg, "type": "value_error"}}})
	return out
}

// newID is unique within this process and across restarts, with no
// randomness: the start time and a counter, as MongoDB's ObjectIds are.
func (s *Simulator) newID() (objectID, msgID string) {
	n := s.ids.Add(1)
	objectID = fmt.Sprintf("%08x%06x%010x", uint32(time.Now().Unix()), uint32(s.started)&0xffffff, n)
	return objectID, fmt.Sprintf("msg_sim%x%06d", s.started, n)
}

// newObjectID is a 24-hex id, as OptiPick's.
func (s *Simulator) newObjectID() string {
	id, _ := s.newID()
	return id
}

// NewSecret is a fresh random signing secret in Svix's form.
func NewSecret() string {
	key := make([]byte, 24)
	rand.Read(key)
	return "whsec_" + base64.StdEncoding.EncodeToString(key)
}
