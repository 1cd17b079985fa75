package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	svix "github.com/svix/svix-webhooks/go"
)

const (
	// deliveryDeadline bounds all the work for one delivery: Svix counts an
	// answer after 15 s as a failure; this leaves room for the network.
	deliveryDeadline = 10 * time.Second
	// OptiPick's bodies are about 40 bytes; the Svix library copies a body
	// three times to verify it.
	maxBodyBytes = 64 << 10
	// What the Svix library loops over: one "v1,<sig>" per secret the
	// sender uses, ids of about 30 bytes, and an HMAC of each rejected body
	// per secret (two endpoints, each rotating, need four).
	maxSignatureHeaderBytes, maxSignatures, maxMessageIDBytes, maxSecrets = 1 << 10, 10, 256, 8
	// Rejections and repeats (anyone can make them) are logged up to
	// rejectLogBurst lines per rejectLogInterval; the rest are counted.
	rejectLogBurst, rejectLogInterval = 20, 10 * time.Second
)

// delivery is one verified webhook delivery.
type delivery struct {
	Kind      kind   // learnt from the URL it was delivered to
	MessageID string // svix-id: the same across Svix's retries and resends
	RequestID string // the optimization to fetch
}

// processFunc does what the service is for with a fetched result. The
// delivery is acknowledged (2xx) only when it returns nil; an error answers
// 5xx and Svix delivers the message again, so whatever it changes must be
// idempotent, for example keyed on d.MessageID or d.RequestID.
type processFunc func(ctx context.Context, d delivery, res *optimization) error

// outcome is how a delivery ended, for the metrics.
type outcome string

const (
	outcomeProcessed        outcome = "processed"         // 200
	outcomeDuplicate        outcome = "duplicate"         // 200, handled by another delivery of the message
	outcomeOtherKind        outcome = "other_kind"        // 409
	outcomeInvalidSignature outcome = "invalid_signature" // 401
	outcomeTooLarge         outcome = "too_large"         // 413
	outcomeUnreadableBody   outcome = "unreadable_body"   // 400
	outcomeBadRequest       outcome = "bad_request"       // 400 + abort: genuine, but no valid request_id
	outcomeFetchFailed      outcome = "fetch_failed"      // 5xx
	outcomeProcessFailed    outcome = "process_failed"    // 5xx: the processFunc failed
)

// recorder counts what the service does (metrics.go has one).
type recorder interface {
	started(k kind) (ended func(outcome))     // a delivery, until it ends
	apiCalled(status int, took time.Duration) // status 0: no answer
}

// services are what the handlers use. rec and ready may be nil.
type services struct {
	logger   *slog.Logger
	verifier verifier
	fetch    func(ctx context.Context, k kind, requestID string) (*optimization, error)
	process  processFunc
	seen     *dedupe
	rec      recorder
	ready    func() bool // false once a shutdown starts
}

