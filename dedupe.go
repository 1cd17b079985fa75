package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"
)

const (
	// recentFor is how long the outcome of a message's work answers its
	// repeats, whatever the window: a replayed capture of a failing
	// message costs one API call per recentFor, not one per replay. Svix
	// retries a failure 5 s later at the earliest, past it.
	recentFor = 2 * time.Second

	// bindFor is how long, at least, a message stays bound to its kind:
	// Svix's signatures are valid for ±5 minutes, so a captured delivery
	// cannot be replayed for longer than 10 minutes after it was signed.
	bindFor = 10 * time.Minute
)

// errOtherKind: the message was verified for the other kind (a delivery
// replayed to the other kind's path); it is not fetched for this one.
var errOtherKind = errors.New("this message was delivered for the other kind")

// errWorkDidNotReturn: the work panicked or called runtime.Goexit.
var errWorkDidNotReturn = errors.New("handling the delivery did not return")

// dedupe remembers messages by their svix-id, which Svix keeps across
// retries and resends, so that each costs about one piece of work:
//   - a message is worked on only for the kind it was first verified for
//     (errOtherKind for the other), for the window and at least bindFor;
//   - a message handled successfully within the window is not handled again;
//   - deliveries of a message that arrive while its work runs, or within
//     recentFor of its end, share its outcome, failure included.
//
// Only success is remembered for long: Svix's retry of a failure is
// worked on again. Memory is bounded: past capacity the oldest entries are
// forgotten. Each replica remembers on its own.
type dedupe struct {
	window   time.Duration // how long success is remembered; 0: only recentFor
	capacity int
	epoch    time.Time // entries' times are offsets from it, on the monotonic clock

	mu      sync.Mutex
	entries map[dedupeKey]*entry
	ended   []*entry // entries whose work ended, oldest first
}

// dedupeKey is the first 128 bits of the SHA-256 of a svix-id: bounded in
// size whatever the id. Only verified ids are remembered, and a collision
// between two of them is as likely as guessing a 128-bit key.
type dedupeKey [16]byte

// entry is a message's work: running until done is closed, then its outcome.
type entry struct {
	key  dedupeKey
	kind kind
	done chan struct{} // closed when err and at are set
	err  error
	at   time.Duration // when the work ended, since epoch
}

func newDedupe(window time.Duration, capacity int) *dedupe {
	return &dedupe{window: window, capacity: capacity, epoch: time.Now(), entries: make(map[dedupeKey]*entry)}
}

// do runs work(ctx) for message id of kind k, unless the message is
// remembered: then it shares the outcome of the work that ran or runs (a
// running one it waits for, until its own ctx ends), or refuses a message
// of the other kind with errOtherKind. shared reports that this call did
// not run work itself.
//
// work runs on the caller's goroutine, under its ctx, and the callers that
// share its outcome wait for it: so that ctx should end only at a
// deadline, not when the caller goes away. A panic in work, or a
// runtime.Goexit, is returned as an error to every caller.
func (d *dedupe) do(ctx context.Context, k kind, id string, work func(context.Context) error) (shared bool, err error) {
	sum := sha256.Sum256([]byte(id))
	key := dedupeKey(sum[:16])
	d.mu.Lock()
	if e := d.entries[key]; e != nil {
		select {
		case <-e.done:
			age := time.Since(d.epoch) - e.at
			if e.kind != k && age < max(d.window, bindFor) {
				d.mu.Unlock()
				return true, errOtherKind
			}
			if age < recentFor || e.err == nil && age < d.window {
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
		e.err, e.at = err, time.Since(d.epoch)
		d.ended = append(d.ended, e)
		d.forgetLocked(e.at)
		d.mu.Unlock()
		close(e.done)
	}()
	err = work(ctx)
	returned = true
	return false, err
}

// forgetLocked forgets entries that ended long enough before now to mean
// nothing, and the oldest while over capacity. d.mu is held.
func (d *dedupe) forgetLocked(now time.Duration) {
	keep := max(d.window, bindFor)
	for len(d.ended) > 0 && (len(d.entries) > d.capacity || now-d.ended[0].at >= keep) {
		oldest := d.ended[0]
		d.ended[0] = nil
		d.ended = d.ended[1:]
		// A message worked on again has a newer entry.
		if d.entries[oldest.key] == oldest {
			delete(d.entries, oldest.key)
		}
	}
}

// Len is how many messages are remembered.
func (d *dedupe) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.entries)
}
