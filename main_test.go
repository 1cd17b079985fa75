package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestStartupErrorsNameTheVariableAndNotItsValue(t *testing.T) {
	valid := map[string]string{"WEBHOOK_SECRET": testSecret, "OPTIPICK_API_KEY": testAPIKey}
	for _, tc := range []struct {
		name     string
		env      map[string]string
		variable string
	}{
		{"no secret", map[string]string{"WEBHOOK_SECRET": ""}, "WEBHOOK_SECRET"},
		{"only separators", map[string]string{"WEBHOOK_SECRET": " , ,"}, "WEBHOOK_SECRET"},
		{"bare whsec_", map[string]string{"WEBHOOK_SECRET": "whsec_"}, "WEBHOOK_SECRET"},
		{"bad base64", map[string]string{"WEBHOOK_SECRET": "whsec_s3cr3t!value"}, "WEBHOOK_SECRET"},
		{"no whsec_ prefix", map[string]string{"WEBHOOK_SECRET": "c2VjcmV0IHZhbHVlIGhlcmU="}, "WEBHOOK_SECRET"},
		{"second secret bad", map[string]string{"WEBHOOK_SECRET": testSecret + ",whsec_s3cr3t!value"}, "WEBHOOK_SECRET"},
		{"no API key", map[string]string{"OPTIPICK_API_KEY": ""}, "OPTIPICK_API_KEY"},
		{"API key of two lines", map[string]string{"OPTIPICK_API_KEY": "k3y-one\nk3y-two"}, "OPTIPICK_API_KEY"},
		{"unparseable URL", map[string]string{"OPTIPICK_API_URL": "http://h0st:port:x"}, "OPTIPICK_API_URL"},
		{"relative URL", map[string]string{"OPTIPICK_API_URL": "optipick.example"}, "OPTIPICK_API_URL"},
		{"ftp URL", map[string]string{"OPTIPICK_API_URL": "ftp://optipick.example"}, "OPTIPICK_API_URL"},
		{"URL with query", map[string]string{"OPTIPICK_API_URL": "https://optipick.example/?k3y=1"}, "OPTIPICK_API_URL"},
		{"port not a number", map[string]string{"PORT": "http"}, "PORT"},
		{"port too large", map[string]string{"PORT": "65536"}, "PORT"},
		{"log level", map[string]string{"LOG_LEVEL": "verbose"}, "LOG_LEVEL"},
		{"log format", map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{"dedupe window", map[string]string{"DEDUPE_WINDOW": "forever"}, "DEDUPE_WINDOW"},
		{"negative dedupe window", map[string]string{"DEDUPE_WINDOW": "-1h"}, "DEDUPE_WINDOW"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := merge(valid, tc.env)
			var stdout, stderr strings.Builder
			err := run(t.Context(), []string{"optipick-webhooks"}, getenvFrom(env), &stdout, &stderr)
			if err == nil {
				t.Fatal("run succeeded, want a startup error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tc.variable+":") {
				t.Errorf("error %q does not start with %s:", msg, tc.variable)
			}
			if value := tc.env[tc.variable]; len(strings.TrimSpace(value)) > len("whsec_") && strings.Contains(msg, value) ||
				strings.Contains(msg, "s3cr3t") || strings.Contains(msg, "k3y") || strings.Contains(msg, "h0st") {
				t.Errorf("error %q repeats the value", msg)
			}
			if strings.Count(msg, "\n") > 0 {
				t.Errorf("error %q is more than one line", msg)
			}
			if stdout.Len() > 0 {
				t.Errorf("wrote to stdout before failing: %q", stdout.String())
			}
		})
	}
}

func TestSecretsListIgnoresEmptyEntries(t *testing.T) {
	v, err := newVerifier(" ," + testSecret + ",, \t" + secondSecret + ",")
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 2 {
		t.Fatalf("got %d secrets, want 2", len(v))
	}
}

// TestRunEndToEnd starts the whole service on a free port, delivers over
// real TCP, then cancels it as SIGTERM would and expects a clean exit.
func TestRunEndToEnd(t *testing.T) {
	api := &fakeAPI{}
	apiServer := httptest.NewServer(api)
	defer apiServer.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logs, logWriter := io.Pipe()
	env := map[string]string{
		"WEBHOOK_SECRET":   secondSecret + " " + testSecret,
		"OPTIPICK_API_KEY": testAPIKey,
		"OPTIPICK_API_URL": apiServer.URL + "/latest/",
		"PORT":             "0",
		"LOG_FORMAT":       "json",
		"LOG_LEVEL":        "debug",
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
	if started["api_url"] != apiServer.URL+"/latest/" {
		t.Errorf("api_url logged as %v", started["api_url"])
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
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("delivery: status %d, want 200", resp.StatusCode)
	}
	api.assertCalls(t, []apiCall{{Path: "/optimize/route/" + testRequestID, APIKey: testAPIKey}})
	fetched := waitFor("optimization fetched")
	if fetched["picks"] != 3.0 || fetched["request_id"] != testRequestID {
		t.Errorf("summary line = %v", fetched)
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
}

// TestPlainHTTPToAnotherHostIsWarnedAbout: the key would travel in clear
// text; loopback (the simulator) is fine.
func TestPlainHTTPToAnotherHostIsWarnedAbout(t *testing.T) {
	const warning = "OPTIPICK_API_URL is plain http to another machine: the API key travels in clear text; use https"
	for apiURL, wantWarning := range map[string]bool{
		"http://optipick.example":  true,
		"http://10.1.2.3:8090":     true,
		"http://127.0.0.1:8090":    false,
		"http://localhost:8090":    false,
		"http://[::1]:8090":        false,
		"https://optipick.example": false,
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
		})
	}
}
