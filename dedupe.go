package main

import (
	"context"
	"sync"
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
// outcome. alreadyHandled reports that this call did not run work itself
// and the work succeeded. work runs with the context of the call that runs
// it, whose deadline bounds the wait of the others.
func (d *dedupe) do(ctx context.Context, key string, work func(context.Context) error) (alreadyHandled bool, err error) {
	ran := false
	_, err, _ = d.inflight.Do(key, func() (any, error) {
		// Checked inside the flight: one that just ended has remembered.
		if d.handledRecently(key) {
			return nil, nil
		}
		ran = true
		if err := work(ctx); err != nil {
			return nil, err
		}
		d.remember(key, time.Now())
		return nil, nil
	})
	return !ran && err == nil, err
}

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
