package main

// Tests of run: the whole service started in this process, its flags,
// its start and its drain.

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestHealthcheck: -healthcheck exits 0 only if /healthz on PORT answers 200.
func TestHealthcheck(t *testing.T) {
	for _, tc := range []struct {
		status int
		ok     bool
	}{{200, true}, {204, false}, {301, false}, {404, false}, {503, false}} {
		t.Run(http.StatusText(tc.status), func(t *testing.T) {
			server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/healthz" || r.Method != http.MethodGet {
					http.NotFound(w, r)
					return
				}
				if tc.status == http.StatusMovedPermanently {
					http.Redirect(w, r, "/elsewhere", tc.status)
					return
				}
				w.WriteHeader(tc.status)
			}))
			defer server.Close()
			_, port, _ := net.SplitHostPort(server.Listener.Addr().String())
			_, err := runBriefly(t, map[string]string{"PORT": " " + port + " "}, "-healthcheck")
			if (err == nil) != tc.ok {
				t.Errorf("/healthz answering %d: -healthcheck returned %v, want ok=%v", tc.status, err, tc.ok)
			}
		})
	}
	t.Run("nothing listening", func(t *testing.T) {
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(listener.Addr().String())
		listener.Close()
		if _, err := runBriefly(t, map[string]string{"PORT": port}, "-healthcheck"); err == nil ||
			!strings.HasPrefix(err.Error(), "healthcheck:") {
			t.Errorf("-healthcheck with nothing on PORT: %v, want a healthcheck error", err)
		}
	})
	t.Run("PORT not a port", func(t *testing.T) {
		if _, err := runBriefly(t, map[string]string{"PORT": "x:y"}, "-healthcheck"); err == nil ||
			!strings.HasPrefix(err.Error(), "PORT:") {
			t.Errorf("-healthcheck with PORT=x:y: %v, want a PORT error", err)
		}
	})
}

func TestUnknownFlagIsAUsageError(t *testing.T) {
	if _, err := runBriefly(t, validEnv, "-verbose"); err == nil || !strings.Contains(err.Error(), "verbose") {
		t.Fatalf("run -verbose: %v, want a usage error", err)
	}
}

