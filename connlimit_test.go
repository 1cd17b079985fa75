package main

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// limitedServer serves the service behind a connLimitListener of max
// connections, counting the connections the server holds open at once.
func limitedServer(t *testing.T, max int, handler http.Handler) (addr string, peak *atomic.Int32) {
	t.Helper()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listener := newConnLimitListener(tcp, max)
	srv := newHTTPServer(handler, slog.New(slog.DiscardHandler))
	var open atomic.Int32
	peak = &atomic.Int32{}
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		switch state {
		case http.StateNew:
			n := open.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
		case http.StateClosed, http.StateHijacked:
			open.Add(-1)
		}
		listener.trackState(c, state)
	}
	srv.ConnContext = listener.connContext
	go srv.Serve(listener)
	t.Cleanup(func() { srv.Close() })
	return tcp.Addr().String(), peak
}

// idleConn opens a keep-alive connection, makes one request on it and
// leaves it idle.
func idleConn(t *testing.T, addr, path string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	io.WriteString(conn, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %v", path, resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return conn
}

// TestIdleConnectionsAreShedForNewClients: with every slot held by idle
// keep-alive connections, a new client is served (an idle connection is
// closed for it, one that never carried a verified delivery before one
// that did), and the server never holds more than max.
func TestIdleConnectionsAreShedForNewClients(t *testing.T) {
	const max = 4
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /verified", func(w http.ResponseWriter, r *http.Request) {
		r.Context().Value(verifiedHookKey{}).(func())() // as a genuine delivery does
	})
	addr, peak := limitedServer(t, max, mux)
	idle := []net.Conn{idleConn(t, addr, "/verified")} // a keep-alive connection like Svix's
	for range max - 1 {
		idle = append(idle, idleConn(t, addr, "/healthz"))
	}
	time.Sleep(shedAfter) // newer connections are spared

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("new client while %d idle connections hold every slot: %v %v", max, resp, err)
	}
	resp.Body.Close()
	if p := peak.Load(); p > max {
		t.Errorf("the server held %d connections at once, the limit is %d", p, max)
	}
	closed, n := make([]bool, max), 0
	for i, c := range idle {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			closed[i], n = true, n+1
		}
	}
	if closed[0] || n != 1 {
		t.Errorf("closed by the server: %v; want exactly one, not the first (it carried a verified delivery)", closed)
	}
}

// TestVerifiedDeliveriesAreNeverShed: when every slot serves a verified
// delivery, a new client waits for one to end instead of cutting it short;
// a connection busy with a request that has not proved genuine (a slow
// body, say) is shed for the newcomer.
func TestVerifiedDeliveriesAreNeverShed(t *testing.T) {
	for _, verified := range []bool{true, false} {
		t.Run(fmt.Sprintf("verified=%v", verified), func(t *testing.T) {
			const max = 2
			release := make(chan struct{})
			var started sync.WaitGroup
			started.Add(max)
			mux := http.NewServeMux()
			mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
				if protect, ok := r.Context().Value(verifiedHookKey{}).(func()); ok && verified {
					protect() // as the webhook handler does once the signature holds
				}
				started.Done()
				select {
				case <-release:
				case <-r.Context().Done(): // shed
				}
				io.WriteString(w, "done")
			})
			mux.HandleFunc("GET /fast", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fast") })
			addr, peak := limitedServer(t, max, mux)

			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
			slow := make(chan int, max)
			for range max {
				go func() {
					resp, err := client.Get("http://" + addr + "/slow")
					if err != nil {
						slow <- 0
						return
					}
					resp.Body.Close()
					slow <- resp.StatusCode
				}()
			}
			started.Wait()
			fast := make(chan error, 1)
			go func() {
				resp, err := client.Get("http://" + addr + "/fast")
				if err == nil {
					resp.Body.Close()
				}
				fast <- err
			}()
			if !verified {
				if err := <-fast; err != nil {
					t.Fatalf("newcomer while unverified requests held every slot: %v", err)
				}
				close(release)
				cut := 0
				for range max {
					if <-slow != http.StatusOK {
						cut++
					}
				}
				if cut != 1 {
					t.Errorf("%d unverified requests were cut for one newcomer, want 1", cut)
				}
				return
			}
			select {
			case err := <-fast:
				t.Fatalf("a new client was served while every slot served a verified delivery (%v)", err)
			case <-time.After(shedAfter + 300*time.Millisecond):
			}
			close(release)
			for range max {
				if code := <-slow; code != http.StatusOK {
					t.Errorf("a verified delivery got %d, want 200: it was cut", code)
				}
			}
			if err := <-fast; err != nil {
				t.Errorf("the waiting client, once a slot was free: %v", err)
			}
			if p := peak.Load(); p > max {
				t.Errorf("the server held %d connections at once, the limit is %d", p, max)
			}
		})
	}
}
