package main

import (
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimitListener admits at most max connections at once. When all are
// taken, it closes one that is not serving a verified delivery (idle, or
// sending a request that has not proved genuine), so that a newcomer such
// as Svix gets in at once however many connections an attacker holds. The
// victim is drawn at random, so that an attacker cannot arrange which; one
// that carried a verified delivery (Svix's keep-alive) only when no other
// is open. Only when all serve verified deliveries does a newcomer wait.
//
// Wire it with the server's ConnState (trackState) and ConnContext
// (connContext): the handler calls the func under verifiedHookKey in the
// request's context once the request proved genuine.
type connLimitListener struct {
	net.Listener
	slots     chan struct{} // one per admitted connection
	closed    chan struct{}
	closeOnce sync.Once

	mu        sync.Mutex
	sheddable map[*limitedConn]bool // admitted, not serving a verified delivery
}

// shedAfter spares a connection just accepted: a client sends its request
// within milliseconds.
const shedAfter = 100 * time.Millisecond

func newConnLimitListener(l net.Listener, max int) *connLimitListener {
	return &connLimitListener{Listener: l, slots: make(chan struct{}, max), closed: make(chan struct{}),
		sheddable: map[*limitedConn]bool{}}
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
		case <-time.After(shedAfter): // look again, when the young are of age
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

// trackState is the ConnState hook: a connection is sheddable again
// whenever a request ends or a new one starts.
func (l *connLimitListener) trackState(c net.Conn, state http.ConnState) {
	if lc, ok := c.(*limitedConn); ok {
		l.setSheddable(lc, state == http.StateNew || state == http.StateIdle || state == http.StateActive)
	}
}

func (l *connLimitListener) connContext(ctx context.Context, c net.Conn) context.Context {
	if lc, ok := c.(*limitedConn); ok {
		return context.WithValue(ctx, verifiedHookKey{}, func() { // protects lc while it serves a verified delivery
			l.mu.Lock()
			defer l.mu.Unlock()
			lc.carriedVerified = true
			delete(l.sheddable, lc)
		})
	}
	return ctx
}

func (l *connLimitListener) setSheddable(c *limitedConn, sheddable bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sheddable && !c.released {
		l.sheddable[c] = true
	} else {
		delete(l.sheddable, c)
	}
}

// shedOne closes a sheddable connection accepted shedAfter ago or more,
// drawn at random: one that carried a verified delivery only when no other
// is open, however young. It reports whether it closed one. A victim that
// starts a message's work between the draw and the close is cut: Svix
// retries, and finds the work done.
func (l *connLimitListener) shedOne() bool {
	l.mu.Lock()
	var never, carried []*limitedConn
	youngNever := false
	for c := range l.sheddable {
		switch old := time.Since(c.accepted) >= shedAfter; {
		case c.carriedVerified && old:
			carried = append(carried, c)
		case !c.carriedVerified && old:
			never = append(never, c)
		case !c.carriedVerified:
			youngNever = true
		}
	}
	l.mu.Unlock()
	if len(never) == 0 && !youngNever {
		never = carried
	}
	if len(never) > 0 {
		never[rand.N(len(never))].Close()
	}
	return len(never) > 0
}

// limitedConn gives its slot back when first closed, by the server or by
// shedding.
type limitedConn struct {
	net.Conn
	l        *connLimitListener
	accepted time.Time
	// guarded by l.mu
	released, carriedVerified bool
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