func TestVersionOf(t *testing.T) {
	for _, tc := range []struct {
		version string
		info    *debug.BuildInfo
		want    string
	}{
		{"", nil, "unknown"},
		{"v1.2.3", nil, "v1.2.3"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "(devel)"},
		{"", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261205080000-1a2b3c4d5e6f+dirty"}}, "v0.0.0-20261205080000-1a2b3c4d5e6f+dirty"},
		{"v1.2.3", &debug.BuildInfo{Main: debug.Module{Version: "v0.4.0"}}, "v1.2.3"},
	} {
		if got := versionOf(tc.version, tc.info); got != tc.want {
			t.Errorf("versionOf(%q, %v) = %q, want %q", tc.version, tc.info, got, tc.want)
		}
	}
}

// TestRunEndToEnd starts the whole service on a free port, delivers over
// real TCP, then cancels it as SIGTERM would and expects a clean exit.
func TestRunEndToEnd(t *testing.T) {
	api := &fakeAPI{}
	apiServer := httptest.NewServer(api)
	defer apiServer.Close()

	// A deadline, so that a run that does not stop fails the test instead
	// of hanging it.
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	logs, logWriter := io.Pipe()
	// Values as a .env file or a dashboard may give them: spaces around,
	// capitals, credentials in the URL.
	apiURL, _ := url.Parse(apiServer.URL + "/latest/")
	apiURL.User = url.UserPassword("svc", "pa55word")
	env := map[string]string{
		"WEBHOOK_SECRET":   secondSecret + " " + testSecret,
		"OPTIPICK_API_KEY": " " + testAPIKey + "\n",
		"OPTIPICK_API_URL": apiURL.String(),
		"PORT":             " 0",
		"LOG_FORMAT":       "JSON ",
		"LOG_LEVEL":        " Debug",
	}
	runErr := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"optipick-webhooks"}, getenvFrom(env), logWriter, io.Discard)
		logWriter.CloseWithError(io.EOF)
		runErr <- err
	}()

	lines := readLogLines(t, logs)
	waitFor := func(msg string) map[string]any { return lines.waitFor(t, msg) }

	started := waitFor("listening")
	if want := strings.Replace(apiServer.URL, "://", "://svc:xxxxx@", 1) + "/latest/"; started["api_url"] != want {
		t.Errorf("api_url logged as %v, want %s (the password redacted)", started["api_url"], want)
	}
	_, port, err := net.SplitHostPort(started["addr"].(string))
	if err != nil {
		t.Fatal(err)
	}
	base := "http://127.0.0.1:" + port

	resp, err := http.Get(base + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	resp.Body.Close()

	req := signedDelivery(t, testSecret, base+"/webhook/route", requestBody(testRequestID))
	req.RequestURI = ""
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	answer, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(answer) != "fetched\n" ||
		resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf(
			"delivery: %s %q (%s), want 200 \"fetched\\n\" (text/plain; charset=utf-8)",
			resp.Status,
			answer,
			resp.Header.Get("Content-Type"),
		)
	}
	api.assertCalls(t, []apiCall{{Path: "/optimize/route/" + testRequestID, APIKey: testAPIKey}})
	fetched := waitFor("optimization fetched")
	if fetched["picks"] != 3.0 || fetched["request_id"] != testRequestID {
		t.Errorf("summary line = %v", fetched)
	}
	// LOG_LEVEL=debug logs each whole result.
	if raw := waitFor("optimization result"); raw["level"] != "DEBUG" ||
		raw["json"].(map[string]any)["route_id"] != "r1" {
		t.Errorf("debug line = %v, want the whole result", raw)
	}

	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Fatalf("run returned %v after cancel, want nil", err)
		}
	case <-time.After(drainTimeout):
		t.Fatal("run did not return after cancel")
	}
	waitFor("stopped")
	assertNoSecrets(t, lines.all.String())
	if strings.Contains(lines.all.String(), "pa55word") {
		t.Errorf("the URL's password reached the logs:\n%s", lines.all.String())
	}
}

// TestPlainHTTPToAnotherHostIsWarnedAbout: the key would travel in clear
// text; loopback (the simulator) is fine.
func TestPlainHTTPToAnotherHostIsWarnedAbout(t *testing.T) {
	const warning = "OPTIPICK_API_URL is plain http to another machine: the API key travels in clear text; use https"
	for apiURL, wantWarning := range map[string]bool{
		"http://optipick.example":                     true,
		"http://svc:pa55word@optipick.example/latest": true,
		"http://10.1.2.3:8090":                        true,
		"http://127.0.0.1:8090":                       false,
		"http://localhost:8090":                       false,
		"http://[::1]:8090":                           false,
		"https://optipick.example":                    false,
	} {
		t.Run(apiURL, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			logs, logWriter := io.Pipe()
			env := map[string]string{"WEBHOOK_SECRET": testSecret, "OPTIPICK_API_KEY": testAPIKey,
				"OPTIPICK_API_URL": apiURL, "PORT": "0", "LOG_FORMAT": "json"}
			done := make(chan error, 1)
			go func() {
				err := run(ctx, []string{"optipick-webhooks"}, getenvFrom(env), logWriter, io.Discard)
				logWriter.Close()
				done <- err
			}()
			lines := readLogLines(t, logs)
			lines.waitFor(t, "listening")
			cancel()
			lines.waitFor(t, "stopped")
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(lines.all.String(), warning); got != wantWarning {
				t.Errorf("warning logged: %v, want %v\n%s", got, wantWarning, lines.all.String())
			}
			if strings.Contains(lines.all.String(), "pa55word") {
				t.Errorf("the URL's password reached the logs:\n%s", lines.all.String())
			}
		})
	}
}

