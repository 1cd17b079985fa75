package main

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

const (
	// dedupeCapacity is how many outcomes of messages' work are remembered
	// at most; past it the oldest are forgotten.
	dedupeCapacity = 100_000
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
	// errOtherKind: the message was handled for the other kind (a capture
	// replayed to the other kind's path); it is not fetched for this one.
	errOtherKind = errors.New("this message was delivered for the other kind")
	// errWorkDidNotReturn: the work panicked or called runtime.Goexit.
	errWorkDidNotReturn = errors.New("handling the delivery did not return")
)

// dedupe remembers messages by svix-id, which Svix keeps across retries and
// resends, so that each costs about one piece of work:
//   - a message being worked on for one kind is waited for by deliveries
//     for the other kind; one handled successfully for one kind within the
//     window (and at least bindFor) is not worked on for the other;
//   - one handled successfully within the window is not handled again;
//   - deliveries that arrive while its work runs, or within recentFor of
//     its end, share its outcome; a failure only with deliveries of its own
//     kind, so that a replay to the wrong path cannot answer the right
//     path's retries.
//
// Memory is bounded: past capacity the oldest are forgotten. Each replica
// remembers on its own.
type dedupe struct {
	window   time.Duration // how long success is remembered
	capacity int
	epoch    time.Time // times are offsets from it, on the monotonic clock

	mu      sync.Mutex
	entries map[workKey]*entry
	ended   []*entry // entries whose work ended, oldest first
}

// workKey names a message's work for one kind. Only verified ids are
// remembered, and they are at most maxMessageIDBytes long.
type workKey struct {
	kind kind
	id   string
}

// entry is a message's work for one kind: running until done is closed,
// then its outcome.
type entry struct {
	key  workKey
	done chan struct{} // closed when err and at are set
	err  error
	at   time.Duration // when the work ended, since epoch
}

func newDedupe(window time.Duration, capacity int) *dedupe {
	return &dedupe{window: window, capacity: capacity, epoch: time.Now(), entries: map[workKey]*entry{}}
}

// do runs work(ctx) for message id of kind k, unless the message is
// remembered: then it refuses another kind's success with errOtherKind,
// or shares the outcome of the work that ran, or waits for the work that
// runs (until ctx ends: a waiter may leave when its sender goes away).
// shared reports that this call did not run work itself.
//
// work runs on the caller's goroutine, and others may wait for it: work
// that should not end when its caller goes away must not use a context
// that does (the handler gives it one of its own). A panic in work, or a
// runtime.Goexit, is an error for every caller.
func (d *dedupe) do(ctx context.Context, k kind, id string, work func(context.Context) error) (shared bool, err error) {
	key := workKey{kind: k, id: id}
	d.mu.Lock()
	for {
		running, outcome, remembered := d.recall(key)
		if running == nil && !remembered {
			break
		}
		d.mu.Unlock()
		if remembered {
			return true, outcome
		}
		select {
		case <-running.done:
		case <-ctx.Done():
			return true, ctx.Err()
		}
		d.mu.Lock() // and look again: a failure of the other kind decides nothing here
	}
	e := &entry{key: key, done: make(chan struct{})}
	d.entries[key] = e
	d.mu.Unlock()

	returned := false
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: it panicked: %v\n%s", errWorkDidNotReturn, p, debug.Stack())
		} else if !returned {
			err = fmt.Errorf("%w: it called runtime.Goexit", errWorkDidNotReturn)
		}
		d.end(e, err)
	}()
	err = work(ctx)
	returned = true
	return false, err
}

// recall is what d remembers of key's message, with d.mu held: work to
// wait for (of either kind), or an outcome that answers a delivery of
// key's kind (remembered), or neither.
func (d *dedupe) recall(key workKey) (running *entry, outcome error, remembered bool) {
	now := time.Since(d.epoch)
	for _, k := range kinds {
		e := d.entries[workKey{kind: k, id: key.id}]
		if e == nil {
			continue
		}
		select {
		case <-e.done:
		default:
			return e, nil, false
		}
		age := now - e.at
		succeeded := e.err == nil
		switch {
		case k != key.kind && succeeded && age < max(d.window, bindFor):
			return nil, errOtherKind, true
		case k == key.kind && succeeded && age < d.window:
			return nil, nil, true
		case k == key.kind && age < recentFor:
			return nil, e.err, true
		}
	}
	return nil, nil, false
}

// end records e's outcome, wakes those waiting for it, and forgets what
// ended too long ago to matter, and the oldest while over capacity. A
// message worked on again has a newer entry; the older one counts towards
// capacity until it is swept.
func (d *dedupe) end(e *entry, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e.err = err
	e.at = time.Since(d.epoch)
	d.ended = append(d.ended, e)
	for len(d.ended) > 0 && (len(d.ended) > d.capacity || e.at-d.ended[0].at >= max(d.window, bindFor)) {
		if old := d.ended[0]; d.entries[old.key] == old {
			delete(d.entries, old.key)
		}
		d.ended[0] = nil
		d.ended = d.ended[1:]
	}
	close(e.done)
}

// Len is how many messages are remembered.
func (d *dedupe) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.entries)
}
