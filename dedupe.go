package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
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
	inflight singleflight.Group

	mu      sync.Mutex
	handled map[string]time.Time // key → when it was handled
	order   []handledEntry       // the same entries, oldest first
}

type handledEntry struct {
	key string
	at  time.Time
}

func newDedupe(window time.Duration, capacity int) *dedupe {
	return &dedupe{window: window, capacity: capacity, handled: make(map[string]time.Time)}
}

// do runs work for key, unless key was handled within the window, or
// another do for key is running: then it waits for that one and shares its
// outcome, or gives up when its own ctx ends. alreadyHandled reports that
// this call did not run work itself and the work succeeded.
//
// work runs once for all the callers: with the first caller's deadline, but
// not cancelled when that caller goes away, since the others wait for it.
// A panic in work is returned as an error, not re-raised.
func (d *dedupe) do(ctx context.Context, key string, work func(context.Context) error) (alreadyHandled bool, err error) {
	var ran atomic.Bool
	results := d.inflight.DoChan(key, func() (_ any, err error) {
		// Checked inside the flight: one that just ended has remembered.
		if d.handledRecently(key) {
			return nil, nil
		}
		ran.Store(true)
		// DoChan re-panics in a goroutine of its own, which would end the
		// process: turn a panic into this delivery's error instead.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%w: %v", errWorkPanicked, p)
			}
		}()
		workCtx := context.WithoutCancel(ctx)
		if deadline, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			workCtx, cancel = context.WithDeadline(workCtx, deadline)
			defer cancel()
		}
		if err := work(workCtx); err != nil {
			return nil, err
		}
		d.remember(key, time.Now())
		return nil, nil
	})
	select {
	case r := <-results:
		return !ran.Load() && r.Err == nil, r.Err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

var errWorkPanicked = errors.New("handling the delivery panicked")

// Len is how many handled deliveries are remembered.
func (d *dedupe) Len() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.handled)
}

func (d *dedupe) handledRecently(key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	at, ok := d.handled[key]
	return ok && time.Since(at) < d.window
}

// remember records key as handled at now, first forgetting entries that have
// expired and, while full, the oldest.
func (d *dedupe) remember(key string, now time.Time) {
	if d.window <= 0 {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.order) > 0 && (len(d.handled) >= d.capacity || now.Sub(d.order[0].at) >= d.window) {
		oldest := d.order[0]
		d.order = d.order[1:]
		// A key handled again after it expired has a newer entry further on.
		if d.handled[oldest.key].Equal(oldest.at) {
			delete(d.handled, oldest.key)
		}
	}
	d.handled[key] = now
	d.order = append(d.order, handledEntry{key, now})
}