// newServer is the whole service as one http.Handler: it registers every
// route. Answers are plain ASCII, which net/http names text/plain.
func newServer(s services) http.Handler {
	rejected := &rejectLog{logger: s.logger}
	mux := http.NewServeMux()
	mux.Handle("POST /webhook/cluster", handleWebhook(s, rejected, kindCluster))
	mux.Handle("POST /webhook/route", handleWebhook(s, rejected, kindRoute))
	mux.Handle("POST /webhook", handleWebhook(s, rejected, kindCluster)) // OptiPick's original example
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.ready != nil && !s.ready() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	// 404 where ServeMux would redirect to a clean path (/webhook//route):
	// Svix counts a redirect as a failure.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || r.URL.Path != path.Clean(r.URL.Path) {
			http.NotFound(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// handleWebhook handles deliveries of kind k: it reads and verifies one,
// then fetches and processes its optimization once per message, and
// answers 200 only when that work is done.
func handleWebhook(s services, rejected *rejectLog, k kind) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// All the work for one delivery has deliveryDeadline from now. A
		// duplicate waiting for the message's work leaves when its sender
		// goes away (a shed replay holds nothing); the work itself is shared,
		// so it ends at its deadline, not when its sender goes away.
		ctx, cancel := context.WithTimeout(r.Context(), deliveryDeadline)
		defer cancel()
		o := outcomeProcessFailed // if something panics before the outcome is known
		if s.rec != nil {
			ended := s.rec.started(k)
			defer func() { ended(o) }()
		}

		d, rej := readDelivery(w, r, k, s.verifier)
		if rej != nil {
			o = rej.outcome
			id, _ := signatureHeaders(r.Header)
			attrs := []any{"kind", k, "svix_id", logSafe(id), "status", rej.status, "reason", rej.reason}
			if rej.outcome == outcomeBadRequest {
				// Genuine but unusable: retrying cannot fix it. An error: if
				// OptiPick changed its body, every event would end here. Rate-
				// limited too: a capture of one can be replayed.
				w.Header().Set("webhook-delivery", "abort-message")
				rejected.log(slog.LevelError, "rejected signed delivery; asked Svix not to retry", attrs...)
			} else {
				rejected.warn("rejected delivery", attrs...)
			}
			http.Error(w, rej.answer, rej.status)
			return
		}
		shared, err := s.seen.do(ctx, d.Kind, d.MessageID, func(context.Context) error {
			// Detached from the sender, with the delivery's deadline: others
			// may wait for this work, and Svix's retry finds it done.
			deadline, _ := ctx.Deadline()
			ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
			defer cancel()
			// This connection carries a message's work: the connection
			// limiter must not shed it before its answer is written. Repeats
			// (a replayed capture) get no such protection.
			if !protectConnection(r) {
				return errConnectionClosing
			}
			result, err := s.fetch(ctx, d.Kind, d.RequestID)
			if err == nil {
				if err = s.process(ctx, d, result); err != nil {
					err = fmt.Errorf("%w: %w", errProcessing, err)
				}
			}
			return err
		})
		if err == nil && !shared {
			o = outcomeProcessed
			io.WriteString(w, "fetched\n")
			return
		}
		attrs := []any{"kind", d.Kind, "svix_id", logSafe(d.MessageID), "request_id", d.RequestID}
		switch o = outcomeFetchFailed; {
		case errors.Is(err, errOtherKind): // a capture replayed to the other path
			o = outcomeOtherKind
			rejected.warn("rejected delivery of a message verified for the other kind", append(attrs, "status", http.StatusConflict)...)
			http.Error(w, "this message was delivered for the other kind", http.StatusConflict)
		case err != nil:
			if errors.Is(err, errProcessing) || errors.Is(err, errWorkDidNotReturn) {
				o = outcomeProcessFailed
			}
			attrs = append(attrs, "status", statusFor(err), "err", err)
			if shared { // logged where it happened: repeats are rate-limited
				rejected.warn("delivery not handled (a duplicate failed moments ago); Svix will retry", attrs...)
			} else {
				s.logger.Error("delivery not handled; Svix will retry", attrs...)
			}
			http.Error(w, "not handled yet; retry later", statusFor(err))
		default: // rate-limited too: a replayed capture lands here
			o = outcomeDuplicate
			rejected.log(slog.LevelInfo, "delivery already handled; not fetching again", attrs...)
			io.WriteString(w, "already handled\n")
		}
	})
}

// protectKey is where a request's context holds, from the connection
// limiter, a func that keeps the request's connection from being closed
// for a newcomer; it reports false when the connection is already closing.
type protectKey struct{}

// protectConnection keeps r's connection open until r's answer is written.
// It reports false when the connection is being closed: the answer could
// not be written, so no work should start.
func protectConnection(r *http.Request) bool {
	protect, ok := r.Context().Value(protectKey{}).(func() bool)
	return !ok || protect()
}

// errConnectionClosing: the delivery's connection was closed for a
// newcomer before its work started; Svix retries.
var errConnectionClosing = unavailableError("the connection was closed for a newcomer before the work started")

// errProcessing marks a processFunc's error, told apart from a failed fetch.
var errProcessing = errors.New("processing the result")

// rejection is why a delivery was refused: its status, what the sender is
// told (nothing of ours), and what the log says.
type rejection struct {
	status         int
	outcome        outcome
	answer, reason string
}

var tooLarge = &rejection{http.StatusRequestEntityTooLarge, outcomeTooLarge, "body too large", fmt.Sprintf("body over %d bytes", maxBodyBytes)}

