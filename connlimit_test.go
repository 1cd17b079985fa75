package main

// Tests of the connection cap and what it sheds, on the fake clock of a
// synctest bubble, over in-memory connections: no sleep or wall-clock
// timing decides their outcome.

import (
	"cmp"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// limitTestMux serves /healthz, /verified (a request that proves genuine,
// as a signed delivery does), and /slow and /slow-verified, which wait for
// release (or for their connection to be shed).
func limitTestMux(release <-chan struct{}) *http.ServeMux {
	verify := func(r *http.Request) { // as a signed delivery whose work succeeds does
		protectConnection(r)
		markSendersConnection(r)
	}
	wait := func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
			io.WriteString(w, "done")
		case <-r.Context().Done(): // shed
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /verified", func(w http.ResponseWriter, r *http.Request) { verify(r) })
	mux.HandleFunc("GET /slow", wait)
	mux.HandleFunc("GET /slow-verified", func(w http.ResponseWriter, r *http.Request) { verify(r); wait(w, r) })
	return mux
}

// idleConn opens a keep-alive connection, makes one request on it and
// leaves it idle.
func idleConn(t *testing.T, s *bubbleServer, path string) net.Conn {
	t.Helper()
	conn := s.dial(t)
	if resp, err := send(conn, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil ||
		resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %v %v", path, resp, err)
	}
	synctest.Wait() // the server has gone back to waiting for the next request
	return conn
}

// isClosed reports whether the server closed conn.
func isClosed(conn net.Conn) bool {
	conn.SetReadDeadline(time.Now().Add(time.Millisecond))
	_, err := conn.Read(make([]byte, 1))
	return err == io.EOF
}

// TestIdleConnectionsAreShedForNewClients: with every slot held by idle
// keep-alive connections, a new client is served: one idle connection is
// closed for it, one that never carried a verified delivery before one that
// did, and none younger than shedAfter. The server never holds more than max.
func TestIdleConnectionsAreShedForNewClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const max = 4
		s := startBubbleServer(t, limitTestMux(nil), max)
		idle := []net.Conn{idleConn(t, s, "/verified")} // a keep-alive connection like Svix's
		for range max - 1 {
			idle = append(idle, idleConn(t, s, "/healthz"))
		}

		// Connections younger than shedAfter are spared: a newcomer waits.
		early := s.dial(t)
		served := make(chan error, 1)
		go func() {
			resp, err := send(early, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			if err == nil && resp.StatusCode != http.StatusOK {
				err = io.ErrUnexpectedEOF
			}
			served <- err
		}()
		time.Sleep(shedAfter - time.Millisecond)
		synctest.Wait()
		select {
		case err := <-served:
			t.Fatalf("a connection younger than %v was shed (newcomer: %v)", shedAfter, err)
		default:
		}
		time.Sleep(shedAfter)
		if err := <-served; err != nil {
			t.Fatalf("newcomer once the idle connections were %v old: %v", shedAfter, err)
		}
		synctest.Wait()
		closed := 0
		for i, c := range idle {
			if isClosed(c) {
				closed++
				if i == 0 {
					t.Error("the connection that carried a verified delivery was shed before the others")
				}
			}
		}
		if closed != 1 {
			t.Errorf("%d idle connections were shed for one newcomer, want 1", closed)
		}

		// Newcomers are now served at once.
		for i := range 3 {
			start := time.Now()
			conn := s.dial(t)
			resp, err := send(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("newcomer %d while %d idle connections hold every slot: %v %v", i, max, resp, err)
			}
			if waited := time.Since(start); waited != 0 {
				t.Errorf("newcomer %d waited %v", i, waited)
			}
			conn.Close()
		}
		if p := s.peak.Load(); p > max {
			t.Errorf("the server held %d connections at once, the limit is %d", p, max)
		}
	})
}