// TestReadinessFollowsTheDrain: from the moment a shutdown starts, /readyz
// answers 503 while /healthz stays 200 and in-flight deliveries finish.
func TestReadinessFollowsTheDrain(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	api := &fakeAPI{respond: func(w http.ResponseWriter, r *http.Request) {
		once.Do(func() { close(arrived) })
		<-release
		writeClusterResult(w, testRequestID)
	}}
	s := startService(t, api, map[string]string{"SHUTDOWN_DELAY": "1s"})
	get := func(path string) int {
		resp, err := http.Get(s.base + path)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get("/readyz"); got != http.StatusOK {
		t.Fatalf("/readyz before the shutdown: %d, want 200", got)
	}
	inFlight := make(chan int, 1)
	go func() {
		inFlight <- s.send(t, signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID)))
	}()
	<-arrived

	s.stop() // as SIGTERM does
	s.lines.waitFor(t, "shutting down: /readyz answers 503 while load balancers catch up")
	if got := get("/readyz"); got != http.StatusServiceUnavailable {
		t.Errorf("/readyz during the shutdown: %d, want 503", got)
	}
	if got := get("/healthz"); got != http.StatusOK {
		t.Errorf("/healthz during the shutdown: %d, want 200 (the process is alive)", got)
	}
	close(release)
	if got := <-inFlight; got != http.StatusOK {
		t.Errorf("in-flight delivery: %d, want 200", got)
	}
	if err := <-s.done; err != nil {
		t.Fatal(err)
	}
}

// TestHelpGoesToStdout: -h prints the usage on stdout and exits 0.
func TestHelpGoesToStdout(t *testing.T) {
	stdout, err := runBriefly(t, nil, "-h")
	if err != nil || !strings.Contains(stdout, "Usage: optipick-webhooks") ||
		!strings.Contains(stdout, "WEBHOOK_SECRET") {
		t.Errorf("-h: %v, stdout %q; want the usage on stdout and no error", err, stdout)
	}
}

// TestStrayArgumentsAreRefused: the settings come from the environment, so
// an argument (a port, a word) is refused with how to set it, not ignored;
// and not echoed, in case it is a secret pasted in the wrong place.
func TestStrayArgumentsAreRefused(t *testing.T) {
	for _, args := range [][]string{{"8081"}, {"foo", "bar"}, {"-version", "whsec_s3cr3t"}} {
		logs, err := runBriefly(t, validEnv, args...)
		if err == nil || !strings.Contains(err.Error(), "PORT=9000") || logs != "" {
			t.Errorf("run %v: %v (logs %q), want a startup error that says how to set PORT", args, err, logs)
			continue
		}
		if strings.Contains(err.Error(), args[len(args)-1]) {
			t.Errorf("run %v: %q repeats the argument", args, err)
		}
	}
}

// TestTheEnvFileHintOnlyWithoutOne: a required variable missing suggests
// copying .env.example only when there is no .env; other errors get no hint.
func TestTheEnvFileHintOnlyWithoutOne(t *testing.T) {
	_, missing := runBriefly(t, map[string]string{"OPTIPICK_API_KEY": testAPIKey})
	_, wrong := runBriefly(t, merge(validEnv, map[string]string{"PORT": "http"}))
	for _, tc := range []struct {
		err          error
		envFileFound bool
		want         bool
	}{
		{missing, false, true},
		{missing, true, false},
		{wrong, false, false},
	} {
		if hint := startupHint(tc.err, tc.envFileFound); (hint != "") != tc.want {
			t.Errorf("%v with a .env: %v: hint %q", tc.err, tc.envFileFound, hint)
		}
	}
}

// TestThePlaceholderAPIKeyIsWarnedAbout: .env.example's API key left in
// place starts the service (the simulator takes any key), with a warning.
func TestThePlaceholderAPIKeyIsWarnedAbout(t *testing.T) {
	logs, err := runBriefly(t, merge(validEnv, map[string]string{"OPTIPICK_API_KEY": placeholderAPIKey}))
	if err != nil || !strings.Contains(logs, "OPTIPICK_API_KEY is still .env.example's placeholder") {
		t.Errorf("run with the placeholder key: %v, logs:\n%s\nwant a warning", err, logs)
	}
	if logs, _ := runBriefly(t, validEnv); strings.Contains(logs, "placeholder") {
		t.Errorf("a real key warned about:\n%s", logs)
	}
}
