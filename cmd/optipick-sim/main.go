// Command optipick-sim is a development tool: a local stand-in for the
// OptiPick API and its Svix webhook delivery, for running the receiver
// offline. It is not part of the receiver and is not OptiPick.
//
//	optipick-sim [flags]                      serve the API, deliver webhooks
//	optipick-sim send -kind K -request-id ID  deliver one signed webhook now
//	optipick-sim resend -svix-id msg_... ...  the same, replaying a message id
//
// It reads the same .env as the receiver (WEBHOOK_SECRET, OPTIPICK_API_KEY,
// PORT); flags override it. Start an optimization with
//
//	curl -X POST 'http://127.0.0.1:8090/optimize/cluster?synchronous=false' \
//	  -H "X-API-KEY: $OPTIPICK_API_KEY" -d "$(optipick-sim -example)"
//
// and it delivers the signed webhook to the receiver when it is done.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/joho/godotenv"

	"optipick-webhooks/internal/optipicksim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := godotenv.Load(); err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "error: .env: cannot be read or parsed (expected KEY=value lines)")
		os.Exit(1)
	}
	if err := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// devTimeScale is the default retry scale: development waits seconds or
// minutes, not hours.
const devTimeScale = 0.1

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 1 && (args[1] == "send" || args[1] == "resend") {
		return send(ctx, args[1], args[2:], getenv, stdout, stderr)
	}
	receiverURL := receiverBaseURL(getenv)
	flags := flag.NewFlagSet("optipick-sim", flag.ContinueOnError)
	flags.Usage = func() {
		fmt.Fprint(flags.Output(), "usage: optipick-sim [flags]                                    serve the API and deliver webhooks\n"+
			"       optipick-sim send -kind K -request-id ID [-svix-id msg_...]   deliver one now (send -h)\n"+
			"       optipick-sim resend -svix-id msg_... -kind K -request-id ID   replay a message id\n")
		flags.PrintDefaults()
	}
	addr := flags.String("addr", "127.0.0.1:8090", "address to serve the simulated API on (port 0: a free one, logged)")
	// The key and secrets have no default value of their own: help would
	// print it (-h with a real .env showed the real secret). An unset flag
	// takes the environment's value after parsing.
	apiKey := flags.String("api-key", "", "the X-API-KEY to accept (default: "+fromEnv(getenv, "OPTIPICK_API_KEY", "from $OPTIPICK_API_KEY")+")")
	secret := flags.String("secret", "", "whsec_ secret to sign deliveries with (default: "+fromEnv(getenv, "WEBHOOK_SECRET", "the first in $WEBHOOK_SECRET")+")")
	routeSecret := flags.String("route-secret", "", "another secret for route deliveries (default: -secret)")
	clusterURL := flags.String("cluster-url", receiverURL+"/webhook/cluster", "where to deliver cluster.optimized (empty: nowhere; default: the receiver's $PORT)")
	routeURL := flags.String("route-url", receiverURL+"/webhook/route", "where to deliver route.optimized (empty: nowhere; default: the receiver's $PORT)")
	delay := flags.Duration("delay", time.Second, "how long an optimization takes")
	timeScale := flags.Float64("time-scale", devTimeScale, fmt.Sprintf("multiplies Svix's retry schedule (%s), each wait at least -retry-floor: %g retries after %s; 1 is Svix's own",
		retriesAfter(optipicksim.RetrySchedule), devTimeScale, retriesAfter(optipicksim.RetryDelays(devTimeScale, optipicksim.DefaultRetryFloor))))
	retryFloor := flags.Duration("retry-floor", optipicksim.DefaultRetryFloor, "the shortest wait before a retry: over the receiver's 2 s memory of a failure, which answers earlier retries without fetching (0: none)")
	apiFault := flags.String("api-fault", "none", "make every GET of a result fail: 500, 503, 429 (with Retry-After: 1) or hang (no answer until the client gives up), to watch the receiver retry")
	apiFaultFor := flags.Duration("api-fault-for", 0, "end the -api-fault outage this long after start (0: it lasts until the simulator stops)")
	logFormat := flags.String("log-format", "text", "text or json")
	example := flags.Bool("example", false, "print the Example warehouse request (10 picks over 5 orders) and exit")
	newSecret := flags.Bool("new-secret", false, "print a new random whsec_ secret and exit")
	if help, err := parse(flags, args[min(1, len(args)):], stdout, stderr); help || err != nil {
		return err
	}
	if !isSet(flags, "api-key") {
		*apiKey = getenv("OPTIPICK_API_KEY")
	}
	if !isSet(flags, "secret") {
		*secret = firstSecret(getenv)
	}

	switch {
	case *example:
		out, _ := json.MarshalIndent(optipicksim.ExampleRequest(), "", "  ")
		fmt.Fprintf(stdout, "%s\n", out)
		return nil
	case *newSecret:
		fmt.Fprintln(stdout, optipicksim.NewSecret())
		return nil
	}
	if *apiKey == "" {
		return errors.New("-api-key or OPTIPICK_API_KEY: required (any value; the receiver must send the same)")
	}
	if *routeSecret == "" {
		*routeSecret = *secret
	}
	if *retryFloor < 0 {
		return errors.New("-retry-floor: must not be negative (0: no floor)")
	}
	fault, err := optipicksim.ParseAPIFault(*apiFault)
	if err != nil {
		return fmt.Errorf("-api-fault: %w", err)
	}
	var logger *slog.Logger
	switch *logFormat {
	case "text":
		logger = slog.New(slog.NewTextHandler(stdout, nil))
	case "json":
		logger = slog.New(slog.NewJSONHandler(stdout, nil))
	default:
		return errors.New("-log-format: must be text or json")
	}

	sim, err := optipicksim.New(optipicksim.Config{
		APIKey:        *apiKey,
		Cluster:       optipicksim.Receiver{URL: *clusterURL, Secret: *secret},
		Route:         optipicksim.Receiver{URL: *routeURL, Secret: *routeSecret},
		OptimizeDelay: *delay,
		TimeScale:     *timeScale,
		RetryFloor:    cmp.Or(*retryFloor, -1), // 0: none (Config's -1)
		APIFault:      fault,
		Logger:        logger,
	})
	if err != nil {
		return fmt.Errorf("%w (-secret or WEBHOOK_SECRET; make one with -new-secret)", err)
	}
	defer sim.Close()

	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("-addr: %w", err)
	}
	srv := &http.Server{Handler: sim.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	logger.Info("listening", "addr", listener.Addr().String(), "cluster_url", *clusterURL, "route_url", *routeURL,
		"time_scale", *timeScale, "retry_floor", retryFloor.String(), "retries_after", retriesAfter(sim.RetryDelays()), "api_fault", fault.String())
	if fault != (optipicksim.APIFault{}) && *apiFaultFor > 0 {
		outage := time.AfterFunc(*apiFaultFor, func() { sim.SetAPIFault(optipicksim.APIFault{}) })
		defer outage.Stop()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(listener) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sim.Close() // stops pending deliveries; Shutdown waits for open requests
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

// retriesAfter is a retry schedule, readably.
func retriesAfter(delays []time.Duration) string {
	var parts []string
	for _, d := range delays {
		if d > time.Millisecond {
			d = d.Round(time.Millisecond)
		}
		parts = append(parts, d.String())
	}
	return strings.Join(parts, ", ")
}

// parse parses args. Help asked for (-h or -help) goes to stdout, and
// reports help with no error: the command then exits 0. After a wrong flag,
// the flag package's message and the usage go to stderr.
func parse(flags *flag.FlagSet, args []string, stdout, stderr io.Writer) (help bool, err error) {
	var usage bytes.Buffer
	flags.SetOutput(&usage)
	err = flags.Parse(args)
	flags.SetOutput(stderr)
	if errors.Is(err, flag.ErrHelp) {
		_, err = usage.WriteTo(stdout)
		return true, err
	}
	usage.WriteTo(stderr)
	return false, err
}

// isSet reports whether the command line set the flag.
func isSet(flags *flag.FlagSet, name string) bool {
	set := false
	flags.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// fromEnv says where a secret flag's default comes from (where is
// "from $NAME" or "the first in $NAME") and whether it is set there, never
// its value.
func fromEnv(getenv func(string) string, name, where string) string {
	if strings.TrimSpace(getenv(name)) == "" {
		return "none: $" + name + " is not set"
	}
	return "set, " + where
}

// firstSecret is the first of $WEBHOOK_SECRET's secrets.
func firstSecret(getenv func(string) string) string {
	if secrets := strings.Fields(strings.ReplaceAll(getenv("WEBHOOK_SECRET"), ",", " ")); len(secrets) > 0 {
		return secrets[0]
	}
	return ""
}

// receiverBaseURL is where the receiver listens by default: on $PORT (as
// the receiver reads it), else 8080.
func receiverBaseURL(getenv func(string) string) string {
	port := "8080"
	if n, err := strconv.Atoi(getenv("PORT")); err == nil && n > 0 && n < 65536 {
		port = strconv.Itoa(n)
	}
	return "http://127.0.0.1:" + port
}
