package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-json-experiment/json"
	svix "github.com/svix/svix-webhooks/go"
)

const (
	// deliveryDeadline bounds all the work for one delivery, from the
	// moment its handler starts (its headers have arrived): Svix counts an
	// answer after 15 s as a failure; this leaves room for the network.
	deliveryDeadline = 10 * time.Second
	// OptiPick's bodies are about 40 bytes; the Svix library copies a body
	// three times to verify it.
	maxBodyBytes = 64 << 10
	// What the Svix library loops over, bounded before it does: one
	// "v1,<sig>" per secret the sender uses, ids of about 30 bytes, and an
	// HMAC of each rejected body per secret (two endpoints, each rotating,
	// need four).
	maxSignatureHeaderBytes = 1 << 10
	maxSignatures           = 10
	maxMessageIDBytes       = 256
	maxSecrets              = 8
)

// webhookDeps are what the webhook handlers use. Every field is set.
type webhookDeps struct {
	logger   *slog.Logger
	verifier verifier
	seen     *dedupe
	fetch    func(ctx context.Context, k kind, requestID string) (*optimization, error)
	process  processFunc
	metrics  recorder
}

// handleWebhook handles deliveries of kind k: it reads and verifies one,
// then fetches and processes its optimization once per message, and
// answers 200 only when that work is done.
func handleWebhook(deps webhookDeps, rejected *rejectLog, k kind) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ended := deps.metrics.deliveryStarted(k)
		endedAs := outcomeProcessFailed // what a panic below counts as
		defer func() { ended(endedAs) }()

		// All the work for one delivery has deliveryDeadline from now.
		ctx, cancel := context.WithTimeout(r.Context(), deliveryDeadline)
		defer cancel()

		d, rejection := readDelivery(w, r, k, deps.verifier)
		if rejection != nil {
			endedAs = rejection.outcome
			reject(w, r, k, rejection, rejected)
			return
		}
		shared, err := deps.seen.do(ctx, k, d.MessageID, func(ctx context.Context) error {
			return handleMessage(ctx, r, d, deps)
		})
		endedAs = answer(w, d, shared, err, deps.logger, rejected)
		if endedAs == outcomeProcessed {
			markSendersConnection(r)
		}
	})
}

// handleMessage is the work done once per message: fetch d's optimization
// and process it. It goes on when its sender goes away, until the
// delivery's deadline: others may wait for it, and Svix's retry finds it
// done.
func handleMessage(ctx context.Context, r *http.Request, d delivery, deps webhookDeps) error {
	deadline, _ := ctx.Deadline()
	ctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	defer cancel()
	// This connection carries a message's work: it must not be closed for
	// a newcomer before its answer is written. Repeats (a replayed
	// capture) get no such protection.
	if !protectConnection(r) {
		return errConnectionClosing
	}
	result, err := deps.fetch(ctx, d.Kind, d.RequestID)
	if err != nil {
		return err
	}
	if err := deps.process(ctx, d, result); err != nil {
		return fmt.Errorf("%w: %w", errProcessing, err)
	}
	return nil
}

// answer answers a verified delivery with the outcome of its message's
// work (shared: done by another delivery of the message), logs it, and
// returns the outcome. Lines that repeats can cause are rate-limited.
func answer(w http.ResponseWriter, d delivery, shared bool, err error,
	logger *slog.Logger, rejected *rejectLog) outcome {
	attrs := []any{"kind", d.Kind, "svix_id", logSafe(d.MessageID), "request_id", d.RequestID}
	switch {
	case err == nil && !shared:
		io.WriteString(w, "fetched\n")
		return outcomeProcessed
	case err == nil:
		rejected.log(slog.LevelInfo, "delivery already handled; not fetching again", attrs...)
		io.WriteString(w, "already handled\n")
		return outcomeDuplicate
	case errors.Is(err, errOtherKind): // a capture replayed to the other path
		rejected.log(slog.LevelWarn, "rejected delivery of a message verified for the other kind",
			append(attrs, "status", http.StatusConflict)...)
		http.Error(w, "this message was delivered for the other kind", http.StatusConflict)
		return outcomeOtherKind
	case errors.Is(err, errConnectionClosing) && !shared: // no one reads this answer
		rejected.log(slog.LevelWarn, "delivery not handled: its connection was closed for a newcomer; Svix will retry",
			attrs...)
		http.Error(w, "not handled yet; retry later", http.StatusServiceUnavailable)
		return outcomeShed
	}

	status := statusFor(err)
	attrs = append(attrs, "status", status, "err", err)
	if shared { // a repeat: another delivery of the message failed moments ago, or is still at work
		rejected.log(slog.LevelWarn, "delivery not handled (another delivery of this message failed or is at work); "+
			"Svix will retry", attrs...)
	} else {
		logger.Error("delivery not handled; Svix will retry", attrs...)
	}
	if after := retryAfter(err); after > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(after.Seconds())))
	}
	http.Error(w, "not handled yet; retry later", status)
	if errors.Is(err, errProcessing) || errors.Is(err, errWorkDidNotReturn) {
		return outcomeProcessFailed
	}
	return outcomeFetchFailed
}

