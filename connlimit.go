package main

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimitListener admits at most max connections at once, so that no
// client can hold more sockets, goroutines and buffers than that. When all
// are taken, it closes a connection that is not serving a verified delivery
// (one that is idle, still sending its request, or sending one that has not
// proved genuine), so that a new client, such as Svix with a genuine
// delivery, gets in at once however many connections an attacker holds or
// renews. The victim is drawn at random, first among connections that never
// carried a verified delivery: an attacker who renews connections cannot
// arrange for a genuine one to be the next, and a keep-alive connection
// that already carried deliveries (Svix's, an ingress's) is shed last. Only
// when every connection serves a verified delivery does a newcomer wait, in
// the kernel's accept queue, for one to end.
//
// Wire it with the server's ConnState (trackState) and ConnContext
// (connContext); the handler reports verified requests through the
// verifiedHookKey it finds in the request's context.
type connLimitListener struct {
	net.Listener
	slots  chan struct{} // one per admitted connection
	closed chan struct{}

	mu        sync.Mutex
	sheddable map[*limitedConn]struct{} // admitted, not serving a verified delivery
	closeOnce sync.Once
}

// shedAfter spares a connection that has only just been accepted: a
// genuine client sends its request within milliseconds.
const shedAfter = 100 * time.Millisecond

func newConnLimitListener(l net.Listener, max int) *connLimitListener {
	return &connLimitListener{
		Listener:  l,
		slots:     make(chan struct{}, max),
		closed:    make(chan struct{}),
		sheddable: make(map[*limitedConn]struct{}),
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
		if l.shedOne() {
			continue
		}
		select {
		case l.slots <- struct{}{}:
			return l.admit(c), nil
		case <-time.After(shedAfter): // look for a connection to shed again
		case <-l.closed:
			c.Close()
			return nil, net.ErrClosed
		}
	}
}

func (l *connLimitListener) admit(c net.Conn) *limitedConn {
	lc := &limitedConn{Conn: c, l: l, accepted: time.Now()}
	l.setSheddable(lc, true)
	return lc
}

func (l *connLimitListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// trackState is the http.Server's ConnState hook: a connection becomes
// sheddable again whenever a request ends or a new one starts.
func (l *connLimitListener) trackState(c net.Conn, state http.ConnState) {
	if lc, ok := c.(*limitedConn); ok {
		l.setSheddable(lc, state == http.StateNew || state == http.StateIdle || state == http.StateActive)
	}
}

// connContext is the http.Server's ConnContext hook: it gives each request
// the func that protects its connection once the request is verified.
func (l *connLimitListener) connContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		return context.WithValue(ctx, verifiedHookKey{}, func() { l.protect(lc) })
	}
	return ctx
}

func (l *connLimitListener) setSheddable(c *limitedConn, sheddable bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sheddable && !c.released {
		l.sheddable[c] = struct{}{}
	} else {
		delete(l.sheddable, c)
	}
}

// protect keeps c from being shed while it serves a verified delivery, and
// ranks it with the connections that carried one from then on.
func (l *connLimitListener) protect(c *limitedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c.carriedVerified = true
	delete(l.sheddable, c)
}

// shedOne closes a sheddable connection accepted at least shedAfter ago,
// drawn at random, and reports whether there was one. A connection that
// carried a verified delivery (Svix's keep-alive) is shed only when no
// connection that never carried one is open at all: while one is, however
// young, the newcomer waits for it to come of age instead.
func (l *connLimitListener) shedOne() bool {
	l.mu.Lock()
	var never, carried []*limitedConn
	youngNever := false
	for c := range l.sheddable {
		switch old := time.Since(c.accepted) >= shedAfter; {
		case c.carriedVerified && old:
			carried = append(carried, c)
		case c.carriedVerified:
		case old:
			never = append(never, c)
		default:
			youngNever = true
		}
	}
	l.mu.Unlock()
	victims := never
	if len(victims) == 0 && !youngNever {
		victims = carried
	}
	if len(victims) == 0 {
		return false
	}
	victims[rand.N(len(victims))].Close()
	return true
}

// limitedConn gives its slot back when it is closed, by the server or by
// shedding, whichever comes first.
type limitedConn struct {
	net.Conn
	l        *connLimitListener
	accepted time.Time
	// guarded by l.mu
	released        bool
	carriedVerified bool // it has carried a verified delivery
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.l.mu.Lock()
	release := !c.released
	c.released = true
	delete(c.l.sheddable, c)
	c.l.mu.Unlock()
	if release {
		<-c.l.slots
	}
	return err
}
