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
	// deliveryDeadline bounds all the work for one delivery (verification,
	// API calls and their retries, processing the result). Svix counts an
	// answer after 15 s as a failure: this leaves room for the network.
	deliveryDeadline = 10 * time.Second

	// maxBodyBytes caps a delivery's body. OptiPick's bodies are about 40
	// bytes ({"request_id": "…"}); 64 KiB leaves them 1,000 times that, while
	// the Svix library's three copies of a body stay small.
	maxBodyBytes = 64 << 10

	// A signature header holds one "v1,<base64>" entry per signing secret
	// the sender uses (two during a rotation). Anything much longer is junk
	// that the library would otherwise split and compare entry by entry.
	maxSignatureHeaderBytes = 1 << 10
	maxSignatures           = 10

	// maxMessageIDBytes caps svix-id: Svix's are about 30 bytes, and the id
	// is hashed, remembered and logged.
	maxMessageIDBytes = 256

	// maxSecrets bounds WEBHOOK_SECRET: each secret costs one HMAC of every
	// rejected body. Two endpoints, each during a rotation, need four.
	maxSecrets = 8

	// Rejected deliveries (anyone on the internet can make them) are logged
	// in full up to rejectLogBurst lines per rejectLogInterval; the rest are
	// counted, and the count is logged when the interval ends.
	rejectLogBurst    = 20
	rejectLogInterval = 10 * time.Second
)

// delivery is one verified webhook delivery.
type delivery struct {
	Kind      kind   // learnt from the URL it was delivered to
	MessageID string // svix-id: the same across Svix's retries and resends
	RequestID string // the optimization to fetch
}

// fetchFunc fetches the finished optimization of kind k.
type fetchFunc func(ctx context.Context, k kind, requestID string) (*optimization, error)

// processFunc does what the service is for with a fetched result. The
// delivery is acknowledged (2xx) only when it returns nil; an error answers
// 5xx, is not remembered, and Svix delivers the message again. Since Svix
// delivers at least once, whatever it changes must be idempotent, for
// example keyed on d.MessageID or d.RequestID.
type processFunc func(ctx context.Context, d delivery, res *optimization) error

// newServer is the whole service as one http.Handler: it registers every
// route. m may be nil (no metrics); ready may be nil (always ready).
func newServer(logger *slog.Logger, v verifier, fetch fetchFunc, process processFunc, seen *dedupe, m *serviceMetrics, ready func() bool) http.Handler {
	rejected := &rejectLog{logger: logger, suppressed: m.logLinesSuppressed}
	mux := http.NewServeMux()
	mux.Handle("POST /webhook/cluster", handleWebhook(logger, rejected, m, kindCluster, v, fetch, process, seen))
	mux.Handle("POST /webhook/route", handleWebhook(logger, rejected, m, kindRoute, v, fetch, process, seen))
	// The path of OptiPick's original example, which only knew clusters.
	mux.Handle("POST /webhook", handleWebhook(logger, rejected, m, kindCluster, v, fetch, process, seen))
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(ready))
	return rejectUncleanPaths(mux)
}

// rejectUncleanPaths answers 404 where ServeMux would redirect to a cleaned
// path (such as /webhook//route): Svix counts a redirect as a failure.
func rejectUncleanPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || r.URL.Path != path.Clean(r.URL.Path) {
			http.NotFound(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// handleHealthz is liveness: the process serves.
func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeText(w, "ok\n")
	})
}

// handleReadyz is readiness: 503 from the moment a shutdown starts, so that
// a load balancer stops sending before connections close.
func handleReadyz(ready func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ready != nil && !ready() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		writeText(w, "ready\n")
	})
}