// statusFor is the 5xx that makes Svix retry a failure: the error's own
// HTTPStatus() when it is a 5xx, 504 for a passed deadline, else 502.
func statusFor(err error) int {
	var withStatus interface{ HTTPStatus() int }
	if errors.As(err, &withStatus) && withStatus.HTTPStatus() >= 500 && withStatus.HTTPStatus() <= 599 {
		return withStatus.HTTPStatus()
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return http.StatusGatewayTimeout
	}
	return http.StatusBadGateway
}

// errProcessing marks a processFunc's error, told apart from a failed fetch.
var errProcessing = errors.New("processing the result")

// connHooksKey is where a request's context holds the connection
// limiter's hooks (connlimit.go); without the limiter there are none.
type connHooksKey struct{}

// connHooks let a request tell the connection limiter about its connection.
type connHooks struct {
	// protect keeps the connection open while the request does a message's
	// work, until its answer is written. It reports false when the
	// connection is already closing for a newcomer.
	protect func() bool
	// workSucceeded marks the connection a sender's: its request carried a
	// message's work to success, and it is spared while briefly idle.
	workSucceeded func()
}

// protectConnection keeps r's connection open until r's answer is written.
// It reports false when the connection is being closed: the answer could
// not be written, so no work should start.
func protectConnection(r *http.Request) bool {
	hooks, ok := r.Context().Value(connHooksKey{}).(connHooks)
	return !ok || hooks.protect()
}

// markSendersConnection tells the connection limiter that r carried a
// message's work to success: its connection is a sender's (Svix's).
func markSendersConnection(r *http.Request) {
	if hooks, ok := r.Context().Value(connHooksKey{}).(connHooks); ok {
		hooks.workSucceeded()
	}
}

// errConnectionClosing: the delivery's connection was closed for a
// newcomer before its work started; Svix retries.
var errConnectionClosing = unavailableError("the connection was closed for a newcomer before the work started")

// rejection is why a delivery was refused: its status, what the sender is
// told (nothing of ours), and what the log says.
type rejection struct {
	status  int
	outcome outcome
	answer  string
	reason  string
}

var tooLarge = &rejection{
	status:  http.StatusRequestEntityTooLarge,
	outcome: outcomeTooLarge,
	answer:  "body too large",
	reason:  fmt.Sprintf("body over %d bytes", maxBodyBytes),
}

// readDelivery reads and verifies one delivery of kind k, in a fixed order:
// cap the body, read it, verify its raw bytes, then decode it.
func readDelivery(w http.ResponseWriter, r *http.Request, k kind, v verifier) (delivery, *rejection) {
	if r.ContentLength > maxBodyBytes {
		return delivery{}, tooLarge
	}
	// The buffer grows with what arrives, never with what Content-Length declares.
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	var maxErr *http.MaxBytesError
	if errors.As(err, &maxErr) {
		return delivery{}, tooLarge
	}
	if err != nil {
		return delivery{}, &rejection{
			status:  http.StatusBadRequest,
			outcome: outcomeUnreadableBody,
			answer:  "body could not be read",
			reason:  "body could not be read: " + err.Error(),
		}
	}
	if err := v.verify(body, r.Header); err != nil {
		return delivery{}, &rejection{
			status:  http.StatusUnauthorized,
			outcome: outcomeInvalidSignature,
			answer:  "invalid signature",
			reason:  "signature not verified: " + err.Error(),
		}
	}
	var payload struct {
		RequestID string `json:"request_id"`
	}
	// encoding/json/v2 semantics: names match exactly, a duplicate is an error.
	if err := json.Unmarshal(body, &payload); err != nil || !validRequestID(payload.RequestID) {
		return delivery{}, &rejection{
			status:  http.StatusBadRequest,
			outcome: outcomeBadRequest,
			answer:  "body must be JSON with a request_id of 1 to 128 letters, digits, _ or -",
			reason:  fmt.Sprintf("body (%d bytes) is not JSON with a valid request_id", len(body)),
		}
	}
	id, _ := signatureHeaders(r.Header)
	return delivery{Kind: k, MessageID: id, RequestID: payload.RequestID}, nil
}

