package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
)

// Rejected and repeated deliveries (anyone can send them) are logged up to
// rejectLogBurst lines per rejectLogInterval; the rest are counted, and the
// count is logged when the interval ends.
const (
	rejectLogBurst    = 20
	rejectLogInterval = 10 * time.Second
)

// newLogger is the service's logger: text or json lines on w.
func newLogger(w io.Writer, level slog.Level, format string) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// rejectLog bounds the log lines that clients (or replays) can cause.
type rejectLog struct {
	logger *slog.Logger

	mu         sync.Mutex
	windowEnd  time.Time
	written    int // lines written in this interval
	notWritten int // lines over the limit, not yet reported
}

func newRejectLog(logger *slog.Logger) *rejectLog {
	return &rejectLog{logger: logger}
}

// log writes a line, unless this interval's burst is spent: then it counts
// it, and the first line over the limit schedules the count's report.
func (l *rejectLog) log(level slog.Level, msg string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if !now.Before(l.windowEnd) {
		l.windowEnd = now.Add(rejectLogInterval)
		l.written = 0
	}
	if l.written < rejectLogBurst {
		l.written++
		l.logger.Log(context.Background(), level, msg, args...)
		return
	}
	l.notWritten++
	if l.notWritten == 1 {
		time.AfterFunc(time.Until(l.windowEnd), l.reportNotWritten)
	}
}

func (l *rejectLog) reportNotWritten() {
	l.mu.Lock()
	count := l.notWritten
	l.notWritten = 0
	l.mu.Unlock()
	l.logger.Warn("rejected or repeated deliveries not logged, over the log rate limit",
		"count", count,
		"limit", fmt.Sprintf("%d per %v", rejectLogBurst, rejectLogInterval))
}

// logSafe is s cut to 128 bytes, quoted with escapes unless it is
// printable ASCII: no control or bidirectional-text character a client
// sent reaches a log line.
func logSafe(s string) string {
	s = s[:min(len(s), 128)]
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e {
			return strconv.QuoteToASCII(s)
		}
	}
	return s
}
