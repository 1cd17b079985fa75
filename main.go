// Command optipick-webhooks receives OptiPick's Svix-signed webhooks, proves
// they are genuine, fetches the finished optimization from the OptiPick REST
// API and logs it. It answers 2xx only once that work is done, so Svix's
// retries make delivery at-least-once.
package main

import (
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
	"strconv"
	"strings"
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
	// bounds what clients can make the service hold.
	maxConnections = 256

	// dedupeCapacity bounds how many handled deliveries are remembered.
	dedupeCapacity = 100_000

	defaultAPIURL       = "https://optipick.api.optioryx.com"
	defaultPort         = "8080"
	defaultDedupeWindow = 24 * time.Hour
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

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

// run starts the receiver and blocks until ctx is cancelled, then drains
// in-flight deliveries. Logs go to stdout; stderr is for usage errors.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("optipick-webhooks", flag.ContinueOnError)
	flags.SetOutput(stderr)
	healthcheck := flags.Bool("healthcheck", false, "GET /healthz on this machine's PORT and exit 0 if it answers 200 (for container HEALTHCHECKs)")
	if err := flags.Parse(args[min(1, len(args)):]); err != nil {
		return err
	}
	if *healthcheck {
		return checkHealth(ctx, getenv)
	}

	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	logger := newLogger(stdout, cfg.logLevel, cfg.logFormat)

	client := newOptiPickClient(cfg.apiURL, cfg.apiKey, cfg.logLevel <= slog.LevelDebug, nil)
	handler := newServer(logger, cfg.verifier, client.fetch, logSummary(logger), newDedupe(cfg.dedupeWindow, dedupeCapacity))
	srv := newHTTPServer(handler, logger)

	tcp, err := net.Listen("tcp", net.JoinHostPort("", cfg.port))
	if err != nil {
		return fmt.Errorf("PORT: cannot listen: %w", err)
	}
	listener := newConnLimitListener(tcp, maxConnections)
	srv.ConnState = listener.trackState
	logger.Info("listening", "addr", listener.Addr().String(), "api_url", cfg.apiURL.Redacted(),
		"secrets", len(cfg.verifier), "dedupe_window", cfg.dedupeWindow.String())
	if cfg.apiURL.Scheme == "http" && !isLoopback(cfg.apiURL.Hostname()) {
		logger.Warn("OPTIPICK_API_URL is plain http to another machine: the API key travels in clear text; use https",
			"api_url", cfg.apiURL.Redacted())
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(listener) }()

	select {
	case err := <-serveErr:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}

	logger.Info("shutting down: draining in-flight deliveries", "deadline", drainTimeout.String())
	// The drain deadline must not derive from ctx: ctx is already cancelled.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving: %w", err)
	}
	logger.Info("stopped")
	return nil
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
	verifier     verifier
	apiKey       string
	apiURL       *url.URL
	port         string
	logLevel     slog.Level
	logFormat    string
	dedupeWindow time.Duration
}

// loadConfig reads and checks every variable. Its errors name the variable
// and never repeat its value, which may be a secret.
func loadConfig(getenv func(string) string) (config, error) {
	var cfg config
	var err error

	if cfg.verifier, err = newVerifier(getenv("WEBHOOK_SECRET")); err != nil {
		return config{}, fmt.Errorf("WEBHOOK_SECRET: %w", err)
	}

	cfg.apiKey = strings.TrimSpace(getenv("OPTIPICK_API_KEY"))
	if cfg.apiKey == "" {
		return config{}, errors.New("OPTIPICK_API_KEY: required (create one in OptiPick under Settings → API Keys)")
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
	if n, err := strconv.ParseUint(cfg.port, 10, 16); err != nil || n > 65535 {
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
