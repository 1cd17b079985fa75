// Package optipicksim is a development tool: a local stand-in for the
// OptiPick API and for Svix's delivery of OptiPick's webhooks, so that the
// receiver can be run, demonstrated and tested offline. It is not OptiPick:
// its optimizer is a plain heuristic, and it keeps results in memory.
//
// It serves POST /optimize/{cluster|route} (synchronous or not) and
// GET /optimize/{kind}/{request_id} in OptiPick's shapes, and delivers a
// Svix-signed {"request_id": ...} for every asynchronous optimization,
// retrying on Svix's schedule (scaled by Config.TimeScale, each wait at
// least Config.RetryFloor).
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

// DefaultRetryFloor is the shortest wait before a retry, whatever the time
// scale (see Config.RetryFloor). The receiver remembers a failed delivery of
// a message for 2 s (recentFor in the root dedupe.go) and answers a repeat
// within that from memory, without fetching: a retry sooner than that would
// only replay the failure, and the next real try would come a whole step of
// the schedule later (at time scale 0.1: 30 s after the first failure
// instead of 0.5 s). 2.5 s leaves half a second over the receiver's memory,
// which starts when its work ends, before it answers. Svix's own first retry
// comes after 5 s, so at time scale 1 the floor changes nothing.
const DefaultRetryFloor = 2500 * time.Millisecond

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
	RetryFloor    time.Duration // the shortest retry wait; 0 means DefaultRetryFloor, negative no floor
	APIFault      APIFault      // how GET /optimize/{kind}/{id} fails at first; see SetAPIFault
	Logger        *slog.Logger  // nil: no logs
}

// APIFault makes the simulated API fail every GET of a result, as an
// outage of OptiPick's API would: answer Status (500, 503 or 429, with
// OptiPick's gateway bodies; 429 adds Retry-After: 1), or Hang without
// answering until the client gives up. The zero value is no fault. It
// applies to GET /optimize/{kind}/{request_id} only: submitting works on.
type APIFault struct {
	Status int  // 500, 503 or 429
	Hang   bool // answer nothing until the client gives up (at most maxHang)
}

// maxHang bounds how long a hung GET holds its request.
const maxHang = time.Minute

// ParseAPIFault reads "500", "503", "429", "hang", or "" or "none" (no fault).
func ParseAPIFault(s string) (APIFault, error) {
	switch s {
	case "", "none":
		return APIFault{}, nil
	case "hang":
		return APIFault{Hang: true}, nil
	case "500", "503", "429":
		status, _ := strconv.Atoi(s)
		return APIFault{Status: status}, nil
	}
	return APIFault{}, fmt.Errorf("API fault %q: want 500, 503, 429, hang or none", s)
}

// String is the form ParseAPIFault reads.
func (f APIFault) String() string {
	switch {
	case f.Hang:
		return "hang"
	case f.Status != 0:
		return strconv.Itoa(f.Status)
	}
	return "none"
}

func (f APIFault) valid() bool {
	_, err := ParseAPIFault(f.String())
	return err == nil && !(f.Hang && f.Status != 0)
}

// Attempt is one delivery attempt, as the Svix dashboard would list it.
type Attempt struct {
	MsgID     string
	Kind      string
	RequestID string
	Number    int       // 1 for the first attempt
	At        time.Time // when it was sent
	Status    int       // 0 when there was no answer
	Err       string    // why there was no answer
	Latency   time.Duration
	Aborted   bool // the receiver answered webhook-delivery: abort-message
	Resend    bool // a manual resend (Resend), not one of the scheduled attempts
}

// Succeeded reports whether Svix would count the attempt as delivered.
func (a Attempt) Succeeded() bool { return a.Status >= 200 && a.Status < 300 }

// Simulator is the stand-in. Create it with New, serve Handler, and Close
// it to stop pending deliveries.
type Simulator struct {
	cfg    Config
	delays []time.Duration // the wait before each retry: RetryDelays
	log    *slog.Logger
	client *http.Client
	signer map[string]*svix.Webhook // by kind

	ctx     context.Context // ends at Close
	cancel  context.CancelFunc
	pending sync.WaitGroup

	started int64 // nanoseconds; makes ids unique across restarts
	ids     atomic.Uint64

	undelivered atomic.Int64 // messages accepted whose delivery has not ended
	faulted     atomic.Int64 // GETs answered with a fault

	mu       sync.Mutex
	results  map[string][]byte // kind/request_id → result JSON
	attempts []Attempt
	fault    APIFault
	messages map[string]message // by svix-id
	msgIDs   map[string]string  // kind/request_id → svix-id
}

