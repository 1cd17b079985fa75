// Command optipick-webhooks receives OptiPick's Svix-signed webhooks, proves
// they are genuine, fetches the finished optimization from the OptiPick REST
// API and logs it. It answers 2xx only once that work is done, so Svix's
// retries make delivery at-least-once.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/joho/godotenv"
)

const (
	// drainTimeout is how long a shutdown waits for in-flight deliveries:
	// longer than deliveryDeadline, so that each gets its answer.
	drainTimeout = deliveryDeadline + 5*time.Second
	// Connections served at once (connLimitListener) on each port: a
	// newcomer sheds one once it is shedAfter old, so this also sets how
	// fast a flood of them is turned over (2,560 a second).
	maxConnections = 256
	dedupeCapacity = 100_000 // messages remembered
	defaultAPIURL  = "https://optipick.api.optioryx.com"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() { <-ctx.Done(); stop() }() // a second signal ends the process at once
	// Real environment variables win. godotenv's errors quote the file, secrets included.
	if err := godotenv.Load(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "error: .env: cannot be read or parsed (expected KEY=value lines)")
		os.Exit(1)
	}
	if err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// version is set at build time (-ldflags "-X main.version=v1.2.3"); else
// it is the module's, which Go stamps from git.
var version string

const usage = `
Configuration comes from the environment (and a .env file in the working
directory; real environment variables win). See .env.example.

  WEBHOOK_SECRET    required: the endpoints' whsec_ signing secrets, separated by spaces or commas
  OPTIPICK_API_KEY  required: an OptiPick API key (Settings > API Keys), sent as X-API-KEY
  OPTIPICK_API_URL  the API base URL (default ` + defaultAPIURL + `)
  PORT              the webhook port on all interfaces (default 8080; 0: a free one)
  LOG_LEVEL         debug, info (default), warn or error; debug logs each result's whole JSON
  LOG_FORMAT        text (default) or json
  KEEP_RESULT_JSON  true: keep each result's whole JSON for the processFunc (default false)
  DEDUPE_WINDOW     how long a handled svix-id is remembered (default 24h; 0: only moments)
  METRICS_ADDR      where to serve Prometheus /metrics, such as :9090 (default: off)
  SHUTDOWN_DELAY    how long /readyz answers 503 before a shutdown drains (default 0s; 5s in Kubernetes)
`

