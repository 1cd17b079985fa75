package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const defaultAPIURL = "https://optipick.api.optioryx.com"

const usage = `
Configuration comes from the environment (and a .env file in the working
directory; real environment variables win). See .env.example.

  WEBHOOK_SECRET    required: the endpoints' whsec_ signing secrets, separated by spaces or commas
  OPTIPICK_API_KEY  required: an OptiPick API key (Settings > API Keys), sent as X-API-KEY
  OPTIPICK_API_URL  the API base URL (default ` + defaultAPIURL + `)
  PORT              the webhook port on all interfaces (default 8080; 0: a free one)
  LOG_LEVEL         debug, info (default), warn or error; debug logs each result's whole JSON
  LOG_FORMAT        text (default) or json
  KEEP_RESULT_JSON  true: keep each result's whole JSON in res.Raw (default false; true at LOG_LEVEL=debug)
  DEDUPE_WINDOW     how long a handled svix-id is remembered (default 24h; 0: only moments)
  METRICS_ADDR      where to serve Prometheus /metrics, such as :9090 (default: off)
  SHUTDOWN_DELAY    how long /readyz answers 503 before a shutdown drains (default 0s; 5s in Kubernetes)
`

// config is the service's settings, read from the environment.
type config struct {
	verifier       verifier
	apiKey         string
	apiURL         *url.URL
	port           string
	logLevel       slog.Level
	logFormat      string // text or json
	keepResultJSON bool
	dedupeWindow   time.Duration
	metricsAddr    string // empty: no metrics
	shutdownDelay  time.Duration
}

// loadConfig reads and checks every variable. Its errors name the variable
// and never repeat its value, which may be a secret.
func loadConfig(getenv func(string) string) (config, error) {
	var cfg config
	var err error
	env := func(name string) string { return strings.TrimSpace(getenv(name)) }

	if strings.Contains(getenv("WEBHOOK_SECRET"), placeholderSecret) {
		return cfg, errors.New("WEBHOOK_SECRET: still .env.example's placeholder: copy the endpoint's signing secret " +
			"from the OptiPick dashboard (for the simulator of the optipick-webhooks repository, make one with " +
			"go run ./cmd/optipick-sim -new-secret)")
	}
	if cfg.verifier, err = newVerifier(getenv("WEBHOOK_SECRET")); err != nil {
		return cfg, fmt.Errorf("WEBHOOK_SECRET: %w", err)
	}
	if cfg.apiKey, err = readAPIKey(env("OPTIPICK_API_KEY")); err != nil {
		return cfg, fmt.Errorf("OPTIPICK_API_KEY: %w", err)
	}
	if cfg.apiURL, err = readAPIURL(env("OPTIPICK_API_URL")); err != nil {
		return cfg, fmt.Errorf("OPTIPICK_API_URL: %w", err)
	}
	if cfg.port, err = readPort(getenv); err != nil {
		return cfg, err
	}
	if cfg.logLevel, err = readLogLevel(env("LOG_LEVEL")); err != nil {
		return cfg, fmt.Errorf("LOG_LEVEL: %w", err)
	}
	cfg.logFormat = strings.ToLower(cmp.Or(env("LOG_FORMAT"), "text"))
	if cfg.logFormat != "text" && cfg.logFormat != "json" {
		return cfg, errors.New("LOG_FORMAT: must be text or json")
	}
	// At debug level the whole JSON is logged, so it is kept by default.
	keepByDefault := strconv.FormatBool(cfg.logLevel <= slog.LevelDebug)
	if cfg.keepResultJSON, err = strconv.ParseBool(cmp.Or(env("KEEP_RESULT_JSON"), keepByDefault)); err != nil {
		return cfg, errors.New("KEEP_RESULT_JSON: must be true or false")
	}
	if cfg.dedupeWindow, err = readDuration(env("DEDUPE_WINDOW"), "24h", 0); err != nil {
		return cfg, errors.New("DEDUPE_WINDOW: must be a duration such as 24h, 90m or 0")
	}
	if cfg.metricsAddr, err = readMetricsAddr(env("METRICS_ADDR"), cfg.port); err != nil {
		return cfg, fmt.Errorf("METRICS_ADDR: %w", err)
	}
	if cfg.shutdownDelay, err = readDuration(env("SHUTDOWN_DELAY"), "0s", time.Minute); err != nil {
		return cfg, errors.New("SHUTDOWN_DELAY: must be a duration from 0s to 1m, such as 5s")
	}
	return cfg, nil
}

// errRequired marks the error of a required variable that is not set.
var errRequired = errors.New("required")

func readAPIKey(key string) (string, error) {
	switch {
	case key == "":
		return "", fmt.Errorf("%w (create one in OptiPick under Settings → API Keys)", errRequired)
	case strings.ContainsAny(key, "\r\n"):
		return "", errors.New("must be a single line")
	}
	return key, nil
}

func readAPIURL(value string) (*url.URL, error) {
	u, err := url.Parse(cmp.Or(value, defaultAPIURL))
	absolute := err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
	if !absolute || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("must be an absolute http(s) URL without query or fragment, such as " + defaultAPIURL)
	}
	return u, nil
}

// readPort reads PORT, which -healthcheck needs too.
func readPort(getenv func(string) string) (string, error) {
	port := cmp.Or(strings.TrimSpace(getenv("PORT")), "8080")
	if !isPort(port) {
		return "", errors.New("PORT: must be a port number from 0 to 65535")
	}
	return port, nil
}

func readLogLevel(value string) (slog.Level, error) {
	var level slog.Level
	// slog also reads offsets such as INFO+2, which are not documented here.
	if err := level.UnmarshalText([]byte(cmp.Or(value, "info"))); err != nil || strings.ContainsAny(value, "+-") {
		return 0, errors.New("must be debug, info, warn or error")
	}
	return level, nil
}

// readDuration reads a duration from 0 to most (0: no upper bound).
func readDuration(value, fallback string, most time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(cmp.Or(value, fallback))
	if err == nil && (d < 0 || (most > 0 && d > most)) {
		err = errors.New("out of range")
	}
	return d, err
}

func readMetricsAddr(addr, webhookPort string) (string, error) {
	if addr == "" {
		return "", nil
	}
	_, port, err := net.SplitHostPort(addr)
	if err != nil || !isPort(port) {
		return "", errors.New("must be host:port or :port, such as :9090 (empty: no metrics)")
	}
	if port == webhookPort && port != "0" {
		return "", fmt.Errorf("port %s is the webhook port (PORT): metrics need a port of their own, such as :9090",
			port)
	}
	if newMetrics == nil {
		return "", errors.New("set, but this build has no metrics (metrics.go was left out); unset it")
	}
	return addr, nil
}

func isPort(s string) bool {
	_, err := strconv.ParseUint(s, 10, 16)
	return err == nil
}

// placeholders are .env.example's values of the required variables.
const (
	placeholderSecret = "whsec_replace_with_your_endpoint_secret"
	placeholderAPIKey = "replace-with-your-api-key"
)