// handleWebhook handles deliveries of kind k: it reads and verifies one
// (readDelivery), fetches its optimization and processes it, once per
// message. It answers 2xx only when that work is done.
func handleWebhook(logger *slog.Logger, rejected *rejectLog, m *serviceMetrics, k kind, v verifier, fetch fetchFunc, process processFunc, seen *dedupe) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The work for a delivery is shared with its duplicates (dedupe),
		// so it ends at its deadline, not when this sender goes away: a
		// sender that hangs up holds its handler (and its connection's
		// slot) until then, at most deliveryDeadline. Only verified
		// deliveries get that far.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), deliveryDeadline)
		defer cancel()
		// Set as the delivery goes; a panic (net/http recovers it) counts
		// as a failed processing.
		o := outcomeProcessFailed
		defer func(ended func(outcome)) { ended(o) }(m.started(k))

		d, rej := readDelivery(w, r, k, v)
		if rej != nil {
			o = rej.outcome
			attrs := []any{"kind", k, "svix_id", logSafe(messageID(r.Header)), "status", rej.status, "reason", rej.reason}
			if rej.abort {
				// Genuine but unusable: retrying cannot fix it, so ask Svix
				// to stop. An error: if OptiPick changed its body, every
				// event would end here.
				w.Header().Set("webhook-delivery", "abort-message")
				logger.Error("rejected signed delivery; asked Svix not to retry", attrs...)
			} else {
				rejected.warn("rejected delivery", attrs...)
			}
			http.Error(w, rej.answer, rej.status)
			return
		}
		// Genuine: the connection limiter must not shed this connection.
		if protect, ok := r.Context().Value(verifiedHookKey{}).(func()); ok {
			protect()
		}

		shared, err := seen.do(ctx, d.Kind, d.MessageID, func(ctx context.Context) error {
			result, err := fetch(ctx, d.Kind, d.RequestID)
			if err != nil {
				return err
			}
			if err := process(ctx, d, result); err != nil {
				return &processError{err}
			}
			return nil
		})
		switch {
		case err == nil && shared:
			o = outcomeDuplicate
		case err == nil:
			o = outcomeProcessed
		case errors.Is(err, errOtherKind):
			o = outcomeOtherKind
		case errors.As(err, new(*processError)), errors.Is(err, errWorkDidNotReturn):
			o = outcomeProcessFailed
		default:
			o = outcomeFetchFailed
		}
		attrs := []any{"kind", d.Kind, "svix_id", logSafe(d.MessageID), "request_id", d.RequestID}
		switch {
		case errors.Is(err, errOtherKind):
			// A captured delivery replayed to the other path: whoever
			// sends it, it is not fetched as this kind.
			rejected.warn("rejected delivery of a message verified for the other kind", append(attrs, "status", http.StatusConflict)...)
			http.Error(w, "this message was delivered for the other kind", http.StatusConflict)
		case err != nil:
			status := statusFor(err)
			if shared {
				// The outcome of another delivery of this message, logged
				// there: repeats (a replayed capture) are rate-limited.
				rejected.warn("delivery not handled (a duplicate's failure, moments ago); Svix will retry", append(attrs, "status", status, "err", err)...)
			} else {
				logger.Error("delivery not handled; Svix will retry", append(attrs, "status", status, "err", err)...)
			}
			http.Error(w, "not handled yet; retry later", status)
		case shared:
			logger.Info("delivery already handled; not fetching again", attrs...)
			writeText(w, "already handled\n")
		default:
			writeText(w, "fetched\n")
		}
	})
}

// writeText answers 200 with text, which must sniff as text/plain (plain
// ASCII does): net/http names its type, text/plain; charset=utf-8, without
// touching the header map. Setting it by hand makes WriteHeader copy the
// map, and under load that cost more than the sniffing (about 8,000
// instructions a delivery, measured with cachegrind).
func writeText(w http.ResponseWriter, text string) {
	io.WriteString(w, text)
}

// verifiedHookKey is where the server may put, in a request's context, a
// func to call once the request has proved to be a genuine delivery: the
// connection limiter never sheds a connection that carries one.
type verifiedHookKey struct{}

// processError is a processFunc's error, told apart from a failed fetch.
type processError struct{ err error }

func (e *processError) Error() string { return "processing the result: " + e.err.Error() }
func (e *processError) Unwrap() error { return e.err }

// rejection is why a delivery was refused: its status, what the sender is
// told, and what the log says.
type rejection struct {
	status  int
	outcome outcome
	answer  string // the response body: never a secret or a detail of ours
	reason  string // for the log
	abort   bool   // genuine: ask Svix not to retry
}

// tooLarge is the rejection of a body over maxBodyBytes.
var tooLarge = &rejection{status: http.StatusRequestEntityTooLarge, outcome: outcomeTooLarge, answer: "body too large",
	reason: fmt.Sprintf("body over %d bytes", maxBodyBytes)}

