//go:build race

package main

// raceEnabled: the race detector slows streaming about tenfold.
const raceEnabled = true
