package main

// The server's limits against slow and greedy clients (README "Limits
// against unauthenticated clients"), on the fake clock of a synctest
// bubble: each is waited out exactly, at once.

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

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
