package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	svix "github.com/svix/svix-webhooks/go"

	"optipick-webhooks/internal/optipicksim"
)

var testSecret = optipicksim.NewSecret()

// fakeReceiver answers as the receiver does: 401 unless signed with
// testSecret, 400 + abort-message without a request_id, "already handled"
// for a svix-id seen before, else 200. It records what it got.
type fakeReceiver struct {
	mu      sync.Mutex
	seen    map[string]bool
	headers []http.Header
	paths   []string
}

func (f *fakeReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.headers = append(f.headers, r.Header.Clone())
	f.paths = append(f.paths, r.URL.Path)
	wh, _ := svix.NewWebhook(testSecret)
	if err := wh.Verify(body, r.Header); err != nil {
		http.Error(w, "invalid signature", http.StatusUnauthorized)
		return
	}
	var payload struct {
		RequestID string `json:"request_id"`
	}
	if json.Unmarshal(body, &payload) != nil || payload.RequestID == "" {
		w.Header().Set("webhook-delivery", "abort-message")
		http.Error(w, "body must be JSON with a request_id", http.StatusBadRequest)
		return
	}
	if f.seen[r.Header.Get("svix-id")] {
		io.WriteString(w, "already handled\n")
		return
	}
	if f.seen == nil {
		f.seen = map[string]bool{}
	}
	f.seen[r.Header.Get("svix-id")] = true
	io.WriteString(w, "fetched\n")
}

// sendTo runs the send or resend command against a fake receiver found
// through PORT, as a developer's .env would point at it.
func sendTo(t *testing.T, receiver *fakeReceiver, args ...string) (string, error) {
	t.Helper()
	server := httptest.NewServer(receiver)
	t.Cleanup(server.Close)
	u, _ := url.Parse(server.URL)
	env := map[string]string{"WEBHOOK_SECRET": testSecret + " " + optipicksim.NewSecret(), "PORT": u.Port()}
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, append([]string{"optipick-sim"}, args...), func(k string) string { return env[k] }, &out, &errOut)
	return out.String() + errOut.String(), err
}

func TestSendDeliversASignedWebhookAndResendReplaysIt(t *testing.T) {
	receiver := &fakeReceiver{}
	out, err := sendTo(t, receiver, "send", "-kind", "route", "-request-id", "674f5c1e2b8a4d0012ab34cd")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"/webhook/route", `body: {"request_id":"674f5c1e2b8a4d0012ab34cd"}`, "signed with the first secret in WEBHOOK_SECRET",
		"→ 200 OK", "fetched", "resend -kind route"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if len(receiver.paths) != 1 || receiver.paths[0] != "/webhook/route" {
		t.Fatalf("receiver got %v", receiver.paths)
	}
	msgID := receiver.headers[0].Get("svix-id")
	if !strings.HasPrefix(msgID, "msg_") || len(msgID) != 31 {
		t.Errorf("svix-id %q is not in Svix's form", msgID)
	}

	out, err = sendTo(t, receiver, "resend", "-kind", "route", "-request-id", "674f5c1e2b8a4d0012ab34cd", "-svix-id", msgID)
	if err != nil {
		t.Fatal(err)
	}
	if got := receiver.headers[1].Get("svix-id"); got != msgID {
		t.Errorf("resend carried svix-id %q, want %q", got, msgID)
	}
	if !strings.Contains(out, "already handled") {
		t.Errorf("output of a replay:\n%s", out)
	}

	if _, err := sendTo(t, receiver, "resend", "-request-id", "x"); err == nil || !strings.Contains(err.Error(), "-svix-id") {
		t.Errorf("resend without -svix-id: %v", err)
	}
}

func TestSendShowsRejections(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"wrong secret": {[]string{"-secret", optipicksim.NewSecret()}, []string{"→ 401", "signed with -secret", "Svix would retry"}},
		"unsigned":     {[]string{"-unsigned"}, []string{"→ 401", "unsigned"}},
		"no request_id": {[]string{"-body", `{"id":"x"}`},
			[]string{"→ 400", "webhook-delivery: abort-message", "asked Svix not to retry", `body: {"id":"x"}`}},
	} {
		t.Run(name, func(t *testing.T) {
			receiver := &fakeReceiver{}
			args := append([]string{"send", "-request-id", "abc"}, tc.args...)
			out, err := sendTo(t, receiver, args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range tc.want {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "resend -kind") {
				t.Errorf("a rejected delivery offers a replay:\n%s", out)
			}
			if name == "unsigned" && receiver.headers[0].Get("svix-signature") != "" {
				t.Error("-unsigned sent a signature")
			}
		})
	}
}