// run starts the receiver and blocks until ctx is cancelled, then drains
// in-flight deliveries. Logs go to stdout; stderr is for usage errors.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("optipick-webhooks", flag.ContinueOnError)
	flags.SetOutput(stderr)
	flags.Usage = func() {
		fmt.Fprintln(stderr, "Usage: optipick-webhooks [-healthcheck | -version]")
		flags.PrintDefaults()
		fmt.Fprint(stderr, usage)
	}
	healthcheck := flags.Bool("healthcheck", false, "GET /healthz on this machine's PORT and exit 0 if it answers 200 (for container HEALTHCHECKs)")
	showVersion := flags.Bool("version", false, "print the version and exit")
	info, _ := debug.ReadBuildInfo()
	version := versionOf(version, info)
	if err := flags.Parse(args[min(1, len(args)):]); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	} else if *showVersion {
		fmt.Fprintln(stdout, "optipick-webhooks", version, runtime.Version())
		return nil
	} else if port := cmp.Or(strings.TrimSpace(getenv("PORT")), "8080"); *healthcheck { // distroless images have no curl: the binary probes itself
		if !isPort(port) {
			return errors.New("PORT: must be a port number from 0 to 65535")
		}
		resp, err := (&http.Client{Timeout: 3 * time.Second}).Get("http://127.0.0.1:" + port + "/healthz")
		if err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("healthcheck: /healthz answered %s", resp.Status)
		}
		return nil
	}

	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	opts := &slog.HandlerOptions{Level: cfg.logLevel}
	logger := slog.New(slog.NewTextHandler(stdout, opts))
	if cfg.logFormat == "json" {
		logger = slog.New(slog.NewJSONHandler(stdout, opts))
	}
	seen := newDedupe(cfg.dedupeWindow, dedupeCapacity)
	client := newOptiPickClient(cfg.apiURL, cfg.apiKey, cfg.keepResultJSON || cfg.logLevel <= slog.LevelDebug, nil)
	var ready atomic.Bool
	svc := services{logger: logger, verifier: cfg.verifier, fetch: client.fetch, process: logSummary(logger), seen: seen, ready: ready.Load}
	var metrics *serviceMetrics
	if cfg.metricsAddr != "" {
		metrics = newServiceMetrics(version, seen.Len)
		svc.rec, client.rec = metrics, metrics
	}

	// The webhook server first, then metrics: the last scrape sees the drain.
	var servers []*http.Server
	serveErr := make(chan error, 2)
	serve := func(handler http.Handler, variable, addr string, maxConns int) (net.Addr, error) {
		tcp, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("%s: cannot listen: %w", variable, err)
		}
		l := newConnLimitListener(tcp, maxConns)
		srv := newHTTPServer(handler, logger)
		srv.ConnState, srv.ConnContext = l.trackState, l.connContext
		servers = append(servers, srv)
		go func() { serveErr <- srv.Serve(l) }()
		return tcp.Addr(), nil
	}
	closeAll := func() {
		for _, s := range servers {
			s.Close()
		}
	}
	addr, err := serve(newServer(svc), "PORT", net.JoinHostPort("", cfg.port), maxConnections)
	if err != nil {
		return err
	}
	if metrics != nil {
		metricsAddr, err := serve(metrics.handler(), "METRICS_ADDR", cfg.metricsAddr, maxConnections)
		if err != nil {
			closeAll()
			return err
		}
		logger.Info("serving metrics", "addr", metricsAddr.String(), "path", "/metrics")
	}
	ready.Store(true)
	logger.Info("listening", "addr", addr.String(), "version", version, "api_url", cfg.apiURL.Redacted(),
		"secrets", len(cfg.verifier), "dedupe_window", cfg.dedupeWindow.String())
	if ip := net.ParseIP(cfg.apiURL.Hostname()); cfg.apiURL.Scheme == "http" && cfg.apiURL.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		logger.Warn("OPTIPICK_API_URL is plain http to another machine: the API key travels in clear text; use https", "api_url", cfg.apiURL.Redacted())
	}

	select {
	case err := <-serveErr:
		closeAll()
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	ready.Store(false)
	if cfg.shutdownDelay > 0 { // still serving, while load balancers see /readyz fail
		logger.Info("shutting down: /readyz answers 503 while load balancers catch up", "delay", cfg.shutdownDelay.String())
		time.Sleep(cfg.shutdownDelay)
	}
	logger.Info("shutting down: draining in-flight deliveries", "deadline", drainTimeout.String())
	// The drain deadline must not derive from ctx: ctx is already cancelled.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	for _, s := range servers {
		if err := s.Shutdown(shutdownCtx); err != nil {
			closeAll()
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	for range servers {
		if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serving: %w", err)
		}
	}
	logger.Info("stopped")
	return nil
}

// versionOf is v, else the module's version: a tag, or a pseudo-version
// naming the git revision.
func versionOf(v string, info *debug.BuildInfo) string {
	if v == "" && info != nil {
		return info.Main.Version
	}
	return cmp.Or(v, "unknown")
}

