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
	// drainTimeout is how long a shutdown waits for in-flight deliveries.
	// It is longer than deliveryDeadline so that every delivery that was
	// accepted gets its answer; an orchestrator's grace period must exceed it.
	drainTimeout = deliveryDeadline + 5*time.Second

	// maxConnections bounds the connections served at once (see
	// connLimitListener): with the server's timeouts and the body cap, it
	// bounds what clients can make the service hold. The metrics port has
	// a cap of its own: a scraper or two need a handful.
	maxConnections        = 256
	maxMetricsConnections = 16

	// dedupeCapacity bounds how many handled deliveries are remembered.
	dedupeCapacity = 100_000

	defaultAPIURL       = "https://optipick.api.optioryx.com"
	defaultPort         = "8080"
	defaultDedupeWindow = 24 * time.Hour
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one ends the process at once.
	go func() {
		<-ctx.Done()
		stop()
	}()

	// Real environment variables win: Load never overrides a set variable.
	// Its errors quote the file's contents, secrets included, so say less.
	if err := godotenv.Load(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "error: .env: cannot be read or parsed (expected KEY=value lines)")
		os.Exit(1)
	}
	if err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// version is set at build time (make build, the Dockerfile:
// -ldflags "-X main.version=v1.2.3"); otherwise the module's version.
var version string