func TestSendRefusesBadArguments(t *testing.T) {
	for name, args := range map[string][]string{
		"no request_id": {"send"},
		"unknown kind":  {"send", "-kind", "wave", "-request-id", "a"},
		"bad secret":    {"send", "-request-id", "a", "-secret", "nope"},
		"extra args":    {"send", "-request-id", "a", "more"},
	} {
		if out, err := sendTo(t, &fakeReceiver{}, args...); err == nil {
			t.Errorf("%s: accepted:\n%s", name, out)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// listening runs the simulator with args until it logs its start line,
// and returns that line.
func listening(t *testing.T, env map[string]string, args ...string) map[string]any {
	t.Helper()
	var out syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		args := append([]string{"optipick-sim", "-addr", "127.0.0.1:0", "-log-format", "json"}, args...)
		done <- run(ctx, args, func(k string) string { return env[k] }, &out, io.Discard)
	}()
	var listening map[string]any
	for deadline := time.Now().Add(10 * time.Second); listening == nil && time.Now().Before(deadline); {
		for _, line := range strings.Split(out.String(), "\n") {
			var l map[string]any
			if json.Unmarshal([]byte(line), &l) == nil && l["msg"] == "listening" {
				listening = l
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if listening == nil {
		t.Fatalf("no listening line:\n%s", out.String())
	}
	return listening
}

func TestServeDeliversToPORTAndStatesTheRetrySchedule(t *testing.T) {
	env := map[string]string{"WEBHOOK_SECRET": testSecret, "OPTIPICK_API_KEY": "k", "PORT": "9123"}
	l := listening(t, env)
	if l["cluster_url"] != "http://127.0.0.1:9123/webhook/cluster" || l["route_url"] != "http://127.0.0.1:9123/webhook/route" {
		t.Errorf("delivery URLs %v, %v: want the receiver's PORT 9123", l["cluster_url"], l["route_url"])
	}
	// Svix's 5 s, scaled to 0.5 s, would fall within the receiver's 2 s
	// memory of the failure: the floor lifts it to 2.5 s.
	if l["time_scale"] != 0.1 || l["retry_floor"] != "2.5s" || l["retries_after"] != "2.5s, 30s, 3m0s, 12m0s, 30m0s, 1h0m0s, 1h0m0s" {
		t.Errorf("time_scale %v, retry_floor %v, retries_after %v: want the development scale 0.1 and the 2.5s floor, stated",
			l["time_scale"], l["retry_floor"], l["retries_after"])
	}
	l = listening(t, env, "-retry-floor", "0", "-time-scale", "0.001")
	if l["retry_floor"] != "0s" || l["retries_after"] != "5ms, 300ms, 1.8s, 7.2s, 18s, 36s, 36s" {
		t.Errorf("-retry-floor 0: retry_floor %v, retries_after %v: want no floor", l["retry_floor"], l["retries_after"])
	}
}

// TestHelpExitsZeroAndShowsNoSecret: -h, and send -h and resend -h, print
// their usage to stdout and return nil (exit status 0, no "error:" line),
// and say whether the secret and the key are set, never what they are.
func TestHelpExitsZeroAndShowsNoSecret(t *testing.T) {
	secret, other, key := optipicksim.NewSecret(), optipicksim.NewSecret(), "key-that-help-must-not-show"
	full := map[string]string{"WEBHOOK_SECRET": secret + "," + other, "OPTIPICK_API_KEY": key}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want []string
	}{
		{[]string{"-h"}, full, []string{"usage: optipick-sim [flags]", "(default: set, from $OPTIPICK_API_KEY)",
			"(default: set, the first in $WEBHOOK_SECRET)", "0.1 retries after 2.5s, 30s, 3m0s", "-retry-floor"}},
		{[]string{"-help"}, full, []string{"usage: optipick-sim [flags]"}},
		{[]string{"-h"}, nil, []string{"(default: none: $OPTIPICK_API_KEY is not set)", "(default: none: $WEBHOOK_SECRET is not set)"}},
		{[]string{"send", "-h"}, full, []string{"usage: optipick-sim send", "(default: set, the first in $WEBHOOK_SECRET)"}},
		{[]string{"resend", "-h"}, full, []string{"usage: optipick-sim resend"}},
		{[]string{"send", "-h"}, nil, []string{"(default: none: $WEBHOOK_SECRET is not set)"}},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), append([]string{"optipick-sim"}, tc.args...), func(k string) string { return tc.env[k] }, &stdout, &stderr)
		if err != nil {
			t.Errorf("%v: %v, want nil (exit status 0)", tc.args, err)
		}
		if stderr.Len() > 0 {
			t.Errorf("%v wrote to stderr:\n%s", tc.args, stderr.String())
		}
		for _, want := range tc.want {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("%v: help lacks %q:\n%s", tc.args, want, stdout.String())
			}
		}
		all := stdout.String() + stderr.String()
		for _, value := range []string{secret, strings.TrimPrefix(secret, "whsec_"), strings.TrimPrefix(other, "whsec_"), key} {
			if strings.Contains(all, value) {
				t.Errorf("%v: help shows a secret or key value %q:\n%s", tc.args, value, all)
			}
		}
	}

	// A wrong flag is still an error, with the usage on stderr.
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"optipick-sim", "-no-such-flag"}, func(string) string { return "" }, &stdout, &stderr); err == nil ||
		stdout.Len() > 0 || !strings.Contains(stderr.String(), "usage: optipick-sim") {
		t.Errorf("-no-such-flag: %v, stdout %q, stderr %q: want an error and the usage on stderr", err, stdout.String(), stderr.String())
	}
}

func TestReceiverBaseURL(t *testing.T) {
	for port, want := range map[string]string{"": "http://127.0.0.1:8080", "3000": "http://127.0.0.1:3000", "0": "http://127.0.0.1:8080", "x": "http://127.0.0.1:8080"} {
		if got := receiverBaseURL(func(string) string { return port }); got != want {
			t.Errorf("PORT=%q: %s, want %s", port, got, want)
		}
	}
}
