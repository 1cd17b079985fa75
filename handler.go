package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"path"

	svix "github.com/svix/svix-webhooks/go"
)

const (
	// maxBodyBytes caps a delivery's body. OptiPick's bodies are a few dozen
	// bytes; the Svix library copies the body about three times to verify it.
	maxBodyBytes = 1 << 20

	// dedupeCapacity bounds how many handled deliveries are remembered.
	dedupeCapacity = 100_000
)

// fetchFunc fetches the finished optimization of the given kind ("cluster"
// or "route") from the OptiPick API.
type fetchFunc func(ctx context.Context, kind, requestID string) (*optimization, error)

// newHandler registers every route of the service.
func newHandler(logger *slog.Logger, v verifier, fetch fetchFunc, seen *dedupe) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /webhook/cluster", handleWebhook(logger, "cluster", v, fetch, seen))
	mux.Handle("POST /webhook/route", handleWebhook(logger, "route", v, fetch, seen))
	// The path of OptiPick's original example, which only knew clusters.
	mux.Handle("POST /webhook", handleWebhook(logger, "cluster", v, fetch, seen))
	mux.Handle("GET /healthz", handleHealthz())
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

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
}

// handleWebhook handles deliveries of one kind, in a fixed order: cap and
// read the body, verify its raw bytes, decode it, then fetch and log the
// optimization. It answers 2xx only once the result has been logged.
func handleWebhook(logger *slog.Logger, kind string, v verifier, fetch fetchFunc, seen *dedupe) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), deliveryDeadline)
		defer cancel()
		msgID := messageID(r.Header)
		log := logger.With("kind", kind, "svix_id", msgID)

		if r.ContentLength > maxBodyBytes {
			log.Warn("rejected delivery: body too large", "content_length", r.ContentLength, "limit", maxBodyBytes)
			http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
			return
		}
		body, err := readAll(http.MaxBytesReader(w, r.Body, maxBodyBytes), r.ContentLength)
		if err != nil {
			if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
				log.Warn("rejected delivery: body too large", "limit", maxBodyBytes)
				http.Error(w, "body too large", http.StatusRequestEntityTooLarge)
				return
			}
			log.Warn("rejected delivery: body could not be read", "err", err)
			http.Error(w, "body could not be read", http.StatusBadRequest)
			return
		}

		if err := v.verify(body, r.Header); err != nil {
			log.Warn("rejected delivery: signature not verified", "reason", err.Error())
			http.Error(w, "invalid signature", http.StatusUnauthorized)
			return
		}

		var payload struct {
			RequestID string `json:"request_id"`
		}
		if err := json.Unmarshal(body, &payload); err != nil || !validRequestID(payload.RequestID) {
			// Genuine but unusable: retrying cannot fix it, so ask Svix to stop.
			log.Warn("rejected signed delivery: body is not JSON with a valid request_id; asked Svix not to retry", "body_bytes", len(body))
			w.Header().Set("webhook-delivery", "abort-message")
			http.Error(w, "body must be JSON with a request_id of 1 to 128 letters, digits, _ or -", http.StatusBadRequest)
			return
		}
		log = log.With("request_id", payload.RequestID)

		alreadyHandled, err := seen.do(ctx, kind+"/"+msgID, func(ctx context.Context) error {
			result, err := fetch(ctx, kind, payload.RequestID)
			if err != nil {
				return err
			}
			logResult(ctx, log, kind, result)
			return nil
		})
		if err != nil {
			status := statusFor(err)
			log.Error("optimization not fetched; Svix will retry", "status", status, "err", err)
			http.Error(w, "optimization not fetched yet; retry later", status)
			return
		}
		if alreadyHandled {
			log.Info("delivery already handled; not fetching again")
			io.WriteString(w, "already handled\n")
			return
		}
		io.WriteString(w, "fetched\n")
	})
}

// statusFor maps a failed fetch to the 5xx that makes Svix retry.
func statusFor(err error) int {
	switch {
	case errors.Is(err, errBusy), errors.Is(err, errRetryLater), isAPIStatus(err, http.StatusTooManyRequests):
		return http.StatusServiceUnavailable
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
	// Canonical names spare Get an allocation.
	id := h.Get("Svix-Id")
	if id == "" || h.Get("Svix-Timestamp") == "" || h.Get("Svix-Signature") == "" {
		id = h.Get("Webhook-Id")
	}
	const maxLen = 128 // it reaches the logs before it is verified
	if len(id) > maxLen {
		id = id[:maxLen]
	}
	return id
}

// verifier holds one Svix verifier per configured signing secret.
type verifier []*svix.Webhook

// verify reports whether any of the secrets signed body, with the library's
// reason (never a secret or a signature) when none did.
func (v verifier) verify(body []byte, header http.Header) error {
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

// logResult writes the one summary line of a fetched optimization, and the
// whole JSON at debug level.
func logResult(ctx context.Context, log *slog.Logger, kind string, res *optimization) {
	attrs := []any{"site_name", res.SiteName}
	if res.AsisDistance != nil && res.OptimalDistance != nil {
		attrs = append(attrs, "asis_distance", *res.AsisDistance, "optimal_distance", *res.OptimalDistance)
		if *res.AsisDistance > 0 {
			saving := (*res.AsisDistance - *res.OptimalDistance) / *res.AsisDistance * 100
			attrs = append(attrs, "saving_pct", math.Round(saving*10)/10)
		}
	}
	if kind == "cluster" {
		attrs = append(attrs, "clusters", len(res.OptimalClusters))
	} else {
		attrs = append(attrs, "picks", len(res.Picks))
	}
	attrs = append(attrs, "computation_time_s", res.ComputationTime)

	if failure := res.failure(); failure != "" {
		log.WarnContext(ctx, "optimization fetched, but OptiPick reports that it failed", append(attrs, "optimization_error", failure)...)
	} else {
		log.InfoContext(ctx, "optimization fetched", attrs...)
	}
	if log.Enabled(ctx, slog.LevelDebug) {
		log.DebugContext(ctx, "optimization result", "json", json.RawMessage(res.raw))
	}
}