// usage is what -h prints after the flags.
const usage = `
Configuration comes from the environment (and a .env file in the working
directory; real environment variables win). See .env.example.

  WEBHOOK_SECRET    required: the endpoints' whsec_ signing secrets, separated by spaces or commas
  OPTIPICK_API_KEY  required: an OptiPick API key (Settings > API Keys), sent as X-API-KEY
  OPTIPICK_API_URL  the API base URL (default ` + defaultAPIURL + `)
  PORT              the webhook port on all interfaces (default ` + defaultPort + `; 0: a free one)
  LOG_LEVEL         debug, info (default), warn or error; debug logs each result's whole JSON
  LOG_FORMAT        text (default) or json
  DEDUPE_WINDOW     how long a handled svix-id is remembered (default 24h; 0: off)
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
	if err := flags.Parse(args[min(1, len(args)):]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	switch {
	case *healthcheck:
		return checkHealth(ctx, getenv)
	case *showVersion:
		fmt.Fprintln(stdout, "optipick-webhooks", buildVersion(), runtime.Version())
		return nil
	}

	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	logger := newLogger(stdout, cfg.logLevel, cfg.logFormat)

	seen := newDedupe(cfg.dedupeWindow, dedupeCapacity)
	var metrics *serviceMetrics
	if cfg.metricsAddr != "" {
		metrics = newServiceMetrics(buildVersion(), seen.Len)
	}
	var ready atomic.Bool
	client := newOptiPickClient(cfg.apiURL, cfg.apiKey, cfg.logLevel <= slog.LevelDebug, nil)
	client.metrics = metrics
	handler := newServer(logger, cfg.verifier, client.fetch, logSummary(logger), seen, metrics, ready.Load)
	srv := newHTTPServer(handler, logger)

	tcp, err := net.Listen("tcp", net.JoinHostPort("", cfg.port))
	if err != nil {
		return fmt.Errorf("PORT: cannot listen: %w", err)
	}
	listener := newConnLimitListener(tcp, maxConnections)
	srv.ConnState, srv.ConnContext = listener.trackState, listener.connContext
	servers := []*http.Server{srv}
	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve(listener) }()
	if metrics != nil {
		tcp, err := net.Listen("tcp", cfg.metricsAddr)
		if err != nil {
			srv.Close()
			return fmt.Errorf("METRICS_ADDR: cannot listen: %w", err)
		}
		metricsListener := newConnLimitListener(tcp, maxMetricsConnections)
		metricsSrv := newHTTPServer(metrics.handler(), logger)
		metricsSrv.ConnState, metricsSrv.ConnContext = metricsListener.trackState, metricsListener.connContext
		servers = append(servers, metricsSrv)
		go func() { serveErr <- metricsSrv.Serve(metricsListener) }()
		logger.Info("serving metrics", "addr", metricsListener.Addr().String(), "path", "/metrics")
	}
	ready.Store(true)
	logger.Info("listening", "addr", listener.Addr().String(), "version", buildVersion(), "api_url", cfg.apiURL.Redacted(),
		"secrets", len(cfg.verifier), "dedupe_window", cfg.dedupeWindow.String())
	if cfg.apiURL.Scheme == "http" && !isLoopback(cfg.apiURL.Hostname()) {
		logger.Warn("OPTIPICK_API_URL is plain http to another machine: the API key travels in clear text; use https",
			"api_url", cfg.apiURL.Redacted())
	}

	select {
	case err := <-serveErr:
		for _, s := range servers {
			s.Close()
		}
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}

	ready.Store(false)
	if cfg.shutdownDelay > 0 {
		// Still serving: the load balancer sees /readyz fail and stops sending.
		logger.Info("shutting down: /readyz answers 503 while load balancers catch up", "delay", cfg.shutdownDelay.String())
		time.Sleep(cfg.shutdownDelay)
	}
	logger.Info("shutting down: draining in-flight deliveries", "deadline", drainTimeout.String())
	// The drain deadline must not derive from ctx: ctx is already cancelled.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	// The webhook server first, then metrics: the last scrape sees the drain.
	for _, s := range servers {
		if err := s.Shutdown(shutdownCtx); err != nil {
			for _, s := range servers {
				s.Close()
			}
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

// buildVersion is the version set at build time, else the module's, with
// the VCS revision the binary was built from when Go recorded it.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	return versionOf(version, info, ok)
}

func versionOf(v string, info *debug.BuildInfo, ok bool) string {
	if !ok {
		return cmp.Or(v, "unknown")
	}
	v = cmp.Or(v, info.Main.Version)
	var revision, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value[:min(len(s.Value), 12)]
		case "vcs.modified":
			if s.Value == "true" {
				modified = "-dirty"
			}
		}
	}
	// git describe's versions name the revision already: v1.2.0-3-g1a2b3c4.
	if revision != "" && !strings.Contains(v, revision[:min(7, len(revision))]) {
		v += " (" + revision + modified + ")"
	}
	return v
}

// newHTTPServer wraps the handler in an http.Server whose every phase has a
// deadline, so that slow or stalled clients cannot hold connections forever.
func newHTTPServer(handler http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      deliveryDeadline + 5*time.Second,
		IdleTimeout:       30 * time.Second,
		// Svix sends a few hundred bytes of headers; ingresses add some.
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// isLoopback reports whether host names this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

type config struct {
	verifier      verifier
	metricsAddr   string
	shutdownDelay time.Duration
	apiKey        string
	apiURL        *url.URL
	port          string
	logLevel      slog.Level
	logFormat     string
	dedupeWindow  time.Duration
}

// loadConfig reads and checks every variable. Its errors name the variable
// and never repeat its value, which may be a secret.
func loadConfig(getenv func(string) string) (config, error) {
	var cfg config
	var err error

	if cfg.verifier, err = newVerifier(getenv("WEBHOOK_SECRET")); err != nil {
		if strings.TrimSpace(getenv("WEBHOOK_SECRET")) == "" {
			err = fmt.Errorf("%w (no .env here? cp .env.example .env and fill it in)", err)
		}
		return config{}, fmt.Errorf("WEBHOOK_SECRET: %w", err)
	}

	cfg.apiKey = strings.TrimSpace(getenv("OPTIPICK_API_KEY"))
	if cfg.apiKey == "" {
		return config{}, errors.New("OPTIPICK_API_KEY: required (create one in OptiPick under Settings → API Keys; no .env here? cp .env.example .env and fill it in)")
	}
	if strings.ContainsAny(cfg.apiKey, "\r\n") {
		return config{}, errors.New("OPTIPICK_API_KEY: must be a single line")
	}

	rawURL := strings.TrimSpace(getenv("OPTIPICK_API_URL"))
	if rawURL == "" {
		rawURL = defaultAPIURL
	}
	cfg.apiURL, err = url.Parse(rawURL)
	if err != nil || (cfg.apiURL.Scheme != "http" && cfg.apiURL.Scheme != "https") || cfg.apiURL.Host == "" ||
		cfg.apiURL.RawQuery != "" || cfg.apiURL.Fragment != "" {
		return config{}, errors.New("OPTIPICK_API_URL: must be an absolute http(s) URL without query or fragment, such as " + defaultAPIURL)
	}

	cfg.port = strings.TrimSpace(getenv("PORT"))
	if cfg.port == "" {
		cfg.port = defaultPort
	}
	// 0 asks the system for a free port; the "listening" log line tells which.
	if _, err := strconv.ParseUint(cfg.port, 10, 16); err != nil {
		return config{}, errors.New("PORT: must be a port number from 0 to 65535")
	}

	switch level := strings.ToLower(strings.TrimSpace(getenv("LOG_LEVEL"))); level {
	case "", "info":
		cfg.logLevel = slog.LevelInfo
	case "debug":
		cfg.logLevel = slog.LevelDebug
	case "warn":
		cfg.logLevel = slog.LevelWarn
	case "error":
		cfg.logLevel = slog.LevelError
	default:
		return config{}, errors.New("LOG_LEVEL: must be debug, info, warn or error")
	}

	switch cfg.logFormat = strings.ToLower(strings.TrimSpace(getenv("LOG_FORMAT"))); cfg.logFormat {
	case "":
		cfg.logFormat = "text"
	case "text", "json":
	default:
		return config{}, errors.New("LOG_FORMAT: must be text or json")
	}

	cfg.dedupeWindow = defaultDedupeWindow
	if raw := strings.TrimSpace(getenv("DEDUPE_WINDOW")); raw != "" {
		if cfg.dedupeWindow, err = time.ParseDuration(raw); err != nil || cfg.dedupeWindow < 0 {
			return config{}, errors.New("DEDUPE_WINDOW: must be a duration such as 24h, 90m or 0 (off)")
		}
	}

	if cfg.metricsAddr = strings.TrimSpace(getenv("METRICS_ADDR")); cfg.metricsAddr != "" {
		if _, port, err := net.SplitHostPort(cfg.metricsAddr); err != nil || port == "" {
			return config{}, errors.New("METRICS_ADDR: must be host:port or :port, such as :9090 (empty: no metrics)")
		}
	}

	if raw := strings.TrimSpace(getenv("SHUTDOWN_DELAY")); raw != "" {
		if cfg.shutdownDelay, err = time.ParseDuration(raw); err != nil || cfg.shutdownDelay < 0 || cfg.shutdownDelay > time.Minute {
			return config{}, errors.New("SHUTDOWN_DELAY: must be a duration from 0s to 1m, such as 5s")
		}
	}
	return cfg, nil
}

func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// checkHealth is the -healthcheck mode: distroless images have no shell or
// curl, so the binary probes itself.
func checkHealth(ctx context.Context, getenv func(string) string) error {
	port := strings.TrimSpace(getenv("PORT"))
	if port == "" {
		port = defaultPort
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort("127.0.0.1", port)+"/healthz", nil)
	if err != nil {
		return fmt.Errorf("PORT: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /healthz answered %s", resp.Status)
	}
	return nil
}
