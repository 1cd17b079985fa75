package main

import (
	"context"
	"errors"
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

	mu       sync.Mutex
	handled  map[string]time.Time // key → when it was handled
	order    []handledEntry       // the same entries, oldest first
	inflight map[string]*inflightWork
}

type handledEntry struct {
	key string
	at  time.Time
}

type inflightWork struct {
	done chan struct{} // closed when err is set
	err  error
}

var errWorkPanicked = errors.New("handling the delivery panicked")

func newDedupe(window time.Duration, capacity int) *dedupe {
	return &dedupe{
		window:   window,
		capacity: capacity,
		handled:  make(map[string]time.Time),
		inflight: make(map[string]*inflightWork),
	}
}

// do runs work for key, unless key was handled within the window (then it
// reports alreadyHandled) or another do for key is running (then it waits for
// that one and shares its outcome, or gives up when ctx ends).
func (d *dedupe) do(ctx context.Context, key string, work func(context.Context) error) (alreadyHandled bool, err error) {
	d.mu.Lock()
	if at, ok := d.handled[key]; ok && time.Since(at) < d.window {
		d.mu.Unlock()
		return true, nil
	}
	if running, ok := d.inflight[key]; ok {
		d.mu.Unlock()
		select {
		case <-running.done:
			return running.err == nil, running.err
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	w := &inflightWork{done: make(chan struct{}), err: errWorkPanicked}
	d.inflight[key] = w
	d.mu.Unlock()

	defer func() {
		d.mu.Lock()
		delete(d.inflight, key)
		if w.err == nil && d.window > 0 {
			d.remember(key, time.Now())
		}
		d.mu.Unlock()
		close(w.done)
	}()
	w.err = work(ctx)
	return false, w.err
}

// remember records key as handled at now, first forgetting entries that have
// expired and, while full, the oldest. d.mu must be held.
func (d *dedupe) remember(key string, now time.Time) {
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