// newHTTPServer wraps handler in an http.Server whose every phase has a
// deadline, so that slow or stalled clients cannot hold connections.
func newHTTPServer(handler http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{Handler: handler, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: deliveryDeadline + 5*time.Second, IdleTimeout: 30 * time.Second,
		MaxHeaderBytes: 16 << 10, // Svix sends a few hundred bytes; ingresses add some
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
}

type config struct {
	verifier                    verifier
	apiKey, port                string
	apiURL                      *url.URL
	logLevel                    slog.Level
	logFormat, metricsAddr      string
	keepResultJSON              bool
	dedupeWindow, shutdownDelay time.Duration
}

// loadConfig reads and checks every variable. Its errors name the variable
// and never repeat its value, which may be a secret.
func loadConfig(getenv func(string) string) (cfg config, err error) {
	env := func(name string) string { return strings.TrimSpace(getenv(name)) }
	const noEnv = " (no .env here? cp .env.example .env and fill it in)"
	if cfg.verifier, err = newVerifier(getenv("WEBHOOK_SECRET")); err != nil && env("WEBHOOK_SECRET") == "" {
		return cfg, fmt.Errorf("WEBHOOK_SECRET: %w"+noEnv, err)
	} else if err != nil {
		return cfg, fmt.Errorf("WEBHOOK_SECRET: %w", err)
	}
	switch cfg.apiKey = env("OPTIPICK_API_KEY"); {
	case cfg.apiKey == "":
		return cfg, errors.New("OPTIPICK_API_KEY: required (create one in OptiPick under Settings → API Keys)" + noEnv)
	case strings.ContainsAny(cfg.apiKey, "\r\n"):
		return cfg, errors.New("OPTIPICK_API_KEY: must be a single line")
	}
	cfg.apiURL, err = url.Parse(cmp.Or(env("OPTIPICK_API_URL"), defaultAPIURL))
	if err != nil || (cfg.apiURL.Scheme != "http" && cfg.apiURL.Scheme != "https") || cfg.apiURL.Host == "" ||
		cfg.apiURL.RawQuery != "" || cfg.apiURL.Fragment != "" {
		return cfg, errors.New("OPTIPICK_API_URL: must be an absolute http(s) URL without query or fragment, such as " + defaultAPIURL)
	}
	if cfg.port = cmp.Or(env("PORT"), "8080"); !isPort(cfg.port) {
		return cfg, errors.New("PORT: must be a port number from 0 to 65535")
	}
	if err := cfg.logLevel.UnmarshalText([]byte(cmp.Or(env("LOG_LEVEL"), "info"))); err != nil || strings.ContainsAny(env("LOG_LEVEL"), "+-") {
		return cfg, errors.New("LOG_LEVEL: must be debug, info, warn or error")
	}
	if cfg.logFormat = strings.ToLower(cmp.Or(env("LOG_FORMAT"), "text")); cfg.logFormat != "text" && cfg.logFormat != "json" {
		return cfg, errors.New("LOG_FORMAT: must be text or json")
	}
	if cfg.keepResultJSON, err = strconv.ParseBool(cmp.Or(env("KEEP_RESULT_JSON"), "false")); err != nil {
		return cfg, errors.New("KEEP_RESULT_JSON: must be true or false")
	}
	if cfg.dedupeWindow, err = time.ParseDuration(cmp.Or(env("DEDUPE_WINDOW"), "24h")); err != nil || cfg.dedupeWindow < 0 {
		return cfg, errors.New("DEDUPE_WINDOW: must be a duration such as 24h, 90m or 0")
	}
	if cfg.metricsAddr = env("METRICS_ADDR"); cfg.metricsAddr != "" {
		if _, port, err := net.SplitHostPort(cfg.metricsAddr); err != nil || !isPort(port) {
			return cfg, errors.New("METRICS_ADDR: must be host:port or :port, such as :9090 (empty: no metrics)")
		}
	}
	if cfg.shutdownDelay, err = time.ParseDuration(cmp.Or(env("SHUTDOWN_DELAY"), "0s")); err != nil || cfg.shutdownDelay < 0 || cfg.shutdownDelay > time.Minute {
		return cfg, errors.New("SHUTDOWN_DELAY: must be a duration from 0s to 1m, such as 5s")
	}
	return cfg, nil
}

func isPort(s string) bool {
	_, err := strconv.ParseUint(s, 10, 16)
	return err == nil
}
