package main

// What happens with a fetched result: by default, logSummary logs it. To
// do something else (store it, call another service), write a processFunc
// and pass it in run (main.go) instead of logSummary(logger).

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
)

// delivery is one verified webhook delivery.
type delivery struct {
	Kind      kind   // kindCluster or kindRoute: learnt from the URL it was delivered to
	MessageID string // svix-id: the same across Svix's retries and resends
	RequestID string // the optimization; only [A-Za-z0-9_-], so it is safe in a file name or a URL
}

// processFunc does what the service is for with a fetched result. The
// delivery is acknowledged (2xx) only when it returns nil; an error answers
// 5xx and Svix delivers the message again, so whatever it changes must be
// idempotent, for example keyed on d.MessageID or d.RequestID.
type processFunc func(ctx context.Context, d delivery, res *optimization) error

// logSummary is the default processFunc: one summary line per fetched
// optimization, and the whole JSON at debug level (when it was kept:
// KEEP_RESULT_JSON). To keep this line while adding work of your own, call
// it from your processFunc.
func logSummary(logger *slog.Logger) processFunc {
	return func(ctx context.Context, d delivery, res *optimization) error {
		attrs := []slog.Attr{
			slog.String("kind", string(d.Kind)),
			slog.String("svix_id", logSafe(d.MessageID)),
			slog.String("request_id", d.RequestID),
			slog.String("site_name", res.SiteName),
		}
		attrs = append(attrs, distanceAttrs(res)...)
		if d.Kind == kindCluster {
			attrs = append(attrs, slog.Int("clusters", int(res.OptimalClusters)))
		} else {
			attrs = append(attrs, slog.Int("picks", int(res.Picks)))
		}
		attrs = append(attrs, numberAttr("computation_time_s", res.ComputationTime))

		if res.Error != "" {
			attrs = append(attrs, slog.String("optimization_error", string(res.Error)))
			logger.LogAttrs(ctx, slog.LevelWarn, "optimization fetched, but OptiPick reports that it failed", attrs...)
		} else {
			logger.LogAttrs(ctx, slog.LevelInfo, "optimization fetched", attrs...)
		}
		if res.Raw != nil {
			logger.DebugContext(ctx, "optimization result",
				"kind", d.Kind,
				"request_id", d.RequestID,
				"json", json.RawMessage(res.Raw))
		}
		return nil
	}
}

// distanceAttrs are the result's distances and the saving, when it has
// them (cluster results do; route results may).
func distanceAttrs(res *optimization) []slog.Attr {
	if res.AsisDistance == 0 && res.OptimalDistance == 0 {
		return nil
	}
	attrs := []slog.Attr{
		numberAttr("asis_distance", res.AsisDistance),
		numberAttr("optimal_distance", res.OptimalDistance),
	}
	if res.AsisDistance <= 0 {
		return attrs
	}
	saving := (res.AsisDistance - res.OptimalDistance) / res.AsisDistance * 100
	if !math.IsInf(saving, 0) { // no NaN or Inf may reach a JSON log line
		attrs = append(attrs, numberAttr("saving_pct", math.Round(saving*10)/10))
	}
	return attrs
}

// numberAttr is f as a log attribute: a whole number as an int64, so that
// text logs show 1500000 where a float64 shows 1.5e+06 (JSON logs show the
// same either way).
func numberAttr(key string, f float64) slog.Attr {
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		return slog.Int64(key, int64(f))
	}
	return slog.Float64(key, f)
}