// TestBusyConnectionsAreShedUnlessVerified: when every slot is serving a
// request, a newcomer sheds one that has not proved genuine (a slow body,
// a stream of unsigned requests), but waits for verified deliveries to end
// instead of cutting one short, however long that takes.
func TestBusyConnectionsAreShedUnlessVerified(t *testing.T) {
	for _, path := range []string{"/slow", "/slow-verified"} {
		t.Run(path, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const max = 2
				release := make(chan struct{})
				s := startBubbleServer(t, limitTestMux(release), max)
				slow := make(chan int, max)
				for range max {
					conn := s.dial(t)
					go func() {
						resp, err := send(conn, "GET "+path+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
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
					_, err := send(conn, getHealthz)
					fast <- err
				}()
				time.Sleep(5 * shedAfter)
				synctest.Wait()
				if path == "/slow" {
					select {
					case err := <-fast:
						if err != nil {
							t.Fatalf("newcomer: %v", err)
						}
					default:
						t.Fatal("a newcomer waited while unverified requests held every slot")
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
					t.Fatalf("a newcomer was served while every slot served a verified delivery (%v)", err)
				default:
				}
				close(release)
				for range max {
					if code := <-slow; code != http.StatusOK {
						t.Errorf("a verified delivery got %d, want 200: it was cut", code)
					}
				}
				start := time.Now()
				if err := <-fast; err != nil {
					t.Errorf("the waiting client, once a slot was free: %v", err)
				}
				if waited := time.Since(start); waited > shedAfter {
					t.Errorf("the waiting client was served %v after a slot came free", waited)
				}
				if p := s.peak.Load(); p > max {
					t.Errorf("the server held %d connections at once, the limit is %d", p, max)
				}
			})
		})
	}
}

// TestShutdownReleasesWaitingClients: a client waiting for a slot is let
// go when the server closes, instead of being held.
func TestShutdownReleasesWaitingClients(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		s := startBubbleServer(t, limitTestMux(release), 1)
		busy := s.dial(t)
		go send(busy, "GET /slow-verified HTTP/1.1\r\nHost: x\r\n\r\n")
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

// TestSilentConnectionsAreShed: connections that were accepted but send
// nothing are shed for a newcomer once shedAfter old, long before the
// server's own header timeout would close them.
func TestSilentConnectionsAreShed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const max = 2
		s := startBubbleServer(t, limitTestMux(nil), max)
		for range max {
			s.dial(t) // and silence
		}
		synctest.Wait()
		start := time.Now()
		if resp, err := send(s.dial(t), getHealthz); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("newcomer: %v %v", resp, err)
		}
		if waited := time.Since(start); waited > 2*shedAfter {
			t.Errorf(
				"newcomer waited %v for silent connections (ReadHeaderTimeout is %v)",
				waited,
				s.srv.ReadHeaderTimeout,
			)
		}
	})
}

// TestAKeepAliveSenderIsNotShedForAYoungConnection: with every slot taken
// by a keep-alive connection that carried a verified delivery and one that
// was just accepted, a newcomer waits for the young one to be shedAfter
// old and sheds it: the sender's connection is shed only when no
// connection that never carried a verified delivery is open at all.
func TestAKeepAliveSenderIsNotShedForAYoungConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := startBubbleServer(t, limitTestMux(nil), 2)
		sender := idleConn(t, s, "/verified")
		time.Sleep(2 * shedAfter)
		young := s.dial(t) // and silence
		synctest.Wait()
		start := time.Now()
		if resp, err := send(s.dial(t), getHealthz); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("newcomer: %v %v", resp, err)
		}
		if waited := time.Since(start); waited > shedAfter {
			t.Errorf("newcomer waited %v, want at most %v", waited, shedAfter)
		}
		synctest.Wait()
		if isClosed(sender) {
			t.Error(
				"the keep-alive connection that carried a verified delivery was shed while a never-verified one was open",
			)
		}
		if !isClosed(young) {
			t.Error("the young, never-verified connection was not shed")
		}
	})
}

