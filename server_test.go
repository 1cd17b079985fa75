package main

// Tests of the routes and of the server's limits against slow and greedy
// clients, on the fake clock of a synctest bubble where time matters.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	svix "github.com/svix/svix-webhooks/go"
)

// loopbackDeliveries numbers BenchmarkDeliveryOverLoopback's deliveries.
var loopbackDeliveries atomic.Int64

// BenchmarkDeliveryOverLoopback is a whole delivery over real HTTP on
// loopback, for the receiver and for a bare baseline that does the same I/O
// (read the body, one GET, one log line, 200) and nothing else: their ratio
// is what verifying, decoding and deduplicating cost (make loadtest measures
// the same with the built binary).
func BenchmarkDeliveryOverLoopback(b *testing.B) {
	result := clusterResultJSON(30) // about 2.5 KB
	before, after, _ := bytes.Cut(result, []byte(`"`+testRequestID+`"`))
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
		w.Header().Set("Content-Type", "application/json")
		w.Write(before)
		w.Write([]byte(`"` + id + `"`))
		w.Write(after)
	}))
	defer api.Close()
	apiURL, _ := url.Parse(api.URL)
	logger := newLogger(io.Discard, slog.LevelInfo, "json")
	v, _ := newVerifier(testSecret)
	client := clientOver(apiURL, false, nil)
	apiClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	baseline := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, api.URL+"/optimize/cluster/baseline", nil)
		req.Header.Set("X-API-KEY", testAPIKey)
		resp, err := apiClient.Do(req)
		if err != nil {
			http.Error(w, "api", http.StatusBadGateway)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		logger.Info("delivered",
			"svix_id", r.Header.Get("svix-id"),
			"body_bytes", len(body),
			"api_status", resp.StatusCode)
	})
	for _, tc := range []struct {
		name    string
		handler http.Handler
	}{
		{"baseline", baseline},
		{"receiver", newServer(webhookDeps{
			logger:   logger,
			verifier: v,
			seen:     newDedupe(time.Hour, 1<<20),
			fetch:    client.fetch,
			process:  logSummary(logger),
			metrics:  noMetrics{},
		}, alwaysReady)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			server := httptest.NewServer(tc.handler)
			defer server.Close()
			sender := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
			signer, _ := svix.NewWebhook(testSecret)
			now := time.Now()
			b.SetParallelism(32) // with GOMAXPROCS 2: 64 deliveries in flight, as make loadtest
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := loopbackDeliveries.Add(1) // unique across runs: never "already handled"
					body := fmt.Appendf(nil, `{"request_id":"%024x"}`, i)
					msgID := fmt.Sprintf("msg_bench_%s_%d", tc.name, i)
					signature, _ := signer.Sign(msgID, now, body)
					req, _ := http.NewRequest(http.MethodPost, server.URL+"/webhook/cluster", bytes.NewReader(body))
					req.Header = http.Header{
						"Svix-Id":        {msgID},
						"Svix-Timestamp": {strconv.FormatInt(now.Unix(), 10)},
						"Svix-Signature": {signature},
					}
					resp, err := sender.Do(req)
					if err != nil {
						b.Fatal(err)
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Fatalf("status %d", resp.StatusCode)
					}
				}
			})
		})
	}
}

// TestAnswersAreShortPlainText: every 200 the service writes itself, over
// a real server, is its short text as text/plain; charset=utf-8, which
// net/http names by sniffing (writeText).
func TestAnswersAreShortPlainText(t *testing.T) {
	rig := newRig(t, testSecret)
	server := httptest.NewServer(rig.handler)
	defer server.Close()
	now := time.Now()
	delivery := func() *http.Request { // the same message each time
		req := signedDeliveryAt(
			t,
			testSecret,
			server.URL+"/webhook/cluster",
			requestBody(testRequestID),
			"msg_answers",
			now,
		)
		req.RequestURI = ""
		return req
	}
	get := func(path string) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, server.URL+path, nil)
		return req
	}
	for _, tc := range []struct {
		name string
		req  *http.Request
		want string
	}{
		{"liveness", get("/healthz"), "ok\n"},
		{"readiness", get("/readyz"), "ready\n"},
		{"a delivery", delivery(), "fetched\n"},
		{"the same delivery again", delivery(), "already handled\n"},
	} {
		resp, err := http.DefaultClient.Do(tc.req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != tc.want ||
			resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Errorf(
				"%s: %s %q (%s), want 200 %q (text/plain; charset=utf-8)",
				tc.name,
				resp.Status,
				body,
				resp.Header.Get("Content-Type"),
				tc.want,
			)
		}
	}
}

func TestRoutingNeverRedirects(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		wantStatus   int
		wantAllow    string
	}{
		{http.MethodGet, "/healthz", http.StatusOK, ""},
		{http.MethodHead, "/healthz", http.StatusOK, ""},
		{http.MethodPost, "/healthz", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodGet, "/webhook/cluster", http.StatusMethodNotAllowed, "POST"},
		{http.MethodPut, "/webhook/route", http.StatusMethodNotAllowed, "POST"},
		{http.MethodGet, "/webhook", http.StatusMethodNotAllowed, "POST"},
		{http.MethodPost, "/", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook/pallet", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook/cluster/", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook//cluster", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook/../webhook/cluster", http.StatusNotFound, ""},
		{http.MethodPost, "/webhook/./route", http.StatusNotFound, ""},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			rig := newRig(t, testSecret)
			req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
			req.Method = tc.method
			req.URL.Path = tc.path
			resp := rig.deliver(req)
			if resp.Code != tc.wantStatus {
				t.Fatalf("status = %d, want %d (Location %q)", resp.Code, tc.wantStatus, resp.Header().Get("Location"))
			}
			if got := resp.Header().Get("Allow"); got != tc.wantAllow {
				t.Errorf("Allow = %q, want %q", got, tc.wantAllow)
			}
			rig.api.assertCalls(t, nil)
		})
	}
}

