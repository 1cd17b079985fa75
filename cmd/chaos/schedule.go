package main

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"time"

	"optipick-webhooks/internal/optipicksim"
)

// schedule is everything a run does, and when, relative to its start. It
// is made from the seed alone, so one seed always gives one schedule; only
// the wall-clock interleaving of deliveries with it varies between runs.
type schedule struct {
	events []event  // submitted at i/rate
	stops  []stop   // receiver stops, in order
	faults []window // API outages, in order, not overlapping
	bursts []burst  // duplicate deliveries
	// end is when the last fault is over (a stop counts with its pause
	// and the longest drain a SIGTERM can take).
	end time.Duration
}

type event struct {
	at   time.Duration
	kind string // cluster or route
}

type stop struct {
	at       time.Duration
	graceful bool // SIGTERM and drain; else SIGKILL
	pause    time.Duration
}

type window struct {
	at, length time.Duration
	fault      optipicksim.APIFault
}

type burst struct {
	at      time.Duration
	indices []int // events whose message is resent, each resendCopies times at once
}

// resendCopies is how many resends of one message a burst sends at once.
const resendCopies = 2

// maxDrain is the longest a SIGTERM can take: the receiver's drain timeout.
const maxDrain = 15 * time.Second

func newSchedule(o options) schedule {
	rng := rand.New(rand.NewPCG(uint64(o.seed), 0x0c4a05))
	var s schedule
	interval := time.Duration(float64(time.Second) / o.rate)
	phase := time.Duration(o.n) * interval // the submission phase: faults happen in it

	for i := range o.n {
		kind := "cluster"
		if rng.IntN(2) == 1 {
			kind = "route"
		}
		s.events = append(s.events, event{at: time.Duration(i) * interval, kind: kind})
	}

	// Stops: one in each of o.kills equal slots of the phase, at a random
	// moment in the slot's first 80%.
	for i := range o.kills {
		slot := phase / time.Duration(o.kills)
		st := stop{
			at:       time.Duration(i)*slot + time.Duration(rng.Float64()*0.8*float64(slot)),
			graceful: rng.Float64() < o.graceful,
			pause:    between(rng, o.minPause, o.maxPause),
		}
		s.stops = append(s.stops, st)
		s.end = max(s.end, st.at+st.pause+maxDrain)
	}

	// API outages: every kind in turn (in a shuffled order), one per slot.
	kinds := []optipicksim.APIFault{{Status: 500}, {Status: 503}, {Status: 429}, {Hang: true}}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	for i := range o.faultWindows {
		slot := phase / time.Duration(o.faultWindows)
		w := window{fault: kinds[i%len(kinds)]}
		w.length = between(rng, o.maxOutage/4, o.maxOutage)
		if w.fault.Hang { // each hung GET holds a delivery ~5 s: keep them shorter
			w.length = between(rng, o.maxOutage/4, o.maxOutage*6/10)
		}
		w.length = min(w.length, slot*9/10)
		w.at = time.Duration(i)*slot + time.Duration(rng.Float64()*float64(slot-w.length))
		s.faults = append(s.faults, w)
		s.end = max(s.end, w.at+w.length)
	}

	// Duplicate bursts in the phase's second half, each resending messages
	// of events submitted at least a second before.
	for i := range o.bursts {
		b := burst{at: phase/2 + time.Duration(float64(i)+rng.Float64())*phase/2/time.Duration(o.bursts)}
		submitted := int((b.at - time.Second) / interval)
		if submitted > 0 {
			b.indices = rng.Perm(submitted)[:min(o.burstSize, submitted)]
		}
		s.bursts = append(s.bursts, b)
		s.end = max(s.end, b.at)
	}
	s.end = max(s.end, phase)
	return s
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

// fingerprint identifies the schedule: the same seed and options print the
// same fingerprint.
func (s schedule) fingerprint() string {
	h := fnv.New64a()
	fmt.Fprint(h, s.events, s.stops, s.faults, s.bursts)
	return fmt.Sprintf("%016x", h.Sum64())
}