// TestReplaysDoNotRankWithTheSender: a connection that only repeats a
// handled message (a replayed capture: genuine bytes, no work) does not
// rank with the sender's keep-alive connection, which carried the work: a
// newcomer sheds the repeater, never the sender. The victim is drawn at
// random among equals, so the race is run 20 times.
func TestReplaysDoNotRankWithTheSender(t *testing.T) {
	for round := range 20 {
		synctest.Test(t, func(t *testing.T) {
			rig := newBubbleRig(t, testSecret)
			s := startBubbleServer(t, rig.handler, 2)
			body := requestBody(testRequestID)
			req := signedDeliveryAt(t, testSecret, "/webhook/cluster", body, "msg_replayed", time.Now())
			delivery := fmt.Sprintf(
				"POST /webhook/cluster HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nSvix-Id: %s\r\nSvix-Timestamp: %s\r\nSvix-Signature: %s\r\n\r\n%s",
				len(
					body,
				),
				req.Header.Get("Svix-Id"),
				req.Header.Get("Svix-Timestamp"),
				req.Header.Get("Svix-Signature"),
				body,
			)
			var sender net.Conn
			for i, want := range []string{"fetched\n", "already handled\n"} { // the sender's, then a repeater's
				conn := s.dial(t)
				resp, err := send(conn, delivery)
				if got, _ := io.ReadAll(resp.Body); err != nil || string(got) != want {
					t.Fatalf("connection %d: %q %v, want %q", i, got, err, want)
				}
				sender = cmp.Or(sender, conn)
			}
			time.Sleep(2 * shedAfter)
			if resp, err := send(s.dial(t), getHealthz); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("newcomer: %v %v", resp, err)
			}
			synctest.Wait()
			if isClosed(sender) {
				t.Fatalf("round %d: the sender's connection was shed, not the repeater's", round)
			}
		})
	}
}

// TestAConnectionChosenForSheddingStartsNoWork: the victim is chosen and
// marked in one step, so a delivery on it cannot be protected afterwards;
// it starts no work whose answer could not be written (Svix retries). A
// delivery protected first is never chosen.
func TestAConnectionChosenForSheddingStartsNoWork(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		l := newConnLimitListener(nil, 2)
		shed, kept := l.admit(pipeAddrConn{}), l.admit(pipeAddrConn{})
		time.Sleep(shedAfter)

		keptReq := signedDelivery(t, testSecret, "/webhook/cluster", requestBody("kept"))
		keptReq = keptReq.WithContext(l.connContext(t.Context(), kept))
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			if victim := l.chooseVictim(time.Now()); victim != shed {
				t.Errorf("chose %p while a delivery was at work on %p, want %p", victim, kept, shed)
			}
			writeClusterResult(w, path.Base(r.URL.Path))
		}
		if resp := rig.deliver(keptReq); resp.Code != http.StatusOK {
			t.Fatalf("delivery on the kept connection: %d", resp.Code)
		}

		req := signedDelivery(t, testSecret, "/webhook/cluster", requestBody(testRequestID))
		req = req.WithContext(l.connContext(t.Context(), shed))
		resp := rig.deliver(req)
		if resp.Code != http.StatusServiceUnavailable {
			t.Errorf("a delivery on a connection being shed: %d, want 503 (no one reads it)", resp.Code)
		}
		rig.api.assertCalls(t, []apiCall{{Path: "/optimize/cluster/kept", APIKey: testAPIKey}})
	})
}

// pipeAddrConn is a net.Conn that is never read or written.
type pipeAddrConn struct{ net.Conn }

func (pipeAddrConn) Close() error { return nil }

