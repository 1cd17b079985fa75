package main

// Tests of the configuration: every variable, its defaults, and the
// startup errors that name it.

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

var validEnv = map[string]string{"WEBHOOK_SECRET": testSecret, "OPTIPICK_API_KEY": testAPIKey}

func TestStartupErrorsNameTheVariableAndNotItsValue(t *testing.T) {
	for _, tc := range []struct {
		name     string
		env      map[string]string
		variable string
		says     string // the error says this too
	}{
		{"no secret", map[string]string{"WEBHOOK_SECRET": ""}, "WEBHOOK_SECRET", "required: the endpoint's signing secret (whsec_...) from the OptiPick dashboard"},
		{"only separators", map[string]string{"WEBHOOK_SECRET": " , ,"}, "WEBHOOK_SECRET", "required"},
		{"bare whsec_", map[string]string{"WEBHOOK_SECRET": "whsec_"}, "WEBHOOK_SECRET", "secret 1 of 1 is not whsec_ followed by standard base64"},
		{"bad base64", map[string]string{"WEBHOOK_SECRET": "whsec_s3cr3t!value"}, "WEBHOOK_SECRET", "secret 1 of 1 is not"},
		{"no whsec_ prefix", map[string]string{"WEBHOOK_SECRET": "c2VjcmV0IHZhbHVlIGhlcmU="}, "WEBHOOK_SECRET", "secret 1 of 1 does not start with whsec_"},
		{"second secret bad", map[string]string{"WEBHOOK_SECRET": testSecret + ",whsec_s3cr3t!value"}, "WEBHOOK_SECRET", "secret 2 of 2 is not"},
		{"third secret without prefix", map[string]string{"WEBHOOK_SECRET": testSecret + " " + secondSecret + " s3cr3t"}, "WEBHOOK_SECRET", "secret 3 of 3 does not start"},
		{"a quote in the second of three", map[string]string{"WEBHOOK_SECRET": testSecret + ` "` + secondSecret + `" ` + testSecret}, "WEBHOOK_SECRET", "secret 2 of 3 holds # or a quote"},
		{"a comment", map[string]string{"WEBHOOK_SECRET": testSecret + " #s3cr3t"}, "WEBHOOK_SECRET", "secret 2 of 2 holds # or a quote"},
		{"no API key", map[string]string{"OPTIPICK_API_KEY": ""}, "OPTIPICK_API_KEY", "required (create one in OptiPick"},
		{"API key of spaces", map[string]string{"OPTIPICK_API_KEY": " \t "}, "OPTIPICK_API_KEY", "required"},
		{"API key of two lines", map[string]string{"OPTIPICK_API_KEY": "k3y-one\nk3y-two"}, "OPTIPICK_API_KEY", "single line"},
		{"API key with a CR", map[string]string{"OPTIPICK_API_KEY": "k3y-one\rk3y-two"}, "OPTIPICK_API_KEY", "single line"},
		{"unparseable URL", map[string]string{"OPTIPICK_API_URL": "http://h0st:port:x"}, "OPTIPICK_API_URL", "absolute http(s) URL"},
		{"relative URL", map[string]string{"OPTIPICK_API_URL": "optipick.example"}, "OPTIPICK_API_URL", "absolute"},
		{"ftp URL", map[string]string{"OPTIPICK_API_URL": "ftp://optipick.example"}, "OPTIPICK_API_URL", "absolute"},
		{"URL without host", map[string]string{"OPTIPICK_API_URL": "https:///latest"}, "OPTIPICK_API_URL", "absolute"},
		{"URL with query", map[string]string{"OPTIPICK_API_URL": "https://optipick.example/?k3y=1"}, "OPTIPICK_API_URL", "without query"},
		{"URL with fragment", map[string]string{"OPTIPICK_API_URL": "https://optipick.example/#k3y"}, "OPTIPICK_API_URL", "without query or fragment"},
		{"port not a number", map[string]string{"PORT": "http"}, "PORT", "0 to 65535"},
		{"port too large", map[string]string{"PORT": "65536"}, "PORT", "0 to 65535"},
		{"negative port", map[string]string{"PORT": "-1"}, "PORT", "0 to 65535"},
		{"log level", map[string]string{"LOG_LEVEL": "verbose"}, "LOG_LEVEL", "debug, info, warn or error"},
		{"log format", map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT", "text or json"},
		{"dedupe window", map[string]string{"DEDUPE_WINDOW": "forever"}, "DEDUPE_WINDOW", "duration"},
		{"dedupe window without unit", map[string]string{"DEDUPE_WINDOW": "10"}, "DEDUPE_WINDOW", "duration"},
		{"negative dedupe window", map[string]string{"DEDUPE_WINDOW": "-1h"}, "DEDUPE_WINDOW", "duration"},
		{"negative dedupe window of 1ns", map[string]string{"DEDUPE_WINDOW": "-1ns"}, "DEDUPE_WINDOW", "duration"},
		{"metrics address without port", map[string]string{"METRICS_ADDR": "localhost"}, "METRICS_ADDR", "host:port or :port"},
		{"metrics address with an empty port", map[string]string{"METRICS_ADDR": "localhost:"}, "METRICS_ADDR", "host:port"},
		{"metrics on the webhook port", map[string]string{"PORT": "8080", "METRICS_ADDR": ":8080"}, "METRICS_ADDR", "port 8080 is the webhook port (PORT)"},
		{"metrics on PORT", map[string]string{"PORT": "9000", "METRICS_ADDR": "127.0.0.1:9000"}, "METRICS_ADDR", "webhook port"},
		{"the secret placeholder", map[string]string{"WEBHOOK_SECRET": "whsec_replace_with_your_endpoint_secret"}, "WEBHOOK_SECRET", "placeholder: copy the endpoint's signing secret from the OptiPick dashboard (for the simulator of the optipick-webhooks repository, make one with go run ./cmd/optipick-sim -new-secret)"},
		{"shutdown delay not a duration", map[string]string{"SHUTDOWN_DELAY": "soon"}, "SHUTDOWN_DELAY", "0s to 1m"},
		{"negative shutdown delay", map[string]string{"SHUTDOWN_DELAY": "-1ns"}, "SHUTDOWN_DELAY", "0s to 1m"},
		{"shutdown delay over a minute", map[string]string{"SHUTDOWN_DELAY": "1m0.001s"}, "SHUTDOWN_DELAY", "0s to 1m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs, err := runBriefly(t, merge(validEnv, tc.env))
			if err == nil {
				t.Fatal("run started, want a startup error")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tc.variable+":") || !strings.Contains(msg, tc.says) {
				t.Errorf("error %q does not start with %s: or lacks %q", msg, tc.variable, tc.says)
			}
			value := tc.env[tc.variable]
			repeated := len(strings.TrimSpace(value)) > len("whsec_") && strings.Contains(msg, value)
			for _, part := range []string{"s3cr3t", "k3y", "h0st", strings.TrimPrefix(secondSecret, "whsec_")} {
				repeated = repeated || strings.Contains(msg, part)
			}
			if repeated {
				t.Errorf("error %q repeats the value", msg)
			}
			if strings.Count(msg, "\n") > 0 {
				t.Errorf("error %q is more than one line", msg)
			}
			if logs != "" {
				t.Errorf("logged before failing: %q", logs)
			}
			// A missing required variable is told apart (main's hint), a wrong one not.
			missing := strings.Trim(tc.env[tc.variable], " ,\t") == "" &&
				(tc.variable == "WEBHOOK_SECRET" || tc.variable == "OPTIPICK_API_KEY")
			if required := errors.Is(err, errRequired); required != missing {
				t.Errorf("error %q: errRequired is %v, want %v", msg, required, missing)
			}
		})
	}
}

