package main

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// This file is optional: without it, connections are not capped (see
// limitConnections in server.go).

func init() {
	limitConnections = func(l net.Listener, srv *http.Server, maxConns int) net.Listener {
		limited := newConnLimitListener(l, maxConns)
		srv.ConnState = limited.trackState
		srv.ConnContext = limited.connContext
		return limited
	}
}

// connLimitListener admits at most maxConns connections at once. When all are
// taken, it closes one for the newcomer, so that a newcomer such as Svix
// gets in however many connections an attacker holds. It chooses in an
// order that spares genuine work:
//
//  1. a connection that never carried a verified delivery and is idle,
//     silent, or has been sending one request for slowAfter or more;
//  2. a sender's keep-alive connection (one that carried a verified
//     delivery) idle for idleSafe or more: its client sees the close before
//     it next uses the connection, so the close costs a reconnect, not a
//     failed delivery;
//  3. a connection with a request in flight that has not proved genuine.
//
// Never a connection serving a verified delivery, one younger than
// shedAfter, or a sender's connection idle for less than idleSafe (its
// client may be reusing it at that moment). Within a class the victim is
// drawn at random, so that an attacker cannot arrange which. When there is
// no candidate, the newcomer waits.
//
// It needs the server's ConnState (trackState) and ConnContext
// (connContext) hooks: the handler calls the connHooks in the request's
// context once the request proved genuine, and once its work succeeded.
type connLimitListener struct {
	net.Listener
	slots     chan struct{} // one per admitted connection
	closed    chan struct{}
	closeOnce sync.Once

	mu    sync.Mutex
	conns map[*limitedConn]struct{} // admitted and not closed
}

const (
	// shedAfter spares a connection just accepted: a client sends its
	// request within milliseconds.
	shedAfter = 100 * time.Millisecond
	// slowAfter: a request still unproven this long after its headers
	// arrived is slow (Svix sends a delivery at once).
	slowAfter = time.Second
	// idleSafe: a keep-alive connection idle this long is not about to be
	// reused by its client.
	idleSafe = time.Second
)

func newConnLimitListener(l net.Listener, maxConns int) *connLimitListener {
	return &connLimitListener{
		Listener: l,
		slots:    make(chan struct{}, maxConns),
		closed:   make(chan struct{}),
		conns:    map[*limitedConn]struct{}{},
	}
}

func (l *connLimitListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	for {
		select {
		case l.slots <- struct{}{}:
			return l.admit(c), nil
		default:
		}
		if victim := l.chooseVictim(time.Now()); victim != nil {
			victim.Close() // gives its slot back
			continue
		}
		select {
		case l.slots <- struct{}{}:
			return l.admit(c), nil
		case <-time.After(shedAfter): // look again: connections age into candidates
		case <-l.closed:
			c.Close()
			return nil, net.ErrClosed
		}
	}
}

func (l *connLimitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func (l *connLimitListener) admit(c net.Conn) *limitedConn {
	now := time.Now()
	lc := &limitedConn{Conn: c, l: l, accepted: now, state: http.StateNew, since: now}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.conns[lc] = struct{}{}
	return lc
}

// trackState is the server's ConnState hook. A request starting or ending
// ends the protection of the one before; a connection is a sender's while
// the last request it finished carried a message's work to success.
func (l *connLimitListener) trackState(c net.Conn, state http.ConnState) {
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lc.state = state
	lc.since = time.Now()
	lc.verified = false
	if state == http.StateIdle {
		lc.carried = lc.succeeded
		lc.succeeded = false
	}
}

// connContext is the server's ConnContext hook: it gives each request the
// means to protect its connection.
func (l *connLimitListener) connContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		return context.WithValue(ctx, connHooksKey{}, connHooks{protect: lc.protect, workSucceeded: lc.workSucceeded})
	}
	return ctx
}

// chooseVictim returns the connection to close for a newcomer, or nil. It
// marks the victim as closing in the same critical section, so that a
// delivery on it can no longer be protected: none starts work whose answer
// could not be written.
func (l *connLimitListener) chooseVictim(now time.Time) *limitedConn {
	l.mu.Lock()
	defer l.mu.Unlock()
	var candidates [neverShed][]*limitedConn
	for c := range l.conns {
		if class := c.shedClass(now); class != neverShed {
			candidates[class] = append(candidates[class], c)
		}
	}
	for _, class := range candidates {
		if len(class) > 0 {
			victim := class[rand.N(len(class))]
			victim.closing = true
			return victim
		}
	}
	return nil
}

// shedClass orders connections by what closing them costs: the lowest
// class is closed first.
type shedClass int

const (
	shedIdleOrSlow   shedClass = iota // never carried a verified delivery: idle, silent or slow
	shedLongIdleSend                  // a sender's keep-alive connection, idle for idleSafe or more
	shedUnproven                      // a request in flight that has not proved genuine
	neverShed
)

// limitedConn is an admitted connection. It gives its slot back when first
// closed, by the server or by shedding.
type limitedConn struct {
	net.Conn
	l        *connLimitListener
	accepted time.Time

	// Guarded by l.mu.
	state     http.ConnState // StateNew, StateActive or StateIdle
	since     time.Time      // when it entered state
	verified  bool           // serving a verified delivery
	succeeded bool           // its request carried a message's work to success
	carried   bool           // its last finished request did: a sender's connection
	closing   bool           // chosen as a victim
}

func (c *limitedConn) shedClass(now time.Time) shedClass {
	inState := now.Sub(c.since)
	switch {
	case c.closing || c.verified || now.Sub(c.accepted) < shedAfter:
		return neverShed
	case c.carried && c.state == http.StateIdle && inState >= idleSafe:
		return shedLongIdleSend
	case c.carried:
		return neverShed
	case c.state != http.StateActive || inState >= slowAfter:
		return shedIdleOrSlow
	}
	return shedUnproven
}

// protect keeps c open while it serves a verified delivery. It reports
// false when c is already being closed for a newcomer.
func (c *limitedConn) protect() bool {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	if c.closing {
		return false
	}
	c.verified = true
	return true
}

// workSucceeded records that c's request carried a message's work to
// success. A replayed capture does no work, or fails, so it cannot make
// its connection a sender's.
func (c *limitedConn) workSucceeded() {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	c.succeeded = true
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.l.mu.Lock()
	_, open := c.l.conns[c]
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	if open {
		<-c.l.slots
	}
	return err
}