// readDelivery reads and verifies one delivery of kind k, in a fixed order:
// cap the body, read it, verify its raw bytes, then decode it.
func readDelivery(w http.ResponseWriter, r *http.Request, k kind, v verifier) (delivery, *rejection) {
	if r.ContentLength > maxBodyBytes {
		return delivery{}, tooLarge
	}
	// The buffer grows with what arrives, never with what Content-Length declares.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
		return delivery{}, tooLarge
	} else if err != nil {
		return delivery{}, &rejection{http.StatusBadRequest, outcomeUnreadableBody, "body could not be read", "body could not be read: " + err.Error()}
	}
	if err := v.verify(body, r.Header); err != nil {
		return delivery{}, &rejection{http.StatusUnauthorized, outcomeInvalidSignature, "invalid signature", "signature not verified: " + err.Error()}
	}
	var payload struct {
		RequestID string `json:"request_id"`
	}
	// encoding/json/v2 semantics: names match exactly, a duplicate is an error.
	if err := jsonv2.Unmarshal(body, &payload); err != nil || !validRequestID(payload.RequestID) {
		return delivery{}, &rejection{http.StatusBadRequest, outcomeBadRequest, "body must be JSON with a request_id of 1 to 128 letters, digits, _ or -",
			fmt.Sprintf("body (%d bytes) is not JSON with a valid request_id", len(body))}
	}
	id, _ := signatureHeaders(r.Header)
	return delivery{Kind: k, MessageID: id, RequestID: payload.RequestID}, nil
}

// validRequestID accepts 1 to 128 of [A-Za-z0-9_-]: OptiPick's ids are
// 24-hex ObjectIds, and nothing else may reach a URL path.
func validRequestID(id string) bool {
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return len(id) > 0 && len(id) <= 128
}

// statusFor is the 5xx that makes Svix retry a failure: the error's own
// HTTPStatus() when it is a 5xx, 504 for a passed deadline, else 502.
func statusFor(err error) int {
	var withStatus interface{ HTTPStatus() int }
	switch {
	case errors.As(err, &withStatus) && withStatus.HTTPStatus() >= 500 && withStatus.HTTPStatus() <= 599:
		return withStatus.HTTPStatus()
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// signatureHeaders are the message id and signatures the Svix library
// verifies: svix-* when all three are there, else webhook-*.
func signatureHeaders(h http.Header) (id, signature string) {
	if id, signature = h.Get("Svix-Id"), h.Get("Svix-Signature"); id == "" || signature == "" || h.Get("Svix-Timestamp") == "" {
		id, signature = h.Get("Webhook-Id"), h.Get("Webhook-Signature")
	}
	return id, signature
}

// logSafe is s cut to 128 bytes, quoted with escapes unless it is
// printable ASCII: no control or bidirectional-text character a client
// sent reaches a log line.
func logSafe(s string) string {
	s = s[:min(len(s), 128)]
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return strconv.QuoteToASCII(s)
		}
	}
	return s
}

// verifier holds one Svix verifier per configured signing secret.
type verifier []*svix.Webhook

// newVerifier reads WEBHOOK_SECRET: whsec_ secrets separated by spaces or
// commas. Its errors never repeat a secret (the library's do).
func newVerifier(secrets string) (v verifier, err error) {
	entries := strings.Fields(strings.ReplaceAll(secrets, ",", " "))
	if len(entries) == 0 {
		return nil, errors.New("required: the endpoint's signing secret (whsec_...) from the OptiPick dashboard")
	} else if len(entries) > maxSecrets {
		return nil, fmt.Errorf("%d secrets; at most %d (one per endpoint, two during a rotation)", len(entries), maxSecrets)
	}
	for i, secret := range entries {
		wh, err := svix.NewWebhook(secret)
		switch nth := fmt.Sprintf("secret %d of %d", i+1, len(entries)); {
		case strings.ContainsAny(secret, `#"'`):
			return nil, errors.New(nth + " holds # or a quote: put comments on their own line, and no quotes (docker/podman --env-file keep both)")
		case !strings.HasPrefix(secret, "whsec_"):
			return nil, errors.New(nth + " does not start with whsec_")
		case err != nil:
			return nil, errors.New(nth + " is not whsec_ followed by standard base64")
		}
		v = append(v, wh)
	}
	return v, nil
}