// TestShutdownDelayBounds: 0s and 1m are allowed; only a delay logs its
// readiness step.
func TestShutdownDelayBounds(t *testing.T) {
	for delay, logged := range map[string]bool{"": false, "0s": false, "1ns": true} {
		logs, err := runBriefly(t, merge(validEnv, map[string]string{"SHUTDOWN_DELAY": delay}))
		if err != nil {
			t.Fatalf("SHUTDOWN_DELAY=%q: %v", delay, err)
		}
		if got := strings.Contains(logs, "/readyz answers 503 while load balancers catch up"); got != logged {
			t.Errorf("SHUTDOWN_DELAY=%q: readiness step logged %v, want %v\n%s", delay, got, logged, logs)
		}
	}
	if _, err := loadConfig(getenvFrom(merge(validEnv, map[string]string{"SHUTDOWN_DELAY": "1m"}))); err != nil {
		t.Errorf("SHUTDOWN_DELAY=1m: %v", err)
	}
}

// TestValidConfigurationsStart: values at the edges of what is allowed,
// and with the spaces and capitals that .env files and dashboards add.
func TestValidConfigurationsStart(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		logs string // the "listening" line holds this
	}{
		{"defaults", nil, "api_url=" + defaultAPIURL},
		{"secrets separated by commas, spaces, tabs and newlines", map[string]string{"WEBHOOK_SECRET": " ," + testSecret + ",\t" + secondSecret + "\r\n"}, "secrets=2"},
		{"as many secrets as allowed", map[string]string{"WEBHOOK_SECRET": strings.Repeat(testSecret+",", maxSecrets)}, "secrets=8"},
		{"key with spaces around it", map[string]string{"OPTIPICK_API_KEY": "  " + testAPIKey + "\n"}, "secrets=1"},
		{"URL with spaces and a stage path", map[string]string{"OPTIPICK_API_URL": " https://gw.example/latest/ "}, "api_url=https://gw.example/latest/"},
		{"port with spaces", map[string]string{"PORT": " 0 "}, "listening"},
		{"dedupe window off", map[string]string{"DEDUPE_WINDOW": "0"}, "dedupe_window=0s"},
		{"dedupe window with spaces", map[string]string{"DEDUPE_WINDOW": " 90m "}, "dedupe_window=1h30m0s"},
		{"default dedupe window", nil, "dedupe_window=24h0m0s"},
		{"log level info", map[string]string{"LOG_LEVEL": "info"}, "level=INFO"},
		{"log level DEBUG", map[string]string{"LOG_LEVEL": " DEBUG "}, "level=INFO"},
		{"log format TEXT", map[string]string{"LOG_FORMAT": " TEXT "}, "level=INFO msg=listening"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs, err := runBriefly(t, merge(validEnv, tc.env))
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			var listening string // the line that says where and with what it listens
			for line := range strings.Lines(logs) {
				if strings.Contains(line, "msg=listening") {
					listening = line
				}
			}
			if !strings.Contains(listening, tc.logs) || !strings.Contains(logs, "msg=stopped") {
				t.Errorf("logs lack %q on the listening line, or the stop:\n%s", tc.logs, logs)
			}
			assertNoSecrets(t, logs)
		})
	}
}