// message is a webhook message, kept so that it can be resent.
type message struct {
	kind, requestID, url string
	body                 []byte
}

// New checks cfg and returns a Simulator.
func New(cfg Config) (*Simulator, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("optipicksim: an API key is required")
	}
	if cfg.TimeScale <= 0 {
		cfg.TimeScale = 1
	}
	switch {
	case cfg.RetryFloor == 0:
		cfg.RetryFloor = DefaultRetryFloor
	case cfg.RetryFloor < 0:
		cfg.RetryFloor = 0
	}
	if !cfg.APIFault.valid() {
		return nil, fmt.Errorf("optipicksim: API fault %+v: want a Status of 500, 503 or 429, or Hang", cfg.APIFault)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Simulator{
		cfg:    cfg,
		delays: RetryDelays(cfg.TimeScale, cfg.RetryFloor),
		log:    log,
		client: &http.Client{
			Timeout: deliveryTimeout,
			// Svix counts a redirect as a failure; it does not follow it.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		signer:   map[string]*svix.Webhook{},
		results:  map[string][]byte{},
		fault:    cfg.APIFault,
		messages: map[string]message{},
		msgIDs:   map[string]string{},
		started:  time.Now().UnixNano(),
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

// SetAPIFault changes how GETs of results fail from now on; the zero
// APIFault ends the outage. A GET already hanging goes on hanging.
func (s *Simulator) SetAPIFault(f APIFault) error {
	if !f.valid() {
		return fmt.Errorf("optipicksim: API fault %+v: want a Status of 500, 503 or 429, or Hang", f)
	}
	s.mu.Lock()
	s.fault = f
	s.mu.Unlock()
	s.log.Info("API fault set", "fault", f.String())
	return nil
}

// FaultedGETs counts the GETs of results answered with a fault so far.
func (s *Simulator) FaultedGETs() int64 { return s.faulted.Load() }

// Pending counts the asynchronous optimizations whose webhook has not yet
// been delivered, aborted or given up on (as the Svix dashboard's
// "pending" and "sending" messages). Resends are not counted.
func (s *Simulator) Pending() int { return int(s.undelivered.Load()) }

// MessageID is the svix-id of the webhook message of an optimization,
// once its first delivery attempt has been made.
func (s *Simulator) MessageID(kind, requestID string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.msgIDs[kind+"/"+requestID]
	return id, ok
}

// Resend delivers a message once more, as the Svix dashboard's "Resend"
// does: the same svix-id and body, a fresh timestamp and signature, one
// attempt, not retried. It is recorded among Attempts with Resend set.
func (s *Simulator) Resend(msgID string) (Attempt, error) {
	s.mu.Lock()
	m, ok := s.messages[msgID]
	s.mu.Unlock()
	if !ok {
		return Attempt{}, fmt.Errorf("optipicksim: no message %q", msgID)
	}
	attempt := s.attempt(m.url, s.signer[m.kind], msgID, m.body)
	attempt.Kind, attempt.RequestID, attempt.Resend = m.kind, m.requestID, true
	s.mu.Lock()
	s.attempts = append(s.attempts, attempt)
	s.mu.Unlock()
	s.logAttempt("resend", attempt)
	return attempt, nil
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
	s.undelivered.Add(1)
	go func() {
		defer s.pending.Done()
		defer s.undelivered.Add(-1)
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
	fault := s.fault
	s.mu.Unlock()
	if fault != (APIFault{}) {
		s.faulted.Add(1)
		s.serveFault(w, r, fault)
		return
	}
	if !ok {
		writeJSON(w, http.StatusNotFound, []byte(`{"detail":"Not Found"}`))
		return
	}
	writeJSON(w, http.StatusOK, result)
}

// serveFault answers a GET during an outage, as OptiPick's API gateway
// would (the bodies are API Gateway's).
func (s *Simulator) serveFault(w http.ResponseWriter, r *http.Request, fault APIFault) {
	switch {
	case fault.Hang:
		timer := time.NewTimer(maxHang)
		defer timer.Stop()
		select {
		case <-r.Context().Done():
			return
		case <-s.ctx.Done():
		case <-timer.C:
		}
		writeJSON(w, http.StatusGatewayTimeout, []byte(`{"message":"Endpoint request timed out"}`))
	case fault.Status == http.StatusTooManyRequests:
		w.Header().Set("Retry-After", "1")
		writeJSON(w, fault.Status, []byte(`{"message":"Too Many Requests"}`))
	case fault.Status == http.StatusServiceUnavailable:
		writeJSON(w, fault.Status, []byte(`{"message":"Service Unavailable"}`))
	default:
		writeJSON(w, fault.Status, []byte(`{"message":"Internal server error"}`))
	}
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
// retries after s.delays, and no retry after abort-message.
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
	s.mu.Lock()
	s.messages[msgID] = message{kind: kind, requestID: requestID, url: receiver.URL, body: body}
	s.msgIDs[kind+"/"+requestID] = msgID
	s.mu.Unlock()
	for number := 1; number <= len(RetrySchedule)+1; number++ {
		if number > 1 && !s.sleep(s.retryDelay(number-1)) {
			return
		}
		attempt := s.attempt(receiver.URL, s.signer[kind], msgID, body)
		attempt.Kind, attempt.RequestID, attempt.Number = kind, requestID, number
		s.mu.Lock()
		s.attempts = append(s.attempts, attempt)
		s.mu.Unlock()
		s.logAttempt("delivery attempt", attempt)
		switch {
		case attempt.Succeeded():
			return
		case attempt.Aborted:
			s.log.Warn("receiver asked not to retry (abort-message)", "svix_id", msgID)
			return
		case number <= len(RetrySchedule):
			next := s.retryDelay(number)
			shown := next
			if shown > time.Millisecond {
				shown = shown.Round(time.Millisecond)
			}
			s.log.Info("next attempt in "+shown.String(), "kind", kind, "request_id", requestID, "svix_id", msgID,
				"attempt", number+1, "at", time.Now().Add(next).Format(time.TimeOnly))
		}
	}
	s.log.Warn("delivery failed after every retry", "kind", kind, "request_id", requestID, "svix_id", msgID)
}

// retryDelay is the wait after the failed attempt number n (from 1).
func (s *Simulator) retryDelay(n int) time.Duration { return s.delays[n-1] }

// RetryDelays is the wait before each retry that this Simulator makes:
// RetrySchedule scaled by Config.TimeScale, each at least Config.RetryFloor.
func (s *Simulator) RetryDelays() []time.Duration { return append([]time.Duration(nil), s.delays...) }

// RetryDelays is RetrySchedule multiplied by scale, each wait at least
// floor (0 or less: no floor).
func RetryDelays(scale float64, floor time.Duration) []time.Duration {
	out := make([]time.Duration, len(RetrySchedule))
	for i, d := range RetrySchedule {
		out[i] = max(time.Duration(float64(d)*scale), floor)
	}
	return out
}

func (s *Simulator) logAttempt(msg string, a Attempt) {
	attrs := []any{"kind", a.Kind, "request_id", a.RequestID, "svix_id", a.MsgID}
	if !a.Resend {
		attrs = append(attrs, "attempt", a.Number)
	}
	attrs = append(attrs, "status", a.Status, "latency", a.Latency.Round(time.Microsecond).String())
	if a.Err != "" {
		attrs = append(attrs, "err", a.Err)
	}
	s.log.Info(msg, attrs...)
}

func (s *Simulator) attempt(url string, signer *svix.Webhook, msgID string, body []byte) Attempt {
	now := time.Now()
	signature, err := signer.Sign(msgID, now, body)
	if err != nil {
		return Attempt{MsgID: msgID, At: now, Err: err.Error()}
	}
	ctx, cancel := context.WithTimeout(s.ctx, deliveryTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Attempt{MsgID: msgID, At: now, Err: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "optipick-sim (Svix-style delivery)")
	req.Header.Set("svix-id", msgID)
	req.Header.Set("svix-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("svix-signature", signature)
	resp, err := s.client.Do(req)
	latency := time.Since(now)
	if err != nil {
		return Attempt{MsgID: msgID, At: now, Err: err.Error(), Latency: latency}
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return Attempt{MsgID: msgID, At: now, Status: resp.StatusCode, Latency: latency,
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