// verify reports whether any of the secrets signed body, with the library's
// reason (never a secret) when none did. Headers too long to come from Svix
// are refused before the library loops over them.
func (v verifier) verify(body []byte, header http.Header) (err error) {
	id, signature := signatureHeaders(header)
	if len(id) > maxMessageIDBytes || len(signature) > maxSignatureHeaderBytes || strings.Count(signature, " ") >= maxSignatures {
		return fmt.Errorf("id over %d bytes, or signatures over %d bytes or %d entries", maxMessageIDBytes, maxSignatureHeaderBytes, maxSignatures)
	}
	for _, wh := range v {
		if err = wh.Verify(body, header); err == nil {
			return nil
		}
	}
	return err
}

// logSummary is the default processFunc: one summary line per fetched
// optimization, and the whole JSON at debug level (when it was kept).
func logSummary(logger *slog.Logger) processFunc {
	return func(ctx context.Context, d delivery, res *optimization) error {
		var buf [12]slog.Attr // slog.Attr values: no boxing on the hot path
		attrs := append(buf[:0], slog.String("kind", string(d.Kind)), slog.String("svix_id", logSafe(d.MessageID)),
			slog.String("request_id", d.RequestID), slog.String("site_name", res.SiteName))
		if res.AsisDistance != 0 || res.OptimalDistance != 0 {
			attrs = append(attrs, number("asis_distance", res.AsisDistance), number("optimal_distance", res.OptimalDistance))
			// Guarded so that no NaN or Inf reaches a JSON log line.
			if saving := (res.AsisDistance - res.OptimalDistance) / res.AsisDistance * 100; res.AsisDistance > 0 && !math.IsInf(saving, 0) {
				attrs = append(attrs, number("saving_pct", math.Round(saving*10)/10))
			}
		}
		if d.Kind == kindCluster {
			attrs = append(attrs, slog.Int("clusters", int(res.OptimalClusters)))
		} else {
			attrs = append(attrs, slog.Int("picks", int(res.Picks)))
		}
		attrs = append(attrs, number("computation_time_s", res.ComputationTime))
		if res.Error != "" {
			logger.LogAttrs(ctx, slog.LevelWarn, "optimization fetched, but OptiPick reports that it failed", append(attrs, slog.String("optimization_error", string(res.Error)))...)
		} else {
			logger.LogAttrs(ctx, slog.LevelInfo, "optimization fetched", attrs...)
		}
		if res.Raw != nil && logger.Enabled(ctx, slog.LevelDebug) {
			logger.DebugContext(ctx, "optimization result", "kind", d.Kind, "request_id", d.RequestID, "json", json.RawMessage(res.Raw))
		}
		return nil
	}
}

// number is f as a log attribute: a whole number as an int64, which slog
// formats far cheaper than a float64 and prints the same (in full in text).
func number(key string, f float64) slog.Attr {
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return slog.Int64(key, int64(f))
	}
	return slog.Float64(key, f)
}

// rejectLog bounds the log lines that clients (or replays) can cause: the first
// rejectLogBurst of every rejectLogInterval are written, the rest counted,
// and the count written when the interval ends.
type rejectLog struct {
	logger              *slog.Logger
	mu                  sync.Mutex
	windowEnd           time.Time
	written, notWritten int
}

func (l *rejectLog) warn(msg string, args ...any) { l.log(slog.LevelWarn, msg, args...) }

func (l *rejectLog) log(level slog.Level, msg string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); !now.Before(l.windowEnd) {
		l.windowEnd, l.written = now.Add(rejectLogInterval), 0
	}
	if l.written++; l.written <= rejectLogBurst {
		l.logger.Log(context.Background(), level, msg, args...)
	} else if l.notWritten++; l.notWritten == 1 {
		time.AfterFunc(time.Until(l.windowEnd), func() {
			l.mu.Lock()
			n := l.notWritten
			l.notWritten = 0
			l.mu.Unlock()
			l.logger.Warn("rejected or repeated deliveries not logged, over the log rate limit", "count", n,
				"limit", fmt.Sprintf("%d per %v", rejectLogBurst, rejectLogInterval))
		})
	}
}