// TestLogLevelAndFormat: each level writes what is at or above it; json
// writes JSON lines.
func TestLogLevelAndFormat(t *testing.T) {
	for _, tc := range []struct {
		level, format string
		wantLines     bool // the info lines: listening, shutting down, stopped
	}{
		{"", "", true},
		{"debug", "json", true},
		{"Warn", "", false},
		{"error", "JSON", false},
	} {
		t.Run(tc.level+"/"+tc.format, func(t *testing.T) {
			logs, err := runBriefly(
				t,
				merge(validEnv, map[string]string{"LOG_LEVEL": tc.level, "LOG_FORMAT": tc.format}),
			)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(logs, "INFO"); got > 0 != tc.wantLines {
				t.Fatalf("%d info lines at LOG_LEVEL=%q:\n%s", got, tc.level, logs)
			}
			if strings.EqualFold(tc.format, "json") {
				for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
					if line != "" && !json.Valid([]byte(line)) {
						t.Errorf("LOG_FORMAT=%s wrote %q", tc.format, line)
					}
				}
			} else if tc.wantLines && !strings.HasPrefix(logs, "time=") {
				t.Errorf("LOG_FORMAT=%q wrote %q, want text", tc.format, logs)
			}
		})
	}
}

// TestTheHighestPortIsAccepted: PORT=65535 is a port (it may be taken
// here; then listening fails, not the check).
func TestTheHighestPortIsAccepted(t *testing.T) {
	logs, err := runBriefly(t, merge(validEnv, map[string]string{"PORT": "65535"}))
	if err != nil && !strings.HasPrefix(err.Error(), "PORT: cannot listen") {
		t.Fatalf("PORT=65535: %v", err)
	}
	if err == nil && !strings.Contains(logs, ":65535") {
		t.Errorf("the listening line lacks the port:\n%s", logs)
	}
}

// TestMetricsAddrNeedsMetricsGo: a copy built without metrics.go refuses
// METRICS_ADDR at start, rather than ignore it.
func TestMetricsAddrNeedsMetricsGo(t *testing.T) {
	saved := newMetrics
	newMetrics = nil // as in a build without metrics.go
	t.Cleanup(func() { newMetrics = saved })
	_, err := runBriefly(t, merge(validEnv, map[string]string{"METRICS_ADDR": ":9090"}))
	if err == nil || !strings.HasPrefix(err.Error(), "METRICS_ADDR: ") || !strings.Contains(err.Error(), "metrics.go") {
		t.Errorf("METRICS_ADDR without metrics.go: %v, want a startup error naming the variable and the file", err)
	}
}
