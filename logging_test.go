package main

// Tests of the logs: rate limits on what clients can cause, and safe
// values.

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"
	"unicode"
)

// TestRepeatsOfAHandledMessageCannotFloodTheLogs: a replayed capture of a
// handled message is answered "already handled" at once, and those lines
// are rate-limited like rejections.
func TestRepeatsOfAHandledMessageCannotFloodTheLogs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		body := requestBody(testRequestID)
		for i := range 1000 {
			resp := rig.deliver(signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_replayed", time.Now()))
			want := "already handled\n"
			if i == 0 {
				want = "fetched\n"
			}
			if resp.Code != http.StatusOK || resp.Body.String() != want {
				t.Fatalf("delivery %d: %d %q, want 200 %q", i, resp.Code, resp.Body, want)
			}
		}
		if n := strings.Count(rig.logs.String(), "already handled"); n != rejectLogBurst {
			t.Errorf("%d \"already handled\" lines for 999 repeats, want %d", n, rejectLogBurst)
		}
	})
}

// TestClientHeadersAreLoggedSafely: an unverified svix-id is logged as it
// is when it is printable ASCII, quoted otherwise, and cut at 128 bytes.
func TestClientHeadersAreLoggedSafely(t *testing.T) {
	for _, tc := range []struct{ id, logged string }{
		{"msg_ ~", "msg_ ~"},
		{"msg_\x1f", `"msg_\x1f"`},
		{"msg_\x7f", `"msg_\x7f"`},
		{"msg_é", `"msg_\u00e9"`},
		{strings.Repeat("x", 200), strings.Repeat("x", 128)},
		{strings.Repeat("x", 127) + "\x01", `"` + strings.Repeat("x", 127) + `\x01"`},
		{strings.Repeat("x", 128) + "\x01", strings.Repeat("x", 128)},
	} {
		rig := buildRig(
			t,
			rigConfig{api: &fakeAPI{}, apiURL: "http://optipick.test", transport: handlerTransport{&fakeAPI{}},
				secrets: []string{testSecret}, level: slog.LevelInfo, format: "json"},
		)
		req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
		req.Header["Svix-Id"] = []string{tc.id}
		if resp := rig.deliver(req); resp.Code != http.StatusUnauthorized {
			t.Fatalf("svix-id %q: status %d, want 401", tc.id, resp.Code)
		}
		var line map[string]any
		if err := json.Unmarshal([]byte(rig.logs.String()), &line); err != nil {
			t.Fatal(err)
		}
		if line["svix_id"] != tc.logged {
			t.Errorf("svix-id %q logged as %q, want %q", tc.id, line["svix_id"], tc.logged)
		}
	}
}

// TestRejectionsCannotFloodTheLogs: the first rejectLogBurst rejections of
// an interval are logged, the rest counted in one line when it ends.
func TestRejectionsCannotFloodTheLogs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		unsigned := func() *http.Request {
			return httptest.NewRequest(http.MethodPost, "/webhook/cluster", bytes.NewReader(requestBody(testRequestID)))
		}
		for range 1000 {
			if resp := rig.deliver(unsigned()); resp.Code != http.StatusUnauthorized {
				t.Fatalf("status %d, want 401", resp.Code)
			}
		}
		if got := strings.Count(rig.logs.String(), "\n"); got != rejectLogBurst {
			t.Fatalf("%d log lines for 1000 rejections, want %d", got, rejectLogBurst)
		}
		time.Sleep(rejectLogInterval)
		synctest.Wait()
		logs := rig.logs.String()
		if !strings.Contains(
			logs,
			`msg="rejected or repeated deliveries not logged, over the log rate limit" count=980`,
		) {
			t.Fatalf("no count of the suppressed lines:\n%s", logs[max(0, len(logs)-500):])
		}
		// A new interval logs again.
		rig.deliver(unsigned())
		if got := strings.Count(rig.logs.String(), "\n"); got != rejectLogBurst+2 {
			t.Errorf("%d log lines, want %d", got, rejectLogBurst+2)
		}
	})
}

// TestUnverifiedHeadersReachTheLogsEscaped: no control or bidirectional
// character from a client reaches a log line, in either format.
func TestUnverifiedHeadersReachTheLogsEscaped(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			rig := buildRig(t, rigConfig{secrets: []string{testSecret}, apiURL: "http://optipick.test",
				transport: handlerTransport{&fakeAPI{}}, level: slog.LevelDebug, format: format})
			ids := []string{"msg_\u202egnp.exe", "msg_\x1b[31mred", "msg_\r\nlevel=ERROR", "msg_\u2028x", "msg_\xff"}
			for _, id := range ids {
				req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
				req.Header["Svix-Id"] = []string{id}
				if resp := rig.deliver(req); resp.Code != http.StatusUnauthorized {
					t.Fatalf("svix-id %q: status %d, want 401", id, resp.Code)
				}
			}
			logs := rig.logs.String()
			if strings.Count(logs, "\n") != 5 {
				t.Errorf("want 5 lines:\n%s", logs)
			}
			for _, r := range strings.TrimSuffix(logs, "\n") {
				if r != '\n' && (!unicode.IsPrint(r) || r == unicode.ReplacementChar) {
					t.Fatalf("log holds %U:\n%q", r, logs)
				}
			}
		})
	}
}

// TestReplaysOfAnUnusableBodyCannotFloodTheLogs: a genuine delivery whose
// body has no valid request_id is logged at ERROR (OptiPick may have
// changed its body), but its replays are rate-limited like rejections.
func TestReplaysOfAnUnusableBodyCannotFloodTheLogs(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		for range 100 {
			resp := rig.deliver(
				signedDeliveryAt(t, testSecret, "/webhook/cluster", []byte(`{"id":1}`), "msg_unusable", time.Now()),
			)
			if resp.Code != http.StatusBadRequest || resp.Header().Get("webhook-delivery") != "abort-message" {
				t.Fatalf("status %d, want 400 with abort-message", resp.Code)
			}
		}
		if n := strings.Count(rig.logs.String(), "level=ERROR"); n != rejectLogBurst {
			t.Errorf("%d ERROR lines for 100 replays, want %d", n, rejectLogBurst)
		}
	})
}
