package main

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// connLimitListener admits at most max connections at once, so that no
// client can hold more sockets, goroutines and buffers than that. When all
// are taken, it sheds the connection that has waited longest without a
// request in progress (idle keep-alive, or still sending its headers), so
// that a new client, such as Svix with a genuine delivery, gets through.
// When every connection is serving a request, the new one waits, in the
// kernel's accept queue, until one ends: the server's timeouts bound how
// long. Set the server's ConnState to trackState.
type connLimitListener struct {
	net.Listener
	slots  chan struct{} // one per admitted connection
	closed chan struct{}

	mu        sync.Mutex
	quiet     map[*limitedConn]time.Time // admitted, no request in progress, since
	closeOnce sync.Once
}

// shedAfter spares connections that have only just gone quiet: a genuine
// client sends its request within milliseconds of connecting.
const shedAfter = time.Second

func newConnLimitListener(l net.Listener, max int) *connLimitListener {
	return &connLimitListener{
		Listener: l,
		slots:    make(chan struct{}, max),
		closed:   make(chan struct{}),
		quiet:    make(map[*limitedConn]time.Time),
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
			lc := &limitedConn{Conn: c, l: l}
			l.setQuiet(lc, true)
			return lc, nil
		default:
		}
		if l.shedOldestQuiet() {
			continue
		}
		select {
		case l.slots <- struct{}{}:
			lc := &limitedConn{Conn: c, l: l}
			l.setQuiet(lc, true)
			return lc, nil
		case <-time.After(100 * time.Millisecond): // look for a connection to shed again
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

// trackState is the http.Server's ConnState hook: it tells which
// connections are quiet and may be shed.
func (l *connLimitListener) trackState(c net.Conn, state http.ConnState) {
	if lc, ok := c.(*limitedConn); ok {
		l.setQuiet(lc, state == http.StateNew || state == http.StateIdle)
	}
}

func (l *connLimitListener) setQuiet(c *limitedConn, quiet bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if quiet && !c.released {
		l.quiet[c] = time.Now()
	} else {
		delete(l.quiet, c)
	}
}

// shedOldestQuiet closes the connection that has been quiet longest, if it
// has been quiet for at least shedAfter, and reports whether it did.
func (l *connLimitListener) shedOldestQuiet() bool {
	l.mu.Lock()
	var oldest *limitedConn
	var since time.Time
	for c, at := range l.quiet {
		if oldest == nil || at.Before(since) {
			oldest, since = c, at
		}
	}
	l.mu.Unlock()
	if oldest == nil || time.Since(since) < shedAfter {
		return false
	}
	oldest.Close()
	return true
}

// limitedConn gives its slot back when it is closed, by the server or by
// shedding, whichever comes first.
type limitedConn struct {
	net.Conn
	l        *connLimitListener
	released bool // guarded by l.mu
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.l.mu.Lock()
	release := !c.released
	c.released = true
	delete(c.l.quiet, c)
	c.l.mu.Unlock()
	if release {
		<-c.l.slots
	}
	return err
}