// TestLongIdleSendersAreClosedBeforeNewDeliveries: with every slot held by
// keep-alive connections that carried a verified delivery and have been
// idle for a second (a sender's pool between deliveries), new genuine
// deliveries that send their body 300 ms after their headers (a slow link)
// are all answered 200: an idle connection is closed for each, never one
// of them.
func TestLongIdleSendersAreClosedBeforeNewDeliveries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const max = 4
		rig := newBubbleRig(t, testSecret)
		s := startBubbleServer(t, rig.handler, max)
		var idle []net.Conn
		for i := range max {
			conn := s.dial(t)
			req := signedDelivery(t, testSecret, "/webhook/route", requestBody(fmt.Sprint("idle", i)))
			go req.Write(conn)
			if resp, err := readResponse(conn); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("delivery %d: %v %v", i, resp, err)
			}
			idle = append(idle, conn)
		}
		time.Sleep(idleSafe)

		const newcomers = 3
		codes := make(chan int, newcomers)
		for i := range newcomers {
			conn := s.dial(t)
			body := requestBody(fmt.Sprint("slow", i))
			req := signedDelivery(t, testSecret, "/webhook/cluster", body)
			head := fmt.Sprintf("POST /webhook/cluster HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"+
				"Svix-Id: %s\r\nSvix-Timestamp: %s\r\nSvix-Signature: %s\r\n\r\n", len(body),
				req.Header.Get("Svix-Id"), req.Header.Get("Svix-Timestamp"), req.Header.Get("Svix-Signature"))
			go func() {
				io.WriteString(conn, head)
				time.Sleep(300 * time.Millisecond)
				conn.Write(body)
				resp, err := readResponse(conn)
				if err != nil {
					codes <- 0
					return
				}
				codes <- resp.StatusCode
			}()
			time.Sleep(150 * time.Millisecond)
		}
		for range newcomers {
			if code := <-codes; code != http.StatusOK {
				t.Errorf("a slow new delivery got %d, want 200 (0: cut)", code)
			}
		}
		closed := 0
		for _, conn := range idle {
			if isClosed(conn) {
				closed++
			}
		}
		if closed != newcomers {
			t.Errorf("%d idle connections closed for %d newcomers, want %d", closed, newcomers, newcomers)
		}
	})
}

// TestTheMetricsPortHasAConnectionCap: connections to METRICS_ADDR are
// capped like the webhook port's: past maxConnections, silent ones are
// shed for newcomers, and a scrape still gets through.
func TestTheMetricsPortHasAConnectionCap(t *testing.T) {
	if newMetrics == nil {
		t.Skip("this build has no metrics (metrics.go was left out)")
	}
	s := startService(t, &fakeAPI{}, map[string]string{"METRICS_ADDR": "127.0.0.1:0"})
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
		t.Errorf(
			"%d of %d silent connections were shed, want at least %d: the cap is %d",
			closed,
			len(silent),
			want,
			maxConnections,
		)
	}
}

// TestOnlySucceededWorkMakesASendersConnection: a connection is spared
// while briefly idle only when the last request it finished carried a
// message's work to success. A replayed capture whose fetch fails (after a
// restart, to the wrong path), or a sender's connection then used for
// anything else (GET /healthz), ranks with the never-verified: newcomers
// shed those, not the sender's.
func TestOnlySucceededWorkMakesASendersConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rig := newBubbleRig(t, testSecret)
		rig.api.respond = func(w http.ResponseWriter, r *http.Request) {
			if strings.Contains(r.URL.Path, "/route/") {
				http.NotFound(w, r) // a capture replayed to the wrong path
				return
			}
			writeClusterResult(w, path.Base(r.URL.Path))
		}
		s := startBubbleServer(t, rig.handler, 3)
		deliver := func(conn net.Conn, path, id string, want int) {
			t.Helper()
			req := signedDelivery(t, testSecret, path, requestBody(id))
			go req.Write(conn)
			if resp, err := readResponse(conn); err != nil || resp.StatusCode != want {
				t.Fatalf("%s: %v %v, want %d", path, resp, err, want)
			}
		}
		failed, sender, busied := s.dial(t), s.dial(t), s.dial(t)
		deliver(failed, "/webhook/route", "replayed", http.StatusBadGateway)
		deliver(sender, "/webhook/cluster", "genuine", http.StatusOK)
		deliver(busied, "/webhook/cluster", "genuine2", http.StatusOK)
		if resp, err := send(busied, getHealthz); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /healthz after the work: %v %v", resp, err)
		}
		synctest.Wait()
		time.Sleep(2 * shedAfter) // all three idle for less than idleSafe

		for i := range 2 {
			start := time.Now()
			if resp, err := send(s.dial(t), getHealthz); err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("newcomer %d: %v %v", i, resp, err)
			}
			if waited := time.Since(start); waited > shedAfter {
				t.Errorf("newcomer %d waited %v: nothing could be shed", i, waited)
			}
		}
		synctest.Wait()
		if isClosed(sender) || !isClosed(failed) || !isClosed(busied) {
			t.Errorf("closed: sender %v, failed capture %v, sender's then /healthz %v; want false, true, true",
				isClosed(sender), isClosed(failed), isClosed(busied))
		}
	})
}