// readDelivery reads and verifies one delivery of kind k, in a fixed order:
// cap the body, read it, verify its raw bytes (the library's check, after
// bounding the headers it loops over), then decode it. Nothing of the body
// is trusted before it is verified. A refused delivery comes back as a
// rejection that says how to answer it.
func readDelivery(w http.ResponseWriter, r *http.Request, k kind, v verifier) (delivery, *rejection) {
	if r.ContentLength > maxBodyBytes {
		return delivery{}, tooLarge
	}
	// The buffer grows with what arrives, never with what Content-Length declares.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
			return delivery{}, tooLarge
		}
		return delivery{}, &rejection{status: http.StatusBadRequest, outcome: outcomeUnreadableBody, answer: "body could not be read", reason: "body could not be read: " + err.Error()}
	}

	if err := v.verify(body, r.Header); err != nil {
		return delivery{}, &rejection{status: http.StatusUnauthorized, outcome: outcomeInvalidSignature, answer: "invalid signature", reason: "signature not verified: " + err.Error()}
	}

	var payload struct {
		RequestID string `json:"request_id"`
	}
	// encoding/json/v2 semantics: names match exactly, a duplicate is an error.
	if err := jsonv2.Unmarshal(body, &payload); err != nil || !validRequestID(payload.RequestID) {
		return delivery{}, &rejection{status: http.StatusBadRequest, outcome: outcomeBadRequest, abort: true,
			answer: "body must be JSON with a request_id of 1 to 128 letters, digits, _ or -",
			reason: fmt.Sprintf("body (%d bytes) is not JSON with a valid request_id", len(body))}
	}
	return delivery{Kind: k, MessageID: messageID(r.Header), RequestID: payload.RequestID}, nil
}

// validRequestID accepts 1 to 128 of [A-Za-z0-9_-]: OptiPick's ids are
// 24-hex ObjectIds, and nothing else may reach a URL path.
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// statusFor maps a failed fetch or processing to the 5xx that makes Svix
// retry: the error's own HTTPStatus() where it has one and it is a 5xx (the
// API client's errors do, and a processor's may), 504 for a passed
// deadline, else 502. Never a 2xx: that would acknowledge a failure.
func statusFor(err error) int {
	var withStatus interface{ HTTPStatus() int }
	switch {
	case errors.As(err, &withStatus) && withStatus.HTTPStatus() >= 500 && withStatus.HTTPStatus() <= 599:
		return withStatus.HTTPStatus()
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	default:
		return http.StatusBadGateway
	}
}

// messageID is the id of the delivered message, taken from the same headers
// the Svix library verifies: svix-* when all three are there, else webhook-*.
// It stays the same across Svix's retries and resends of one message.
func messageID(h http.Header) string {
	id, _ := signatureHeaders(h)
	return id
}

// signatureHeaders are the message id and signature headers that the Svix
// library reads, by its own rule.
func signatureHeaders(h http.Header) (id, signature string) {
	// Canonical names spare Get an allocation.
	id, signature = h.Get("Svix-Id"), h.Get("Svix-Signature")
	if id == "" || signature == "" || h.Get("Svix-Timestamp") == "" {
		id, signature = h.Get("Webhook-Id"), h.Get("Webhook-Signature")
	}
	return id, signature
}

// logSafe is s as it may appear in a log: unchanged when it is printable
// ASCII, else quoted with escapes, so that no control or bidirectional-text
// character sent by a client reaches a log line. Long values are cut.
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