func newBubbleService(t *testing.T) *bubbleServer {
	t.Helper()
	rig := newBubbleRig(t, testSecret)
	return startBubbleServer(t, rig.handler, maxConnections)
}

// TestSlowlorisIsCutOff: a client that sends its headers a byte at a time
// is dropped 5 s after it connected, and others are served all along.
func TestSlowlorisIsCutOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newBubbleService(t)
		conn := s.dial(t)
		start := time.Now()
		request := "POST /webhook/cluster HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000)
		var cutAfter time.Duration
		for i := 0; i < len(request); i++ {
			if _, err := conn.Write([]byte{request[i]}); err != nil {
				cutAfter = time.Since(start)
				break
			}
			if i%10 == 0 { // meanwhile, others are served
				if resp, err := send(s.dial(t), getHealthz); err != nil || resp.StatusCode != http.StatusOK {
					t.Fatalf("healthz while a slow client holds a connection: %v %v", resp, err)
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if cutAfter < 5*time.Second || cutAfter > 5*time.Second+20*time.Millisecond {
			t.Errorf("slow client cut after %v, want 5s (ReadHeaderTimeout)", cutAfter)
		}
	})
}

// TestSlowBodyIsCutOff: a client that sends its headers at once and then
// its body a byte a second gets no more than 10 s for the whole request.
func TestSlowBodyIsCutOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newBubbleService(t)
		conn := s.dial(t)
		start := time.Now()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			io.WriteString(conn, "POST /webhook/cluster HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
			for range 100 {
				select {
				case <-time.After(time.Second):
				case <-stop:
					return
				}
				if _, err := conn.Write([]byte("a")); err != nil {
					return
				}
			}
		}()
		resp, err := readResponse(conn)
		took := time.Since(start)
		if err == nil && resp.StatusCode < 400 {
			t.Fatalf("status %d, want the request refused", resp.StatusCode)
		}
		if took < 10*time.Second || took > 11*time.Second {
			t.Errorf("a body a byte a second was read for %v, want 10s (ReadTimeout)", took)
		}
	})
}

// TestAnswersAreWrittenWithin15s: a client that does not read its answer
// holds its connection for at most 15 s; one that reads within 14 s gets it
// (a delivery takes up to its 10 s deadline, and the answer must still go out).
func TestAnswersAreWrittenWithin15s(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newBubbleService(t)
		patient, late := s.dial(t), s.dial(t)
		for _, conn := range []io.Writer{patient, late} {
			if _, err := io.WriteString(conn, getHealthz); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(14 * time.Second)
		if resp, err := readResponse(patient); err != nil || resp.StatusCode != http.StatusOK {
			t.Errorf("answer read after 14 s: %v %v, want 200", resp, err)
		}
		time.Sleep(time.Second + time.Millisecond)
		if resp, err := readResponse(late); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Errorf("answer read after 15 s: %v %v, want the connection closed (WriteTimeout)", resp, err)
		}
	})
}

// TestHangingAPIIsAnsweredOverTheConnection: the 504 of a delivery that used
// its whole deadline reaches the client.
func TestHangingAPIIsAnsweredOverTheConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
		s := startBubbleServer(t, rig.handler, maxConnections)
		req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
		conn := s.dial(t)
		go req.Write(conn)
		resp, err := readResponse(conn)
		if err != nil || resp.StatusCode != http.StatusGatewayTimeout {
			t.Fatalf("got %v %v, want 504", resp, err)
		}
	})
}

// TestIdleConnectionsCloseAfter30s: a keep-alive connection is reused
// within 30 s of quiet, and closed after.
func TestIdleConnectionsCloseAfter30s(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newBubbleService(t)
		conn := s.dial(t)
		for range 2 {
			if resp, err := send(conn, getHealthz); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET /healthz: %v %v", resp, err)
			}
			time.Sleep(29 * time.Second)
		}
		time.Sleep(time.Second + time.Millisecond)
		if resp, err := send(conn, getHealthz); err == nil {
			t.Errorf("after 30 s of quiet: %v, want the connection closed (IdleTimeout)", resp.Status)
		}
	})
}

// TestRequestHeadersAreCappedAt16KiB: 16 KiB of headers are read, and far
// more are refused with 431 (Go's server allows 4 KiB over MaxHeaderBytes).
func TestRequestHeadersAreCappedAt16KiB(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newBubbleService(t)
		for _, tc := range []struct {
			size int
			want int
		}{
			{16<<10 - 100, http.StatusOK},
			{32 << 10, http.StatusRequestHeaderFieldsTooLarge},
		} {
			conn := s.dial(t)
			request := "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", tc.size) + "\r\n\r\n"
			done := make(chan error, 1)
			go func() { _, err := io.WriteString(conn, request); done <- err }()
			resp, err := readResponse(conn)
			if err != nil || resp.StatusCode != tc.want {
				t.Errorf("%d bytes of headers: %v %v, want %d", tc.size, resp, err, tc.want)
			}
			conn.Close()
			<-done
		}
	})
}
