// Command optipick-webhooks receives OptiPick's Svix-signed webhooks, proves
// they are genuine, fetches the finished optimization from the OptiPick REST
// API and logs it. It answers 2xx only once that work is done, so Svix's
// retries make delivery at-least-once.
//
// The files, by role: main.go starts and stops the service; config.go reads
// its settings; server.go holds the routes and the HTTP servers; handler.go
// reads, verifies and answers a delivery; process.go is what happens with a
// result (the file to edit); optipick_client.go fetches it, and result.go
// reads it (the struct to add a field to); dedupe.go remembers messages;
// logging.go makes the logs. connlimit.go and metrics.go are optional:
// delete either, with its test file, and the rest builds without it.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/joho/godotenv"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // a second signal ends the process at once
	}()
	// Real environment variables win. godotenv's errors quote the file,
	// secrets included, so its error is not shown.
	err := godotenv.Load()
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "error: .env: cannot be read or parsed (expected KEY=value lines)")
		os.Exit(1)
	}
	envFileFound := err == nil
	if err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		if hint := startupHint(err, envFileFound); hint != "" {
			fmt.Fprintln(os.Stderr, "hint:", hint)
		}
		os.Exit(1)
	}
}

// startupHint is a hint for a startup error: a required variable that is
// not set, when there is no .env, suggests making one.
func startupHint(err error, envFileFound bool) string {
	if errors.Is(err, errRequired) && !envFileFound {
		return "no .env here? cp .env.example .env and fill it in"
	}
	return ""
}

// version is set at build time (-ldflags "-X main.version=v1.2.3"); when it
// is not, the module's version, which Go stamps from git, is shown.
var version string

// run starts the receiver and blocks until ctx is cancelled, then drains
// in-flight deliveries. Logs go to stdout; stderr is for usage errors.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if done, err := runFlags(args, getenv, stdout, stderr); done || err != nil {
		return err
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	logger := newLogger(stdout, cfg.logLevel, cfg.logFormat)
	seen := newDedupe(cfg.dedupeWindow, dedupeCapacity)
	var metrics recorder = noMetrics{}
	var metricsHandler http.Handler
	if cfg.metricsAddr != "" {
		metrics, metricsHandler = newMetrics(buildVersion(), seen.Len)
	}
	client := newOptiPickClient(cfg.apiURL, cfg.apiKey, cfg.keepResultJSON, metrics)
	var ready atomic.Bool
	webhooks := newServer(webhookDeps{
		logger:   logger,
		verifier: cfg.verifier,
		seen:     seen,
		fetch:    client.fetch,
		process:  logSummary(logger),
		metrics:  metrics,
	}, ready.Load)

	// The webhook server first: it is drained first, and the last scrape
	// of the metrics sees the drain.
	servers := newServerGroup(logger)
	defer servers.close()
	addr, err := servers.start("PORT", net.JoinHostPort("", cfg.port), webhooks)
	if err != nil {
		return err
	}
	if metricsHandler != nil {
		metricsAddr, err := servers.start("METRICS_ADDR", cfg.metricsAddr, metricsHandler)
		if err != nil {
			return err
		}
		logger.Info("serving metrics", "addr", metricsAddr.String(), "path", "/metrics")
	}
	ready.Store(true)
	logListening(logger, addr, cfg)

	select {
	case err := <-servers.failed:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	ready.Store(false)
	return drain(logger, servers, cfg.shutdownDelay)
}

// runFlags reads the command line: two flags, and no arguments (the
// settings come from the environment). done reports that it did what the
// command line asked (-h, -version or -healthcheck), or that it was wrong:
// run has nothing left to do. Help asked for goes to stdout; after a
// mistake, to stderr.
func runFlags(args []string, getenv func(string) string, stdout, stderr io.Writer) (done bool, err error) {
	flags := flag.NewFlagSet("optipick-webhooks", flag.ContinueOnError)
	var help bytes.Buffer
	flags.SetOutput(&help)
	flags.Usage = func() {
		fmt.Fprintln(&help, "Usage: optipick-webhooks [-healthcheck | -version]")
		flags.PrintDefaults()
		fmt.Fprint(&help, usage)
	}
	healthcheck := flags.Bool("healthcheck", false,
		"GET /healthz on this machine's PORT and exit 0 if it answers 200 (for container HEALTHCHECKs)")
	showVersion := flags.Bool("version", false, "print the version and exit")
	err = flags.Parse(args[min(1, len(args)):])
	switch {
	case errors.Is(err, flag.ErrHelp):
		help.WriteTo(stdout)
		return true, nil
	case err != nil:
		help.WriteTo(stderr)
		return true, err
	case flags.NArg() > 0: // not echoed: it may be a secret pasted in the wrong place
		return true, fmt.Errorf("%d unexpected argument(s): the settings come from the environment, "+
			"such as PORT=9000 optipick-webhooks (see -h)", flags.NArg())
	case *showVersion:
		fmt.Fprintln(stdout, "optipick-webhooks", buildVersion(), runtime.Version())
		return true, nil
	case *healthcheck:
		return true, checkHealth(getenv)
	}
	return false, nil
}

// buildVersion is version, else the module's version: a tag, or a
// pseudo-version naming the git revision.
func buildVersion() string {
	info, _ := debug.ReadBuildInfo()
	return versionOf(version, info)
}

func versionOf(v string, info *debug.BuildInfo) string {
	if v == "" && info != nil {
		v = info.Main.Version
	}
	if v == "" {
		return "unknown"
	}
	return v
}

// checkHealth is -healthcheck: distroless images have no curl, so the
// binary probes itself.
func checkHealth(getenv func(string) string) error {
	port, err := readPort(getenv)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://127.0.0.1:" + port + "/healthz")
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /healthz answered %s", resp.Status)
	}
	return nil
}

// logListening logs where the service listens and with what, and warns
// about an API URL that would send the key in clear text.
func logListening(logger *slog.Logger, addr net.Addr, cfg config) {
	logger.Info("listening",
		"addr", addr.String(),
		"version", buildVersion(),
		"api_url", cfg.apiURL.Redacted(),
		"secrets", len(cfg.verifier),
		"dedupe_window", cfg.dedupeWindow.String())
	if cfg.apiKey == placeholderAPIKey {
		logger.Warn("OPTIPICK_API_KEY is still .env.example's placeholder: OptiPick will refuse every fetch " +
			"(the simulator takes any key); create a key in OptiPick under Settings → API Keys")
	}
	if cfg.apiURL.Scheme == "http" && !isLoopback(cfg.apiURL.Hostname()) {
		logger.Warn("OPTIPICK_API_URL is plain http to another machine: the API key travels in clear text; use https",
			"api_url", cfg.apiURL.Redacted())
	}
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// drain shuts the servers down: /readyz already answers 503; after
// shutdownDelay (while load balancers catch up), in-flight deliveries get
// drainTimeout to finish.
func drain(logger *slog.Logger, servers *serverGroup, shutdownDelay time.Duration) error {
	if shutdownDelay > 0 {
		logger.Info("shutting down: /readyz answers 503 while load balancers catch up",
			"delay", shutdownDelay.String())
		time.Sleep(shutdownDelay)
	}
	logger.Info("shutting down: draining in-flight deliveries", "deadline", drainTimeout.String())
	// The drain's deadline must not derive from run's ctx: it is already
	// cancelled.
	ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	if err := servers.shutdown(ctx); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}