// newVerifier reads WEBHOOK_SECRET: one or more whsec_ secrets separated by
// spaces or commas. Its errors never repeat a secret.
func newVerifier(secrets string) (verifier, error) {
	entries := strings.FieldsFunc(secrets, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' })
	if len(entries) == 0 {
		return nil, errors.New("required: the endpoint's signing secret (whsec_...) from the OptiPick dashboard")
	}
	var v verifier
	for i, secret := range entries {
		if strings.ContainsAny(secret, `#"'`) {
			return nil, fmt.Errorf("secret %d of %d holds # or a quote: put comments on their own line, and no quotes (docker/podman --env-file keep both)", i+1, len(entries))
		}
		if !strings.HasPrefix(secret, "whsec_") {
			return nil, fmt.Errorf("secret %d of %d does not start with whsec_", i+1, len(entries))
		}
		// The library's errors quote the bad input: report our own.
		wh, err := svix.NewWebhook(secret)
		if err != nil {
			return nil, fmt.Errorf("secret %d of %d is not whsec_ followed by standard base64", i+1, len(entries))
		}
		v = append(v, wh)
	}
	if len(v) > maxSecrets {
		return nil, fmt.Errorf("%d secrets; at most %d (one per endpoint, two during a rotation)", len(v), maxSecrets)
	}
	return v, nil
}

// verify reports whether any of the secrets signed body, with the library's
// reason (never a secret or a signature) when none did. Headers too long
// to come from Svix are refused before the library loops over them.
func (v verifier) verify(body []byte, header http.Header) error {
	id, signature := signatureHeaders(header)
	if len(id) > maxMessageIDBytes {
		return fmt.Errorf("message id over %d bytes", maxMessageIDBytes)
	}
	if len(signature) > maxSignatureHeaderBytes || strings.Count(signature, " ") >= maxSignatures {
		return fmt.Errorf("signature header over %d bytes or %d signatures", maxSignatureHeaderBytes, maxSignatures)
	}
	var firstErr error
	for _, wh := range v {
		err := wh.Verify(body, header)
		if err == nil {
			return nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// logSummary is the default processFunc: one summary line per fetched
// optimization, and the whole JSON at debug level (when the client kept it).
func logSummary(logger *slog.Logger) processFunc {
	return func(ctx context.Context, d delivery, res *optimization) error {
		// slog.Attr values, not key-value pairs: no boxing on the hot path.
		var buf [12]slog.Attr
		attrs := append(buf[:0], slog.String("kind", string(d.Kind)), slog.String("svix_id", logSafe(d.MessageID)),
			slog.String("request_id", d.RequestID), slog.String("site_name", res.SiteName))
		if res.AsisDistance != nil && res.OptimalDistance != nil {
			asis, optimal := *res.AsisDistance, *res.OptimalDistance
			attrs = append(attrs, number("asis_distance", asis), number("optimal_distance", optimal))
			// Guarded so that no NaN or Inf reaches a JSON log line.
			if saving := (asis - optimal) / asis * 100; asis > 0 && !math.IsInf(saving, 0) && !math.IsNaN(saving) {
				attrs = append(attrs, number("saving_pct", math.Round(saving*10)/10))
			}
		}
		if d.Kind == kindCluster {
			attrs = append(attrs, slog.Int("clusters", res.Clusters))
		} else {
			attrs = append(attrs, slog.Int("picks", res.Picks))
		}
		attrs = append(attrs, number("computation_time_s", res.ComputationTime))

		if res.Error != "" {
			attrs = append(attrs, slog.String("optimization_error", res.Error))
			logger.LogAttrs(ctx, slog.LevelWarn, "optimization fetched, but OptiPick reports that it failed", attrs...)
		} else {
			logger.LogAttrs(ctx, slog.LevelInfo, "optimization fetched", attrs...)
		}
		if res.Raw != nil && logger.Enabled(ctx, slog.LevelDebug) {
			logger.DebugContext(ctx, "optimization result", "kind", d.Kind, "request_id", d.RequestID, "json", json.RawMessage(res.Raw))
		}
		return nil
	}
}

// number is f as a log attribute. slog's JSON handler formats a float64
// through encoding/json, which costs more than the rest of a summary line's
// values together; a whole number (distances in centimetres are) is passed
// as an int64 instead, which JSON prints the same, and text in full (2000000,
// not 2e+06). -0 prints as 0.
func number(key string, f float64) slog.Attr {
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return slog.Int64(key, int64(f))
	}
	return slog.Float64(key, f)
}

// rejectLog bounds the log lines that unauthenticated clients can cause:
// the first rejectLogBurst of every rejectLogInterval are written, the rest
// counted, and the count written when the interval ends.
type rejectLog struct {
	logger     *slog.Logger
	suppressed func(n int) // counts the lines not written, for the metrics

	mu         sync.Mutex
	windowEnd  time.Time
	written    int
	notWritten int
}

func (l *rejectLog) warn(msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if !now.Before(l.windowEnd) {
		l.windowEnd, l.written = now.Add(rejectLogInterval), 0
	}
	if l.written < rejectLogBurst {
		l.written++
		l.mu.Unlock()
		l.logger.Warn(msg, args...)
		return
	}
	l.notWritten++
	if l.notWritten == 1 {
		time.AfterFunc(l.windowEnd.Sub(now), l.report)
	}
	l.mu.Unlock()
}

func (l *rejectLog) report() {
	l.mu.Lock()
	n := l.notWritten
	l.notWritten = 0
	l.mu.Unlock()
	l.suppressed(n)
	l.logger.Warn("rejected deliveries not logged, over the log rate limit", "count", n,
		"limit", fmt.Sprintf("%d per %v", rejectLogBurst, rejectLogInterval))
}