// reject answers a delivery that was refused, and logs it, rate-limited:
// anyone can send them.
func reject(w http.ResponseWriter, r *http.Request, k kind, rej *rejection, rejected *rejectLog) {
	attrs := []any{
		"kind", k,
		"svix_id", logSafe(claimedMessageID(r.Header)),
		"status", rej.status,
		"reason", rej.reason,
	}
	if rej.outcome == outcomeBadRequest {
		// Genuine but unusable: retrying cannot fix it. An error: if OptiPick
		// changed its body, every event would end here.
		w.Header().Set("webhook-delivery", "abort-message")
		rejected.log(slog.LevelError, "rejected signed delivery; asked Svix not to retry", attrs...)
	} else {
		rejected.log(slog.LevelWarn, "rejected delivery", attrs...)
	}
	http.Error(w, rej.answer, rej.status)
}

// validRequestID accepts 1 to 128 of [A-Za-z0-9_-]: OptiPick's ids are
// 24-hex ObjectIds, and nothing else may reach a URL path.
func validRequestID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for _, c := range []byte(id) {
		if !isIDByte(c) {
			return false
		}
	}
	return true
}

func isIDByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-'
}

// signatureHeaders are the message id and signatures the Svix library
// verifies: svix-* when all three are there, else webhook-* (Standard
// Webhooks).
func signatureHeaders(h http.Header) (id, signature string) {
	id = h.Get("Svix-Id")
	signature = h.Get("Svix-Signature")
	if id == "" || signature == "" || h.Get("Svix-Timestamp") == "" {
		return h.Get("Webhook-Id"), h.Get("Webhook-Signature")
	}
	return id, signature
}

// claimedMessageID is the message id a delivery claims, for the log of a
// refused one: whichever of svix-id and webhook-id it sent.
func claimedMessageID(h http.Header) string {
	if id, _ := signatureHeaders(h); id != "" {
		return id
	}
	return h.Get("Svix-Id")
}

// verifier holds one Svix verifier per configured signing secret.
type verifier []*svix.Webhook

// newVerifier reads WEBHOOK_SECRET: whsec_ secrets separated by spaces or
// commas. Its errors never repeat a secret (the library's do).
func newVerifier(secrets string) (verifier, error) {
	entries := strings.Fields(strings.ReplaceAll(secrets, ",", " "))
	if len(entries) == 0 {
		return nil, fmt.Errorf("%w: the endpoint's signing secret (whsec_...) from the OptiPick dashboard", errRequired)
	}
	if len(entries) > maxSecrets {
		return nil, fmt.Errorf("%d secrets; at most %d (one per endpoint, two during a rotation)",
			len(entries), maxSecrets)
	}
	var v verifier
	for i, secret := range entries {
		nth := fmt.Sprintf("secret %d of %d", i+1, len(entries))
		if strings.ContainsAny(secret, `#"'`) {
			return nil, errors.New(nth + " holds # or a quote: put comments on their own line, and no quotes " +
				"(docker/podman --env-file keep both)")
		}
		if !strings.HasPrefix(secret, "whsec_") {
			return nil, errors.New(nth + " does not start with whsec_")
		}
		wh, err := svix.NewWebhook(secret)
		if err != nil {
			return nil, errors.New(nth + " is not whsec_ followed by standard base64")
		}
		v = append(v, wh)
	}
	return v, nil
}

// verify reports whether any of the secrets signed body, with the library's
// reason (never a secret) when none did. Headers too long to come from Svix
// are refused before the library loops over them.
func (v verifier) verify(body []byte, header http.Header) error {
	id, signature := signatureHeaders(header)
	if len(id) > maxMessageIDBytes ||
		len(signature) > maxSignatureHeaderBytes ||
		strings.Count(signature, " ") >= maxSignatures {
		return fmt.Errorf("id over %d bytes, or signatures over %d bytes or %d entries",
			maxMessageIDBytes, maxSignatureHeaderBytes, maxSignatures)
	}
	var err error
	for _, wh := range v {
		if err = wh.Verify(body, header); err == nil {
			return nil
		}
	}
	return err
}

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
	outcomeShed             outcome = "shed"              // 503: its connection was closed for a newcomer
)

// outcomes are all the outcomes, for the metrics to create up front.
var outcomes = []outcome{
	outcomeProcessed,
	outcomeDuplicate,
	outcomeOtherKind,
	outcomeInvalidSignature,
	outcomeTooLarge,
	outcomeUnreadableBody,
	outcomeBadRequest,
	outcomeFetchFailed,
	outcomeProcessFailed,
	outcomeShed,
}
