package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

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
	if resp.StatusCode != http.StatusOK || string(answer) != "fetched\n" || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("delivery: %s %q (%s), want 200 \"fetched\\n\" (text/plain; charset=utf-8)", resp.Status, answer, resp.Header.Get("Content-Type"))
	}
	api.assertCalls(t, []apiCall{{Path: "/optimize/route/" + testRequestID, APIKey: testAPIKey}})
	fetched := waitFor("optimization fetched")
	if fetched["picks"] != 3.0 || fetched["request_id"] != testRequestID {
		t.Errorf("summary line = %v", fetched)
	}
	// LOG_LEVEL=debug logs each whole result.
	if raw := waitFor("optimization result"); raw["level"] != "DEBUG" || raw["json"].(map[string]any)["route_id"] != "r1" {
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

// TestTheMetricsPortHasAConnectionCap: connections to METRICS_ADDR are
// capped like the webhook port's: past maxConnections, silent ones are
// shed for newcomers, and a scrape still gets through.
func TestTheMetricsPortHasAConnectionCap(t *testing.T) {
	s := startService(t, &fakeAPI{}, nil)
	addr := strings.TrimSuffix(strings.TrimPrefix(s.metricsURL, "http://"), "/metrics")
	const extra = 8
	var silent []net.Conn
	for range maxConnections + extra {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		silent = append(silent, conn)
		time.Sleep(time.Millisecond)
	}
	time.Sleep(2 * shedAfter)
	resp, err := http.Get(s.metricsURL)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("a scrape while %d silent connections are open: %v %v", len(silent), resp, err)
	}
	resp.Body.Close()
	closed := 0
	for _, conn := range silent { // a shed connection reads EOF at once
		conn.SetReadDeadline(time.Now().Add(5 * time.Millisecond))
		if _, err := conn.Read(make([]byte, 1)); err == io.EOF {
			closed++
		}
	}
	// The extra ones, and one more for the scrape.
	if want := extra + 1; closed < want {
		t.Errorf("%d of %d silent connections were shed, want at least %d: the cap is %d", closed, len(silent), want, maxConnections)
	}
}
