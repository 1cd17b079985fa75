package main

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"runtime/debug"
	"sync"
	"time"
)

const (
	// recentFor is how long the outcome of a message's work answers its
	// repeats, failure included: a replayed capture of a failing message
	// costs one API call per recentFor. Svix retries a failure 5 s later.
	recentFor = 2 * time.Second
	// bindFor is how long, at least, a message handled successfully stays
	// bound to its kind: a signature is valid for ±5 minutes, so no capture
	// outlives it. A failure binds nothing: a capture replayed to the wrong
	// path must not hold up Svix's retries to the right one.
	bindFor = 10 * time.Minute
)

var (
	// errOtherKind: the message was handled, or is being handled, for the
	// other kind (a capture replayed to the other kind's path); it is not
	// fetched for this one.
	errOtherKind = errors.New("this message was delivered for the other kind")
	// errWorkDidNotReturn: the work panicked or called runtime.Goexit.
	errWorkDidNotReturn = errors.New("handling the delivery did not return")
)

// dedupe remembers messages by svix-id, which Svix keeps across retries and
// resends, so that each costs about one piece of work:
//   - a message being worked on, or handled successfully within the window
//     (and at least bindFor), is not worked on for the other kind;
//   - one handled successfully within the window is not handled again;
//   - deliveries that arrive while its work runs, or within recentFor of
//     its end (a failure's, for either kind), share its outcome.
//
// Memory is bounded: past capacity the oldest are forgotten. Each replica
// remembers on its own.
type dedupe struct {
	window   time.Duration // how long success is remembered
	capacity int
	epoch    time.Time // times are offsets from it, on the monotonic clock

	seeds [2]maphash.Seed

	mu sync.Mutex
	// By two 64-bit hashes of the svix-id: bounded whatever the id. Only
	// verified ids are remembered, and two collide as likely as one guesses
	// a 128-bit key.
	entries map[[2]uint64]*entry
	ended   []*entry // entries whose work ended, oldest first
}

// entry is a message's work: running until done is closed, then its outcome.
type entry struct {
	key  [2]uint64
	kind kind
	done chan struct{} // closed when err and at are set
	err  error
	at   time.Duration // when the work ended, since epoch
}

func newDedupe(window time.Duration, capacity int) *dedupe {
	return &dedupe{window: window, capacity: capacity, epoch: time.Now(), seeds: [2]maphash.Seed{maphash.MakeSeed(), maphash.MakeSeed()},
		entries: map[[2]uint64]*entry{}}
}

// do runs work(ctx) for message id of kind k, unless the message is
// remembered: then it refuses another kind with errOtherKind, or shares the
// outcome of the work that ran, or waits for the work that runs (until ctx
// ends: a waiter may leave when its sender goes away). shared reports that
// this call did not run work itself.
//
// work runs on the caller's goroutine, and others may wait for it: work
// that should not end when its caller goes away must not use a context
// that does (the handler gives it one of its own). A panic in work, or a
// runtime.Goexit, is an error for every caller.
func (d *dedupe) do(ctx context.Context, k kind, id string, work func(context.Context) error) (shared bool, err error) {
	key := [2]uint64{maphash.String(d.seeds[0], id), maphash.String(d.seeds[1], id)}
	d.mu.Lock()
	if e := d.entries[key]; e != nil {
		select {
		case <-e.done:
			switch age := time.Since(d.epoch) - e.at; {
			case e.kind != k && e.err == nil && age < max(d.window, bindFor):
				d.mu.Unlock()
				return true, errOtherKind
			case age < recentFor || e.kind == k && e.err == nil && age < d.window: // a failure, of either kind
				d.mu.Unlock()
				return true, e.err
			}
		default:
			d.mu.Unlock()
			if e.kind != k {
				return true, errOtherKind
			}
			select {
			case <-e.done:
				return true, e.err
			case <-ctx.Done():
				return true, ctx.Err()
			}
		}
	}
	e := &entry{key: key, kind: k, done: make(chan struct{})}
	d.entries[key] = e
	d.mu.Unlock()

	returned := false
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: it panicked: %v\n%s", errWorkDidNotReturn, p, debug.Stack())
		} else if !returned {
			err = fmt.Errorf("%w: it called runtime.Goexit", errWorkDidNotReturn)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		e.err, e.at = err, time.Since(d.epoch)
		d.ended = append(d.ended, e)
		// Forget what ended too long ago to matter, and the oldest while
		// over capacity; a message worked on again has a newer entry, and
		// the older one counts towards capacity until it is swept.
		for len(d.ended) > 0 && (len(d.ended) > d.capacity || e.at-d.ended[0].at >= max(d.window, bindFor)) {
			if old := d.ended[0]; d.entries[old.key] == old {
				delete(d.entries, old.key)
			}
			d.ended[0], d.ended = nil, d.ended[1:]
		}
		close(e.done)
	}()
	err = work(ctx)
	returned = true
	return false, err
}

// Len is how many messages are remembered.
func (d *dedupe) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.entries)
}
