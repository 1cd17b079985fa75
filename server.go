package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path"
	"time"
)

const (
	// The server's deadlines: a client has 5 s to send its headers, 10 s
	// for the whole request, and its answer is written within 15 s (a
	// delivery takes up to its deliveryDeadline). Idle keep-alive
	// connections close after 30 s.
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = deliveryDeadline + 5*time.Second
	idleTimeout       = 30 * time.Second
	// Svix sends a few hundred bytes of headers; ingresses add some.
	maxHeaderBytes = 16 << 10
	// drainTimeout is how long a shutdown waits for in-flight deliveries:
	// longer than deliveryDeadline, so that each gets its answer.
	drainTimeout = deliveryDeadline + 5*time.Second
	// maxConnections is how many connections each port serves at once, when
	// connlimit.go is built in. A newcomer closes one once it is shedAfter
	// old, so this also sets how fast a flood of them is turned over (2,560
	// a second).
	maxConnections = 256
)

// newServer is the whole service as one http.Handler: it registers every
// route. ready reports false once a shutdown starts. Answers are plain
// ASCII, which net/http names text/plain.
func newServer(deps webhookDeps, ready func() bool) http.Handler {
	rejected := newRejectLog(deps.logger)
	mux := http.NewServeMux()
	mux.Handle("POST /webhook/cluster", handleWebhook(deps, rejected, kindCluster))
	mux.Handle("POST /webhook/route", handleWebhook(deps, rejected, kindRoute))
	mux.Handle("POST /webhook", handleWebhook(deps, rejected, kindCluster)) // OptiPick's original example
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(ready))
	return refuseUncleanPaths(mux)
}

// handleHealthz answers liveness: the process serves.
func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
}

// handleReadyz answers readiness: 503 from the moment a shutdown starts.
func handleReadyz(ready func() bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !ready() {
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
}

// refuseUncleanPaths answers 404 where ServeMux would redirect to a clean
// path (/webhook//route): Svix counts a redirect as a failure.
func refuseUncleanPaths(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "" || r.URL.Path != path.Clean(r.URL.Path) {
			http.NotFound(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// newHTTPServer serves handler with a deadline on every phase, so that
// slow or stalled clients cannot hold connections.
func newHTTPServer(handler http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// The optional parts register themselves here, from their own files, so
// that deleting such a file (with its test file) removes the part and
// nothing else.

// limitConnections caps the connections srv serves from l; connlimit.go
// sets it. Without that file it is nil, and connections are not capped.
var limitConnections func(l net.Listener, srv *http.Server, maxConns int) net.Listener

// recorder counts what the service does; metrics.go has the Prometheus one.
type recorder interface {
	deliveryStarted(k kind) (ended func(outcome)) // a delivery, until it ends
	apiCalled(status int, took time.Duration)     // status 0: no answer
}

// noMetrics is the recorder when metrics are off: it records nothing.
type noMetrics struct{}

func (noMetrics) deliveryStarted(kind) func(outcome) { return func(outcome) {} }
func (noMetrics) apiCalled(int, time.Duration)       {}

// newMetrics makes the Prometheus recorder and its /metrics handler;
// metrics.go sets it. Without that file it is nil, and METRICS_ADDR is
// refused.
var newMetrics func(version string, dedupeEntries func() int) (recorder, http.Handler)

// serverGroup runs the service's servers (the webhook port, and the
// metrics port when it is set), and stops them together.
type serverGroup struct {
	logger  *slog.Logger
	servers []*http.Server
	failed  chan error // a server that stopped serving on its own
}

func newServerGroup(logger *slog.Logger) *serverGroup {
	return &serverGroup{logger: logger, failed: make(chan error, 2)}
}

// start serves handler on addr, the value of the variable named variable,
// and returns the address it listens on.
func (g *serverGroup) start(variable, addr string, handler http.Handler) (net.Addr, error) {
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot listen: %w", variable, err)
	}
	srv := newHTTPServer(handler, g.logger)
	var listener net.Listener = tcp
	if limitConnections != nil {
		listener = limitConnections(tcp, srv, maxConnections)
	} else {
		g.logger.Warn("connections are not capped: this build has no connlimit.go; cap them in front of it",
			"variable", variable)
	}
	g.servers = append(g.servers, srv)
	go func() {
		if err := srv.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
			g.failed <- err
		}
	}()
	return tcp.Addr(), nil
}

// shutdown stops the servers in the order they started, each waiting for
// its in-flight requests until ctx ends.
func (g *serverGroup) shutdown(ctx context.Context) error {
	for _, srv := range g.servers {
		if err := srv.Shutdown(ctx); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	return nil
}

// close stops the servers at once; after shutdown it does nothing.
func (g *serverGroup) close() {
	for _, srv := range g.servers {
		srv.Close()
	}
}
