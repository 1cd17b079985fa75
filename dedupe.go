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

// dedupe makes Svix's at-least-once delivery do the work about once:
//   - a message handled successfully within the window is not handled again
//     (Svix keeps its svix-id across retries and manual resends);
//   - deliveries of one message that arrive together share one piece of work.
//
// Only success is remembered, so a failed delivery is processed again when
// Svix retries it. Memory is bounded: past capacity the oldest are forgotten.
// Each replica remembers on its own.
type dedupe struct {
	window   time.Duration // 0 remembers nothing
	capacity int
	epoch    time.Time // handled times are offsets from it, on the monotonic clock

	mu       sync.Mutex
	inflight map[dedupeKey]*flight       // the work running for a key
	handled  map[dedupeKey]time.Duration // when a key was handled, since epoch
	order    []handledEntry              // the same entries, oldest first
}

// dedupeKey is the first 128 bits of the SHA-256 of a key. Remembered
// entries hold no pointers, so the garbage collector never scans them: at
// capacity they are 100,000 entries that it would otherwise trace on every
// cycle. Only verified deliveries are remembered, and a collision between
// two of them is as likely as guessing a 128-bit key.
type dedupeKey [16]byte

func keyOf(key string) dedupeKey {
	sum := sha256.Sum256([]byte(key))
	return dedupeKey(sum[:16])
}

// flight is one run of the work for a key, which duplicates wait for.
type flight struct {
	done chan struct{} // closed when err is set
	err  error
}

type handledEntry struct {
	key dedupeKey
	at  time.Duration // since epoch
}

func newDedupe(window time.Duration, capacity int) *dedupe {
	return &dedupe{window: window, capacity: capacity, epoch: time.Now(),
		inflight: make(map[dedupeKey]*flight), handled: make(map[dedupeKey]time.Duration)}
}

// do runs work(ctx) for key, unless key was handled within the window, or
// another do for key is running: then it waits for that one and shares its
// outcome, or gives up when its own ctx ends. alreadyHandled reports that
// this call did not run work itself and the work succeeded.
//
// work runs on the caller's goroutine (as in singleflight's Do), under the
// first caller's ctx: the others wait for it, so that ctx should end only
// at a deadline, not when a caller goes away. A panic in work, or a
// runtime.Goexit, is returned as an error to every caller, and the key is
// not remembered.
func (d *dedupe) do(ctx context.Context, key string, work func(context.Context) error) (alreadyHandled bool, err error) {
	k := keyOf(key)
	d.mu.Lock()
	if at, ok := d.handled[k]; ok && time.Since(d.epoch)-at < d.window {
		d.mu.Unlock()
		return true, nil
	}
	if f, ok := d.inflight[k]; ok {
		d.mu.Unlock()
		select {
		case <-f.done:
			return f.err == nil, f.err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	d.inflight[k] = f
	d.mu.Unlock()

	returned := false
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: it panicked: %v\n%s", errWorkDidNotReturn, p, debug.Stack())
		} else if !returned {
			err = fmt.Errorf("%w: it called runtime.Goexit", errWorkDidNotReturn)
		}
		f.err = err
		d.mu.Lock()
		delete(d.inflight, k)
		if err == nil {
			d.rememberLocked(k, time.Since(d.epoch))
		}
		d.mu.Unlock()
		close(f.done)
	}()
	err = work(ctx)
	returned = true
	return false, err
}

// errWorkDidNotReturn: the work panicked or called runtime.Goexit.
var errWorkDidNotReturn = errors.New("handling the delivery did not return")

// Len is how many handled deliveries are remembered.
func (d *dedupe) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.handled)
}

// rememberLocked records key as handled at now, first forgetting entries
// that have expired and, while full, the oldest. d.mu is held.
func (d *dedupe) rememberLocked(key dedupeKey, now time.Duration) {
	if d.window <= 0 {
		return
	}
	for len(d.order) > 0 && (len(d.handled) >= d.capacity || now-d.order[0].at >= d.window) {
		oldest := d.order[0]
		d.order = d.order[1:]
		// A key handled again after it expired has a newer entry further on.
		if d.handled[oldest.key] == oldest.at {
			delete(d.handled, oldest.key)
		}
	}
	d.handled[key] = now
	d.order = append(d.order, handledEntry{key, now})
}
