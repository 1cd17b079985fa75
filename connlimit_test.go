package main

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

// These tests run the server on the fake clock of a synctest bubble, over
// in-memory connections (bubbleServer): no sleep or wall-clock timing
// decides their outcome.

// idleConn opens a keep-alive connection, makes one request on it and
// leaves it idle.
func idleConn(t *testing.T, s *bubbleServer) net.Conn {
	t.Helper()
	conn := s.dial(t)
	if resp, err := send(conn, getHealthz); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: %v %v", resp, err)
	}
	synctest.Wait() // the server has gone back to waiting for the next request
	return conn
}

// TestIdleConnectionsAreShedForNewClients: with every slot held by idle
// keep-alive connections, a new client is served (the longest-idle
// connection is closed for it), and the server never holds more than max.
func TestIdleConnectionsAreShedForNewClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const max = 4
		s := startBubbleServer(t, newServer(slog.New(slog.DiscardHandler), nil, nil, nil, newDedupe(0, 1)), max)
		var idle []net.Conn
		for range max {
			idle = append(idle, idleConn(t, s))
			time.Sleep(time.Millisecond) // each goes quiet after the one before
		}

		// Connections quiet for less than shedAfter are spared: a newcomer waits.
		early := s.dial(t)
		served := make(chan error, 1)
		go func() {
			resp, err := send(early, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			if err == nil && resp.StatusCode != http.StatusOK {
				err = io.ErrUnexpectedEOF
			}
			served <- err
		}()
		time.Sleep(shedAfter - 10*time.Millisecond)
		synctest.Wait()
		select {
		case err := <-served:
			t.Fatalf("a connection quiet for less than %v was shed (newcomer: %v)", shedAfter, err)
		default:
		}
		time.Sleep(10 * time.Millisecond)
		if err := <-served; err != nil {
			t.Fatalf("newcomer once the oldest idle connection was quiet for %v: %v", shedAfter, err)
		}

		// The one shed was the first idle connection, the longest quiet.
		synctest.Wait()
		if _, err := idle[0].Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("longest-idle connection: read %v, want EOF (closed by the server)", err)
		}
		for i, c := range idle[1:] {
			if resp, err := send(c, getHealthz); err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("idle connection %d, quiet for less long, was shed too: %v %v", i+1, resp, err)
			}
		}

		// Once every slot is held by a connection quiet for shedAfter,
		// newcomers are served at once.
		idleConn(t, s)
		time.Sleep(shedAfter)
		for i := range 3 {
			start := time.Now()
			conn := s.dial(t)
			resp, err := send(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("newcomer %d while %d idle connections hold every slot: %v %v", i, max, resp, err)
			}
			if waited := time.Since(start); waited != 0 {
				t.Errorf("newcomer %d waited %v, though connections had been quiet for %v", i, waited, shedAfter)
			}
			conn.Close()
		}
		if p := s.peak.Load(); p > max {
			t.Errorf("the server held %d connections at once, the limit is %d", p, max)
		}
	})
}

// TestBusyConnectionsAreNotShed: when every slot serves a request, a new
// client waits for one to end instead of cutting a request short, however
// long that takes.
func TestBusyConnectionsAreNotShed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const max = 2
		release := make(chan struct{})
		mux := http.NewServeMux()
		mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
			<-release
			io.WriteString(w, "done")
		})
		mux.HandleFunc("GET /fast", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "fast") })
		s := startBubbleServer(t, mux, max)

		slow := make(chan int, max)
		for range max {
			conn := s.dial(t)
			go func() {
				resp, err := send(conn, "GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
				if err != nil {
					slow <- 0
					return
				}
				slow <- resp.StatusCode
			}()
		}
		synctest.Wait() // both are in their handler
		fast := make(chan error, 1)
		conn := s.dial(t)
		go func() {
			_, err := send(conn, "GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
			fast <- err
		}()
		time.Sleep(5 * shedAfter)
		synctest.Wait()
		select {
		case err := <-fast:
			t.Fatalf("a new client was served while every slot was busy (%v)", err)
		default:
		}
		close(release)
		for range max {
			if code := <-slow; code != http.StatusOK {
				t.Errorf("a busy request got %d, want 200: it was cut", code)
			}
		}
		start := time.Now()
		if err := <-fast; err != nil {
			t.Errorf("the waiting client, once a slot was free: %v", err)
		}
		if waited := time.Since(start); waited != 0 {
			t.Errorf("the waiting client was served %v after a slot came free, want at once", waited)
		}
		if p := s.peak.Load(); p > max {
			t.Errorf("the server held %d connections at once, the limit is %d", p, max)
		}
	})
}

// TestShutdownReleasesWaitingClients: a client waiting for a slot is let
// go when the server closes, instead of being held.
func TestShutdownReleasesWaitingClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		mux := http.NewServeMux()
		mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) { <-release })
		s := startBubbleServer(t, mux, 1)
		busy := s.dial(t)
		go send(busy, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
		synctest.Wait()
		waiting := s.dial(t)
		answered := make(chan error, 1)
		go func() { _, err := send(waiting, getHealthz); answered <- err }()
		synctest.Wait()
		s.srv.Close()
		if err := <-answered; err == nil {
			t.Error("the waiting client was served after the server closed")
		}
		close(release)
	})
}
