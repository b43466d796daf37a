package testutil

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Buffer is an io.Writer safe for concurrent writers, whose text can be
// read at any time: a child process's output, a logger's destination.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Log is a logger for code under test: each line goes to t.Log, so a
// failing test shows what was logged next to its own messages, and is kept
// for the test to read.
type Log struct {
	*slog.Logger
	kept Buffer
}

// NewLog returns a Log writing to t. What is logged after t ends (by a
// goroutine still running) is kept but not passed to t.Log, which would
// panic.
func NewLog(t testing.TB) *Log {
	l := &Log{}
	w := &lineLogger{t: t}
	t.Cleanup(w.stop)
	l.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(&l.kept, w), &slog.HandlerOptions{Level: slog.LevelDebug}))
	return l
}

// String returns everything logged so far.
func (l *Log) String() string { return l.kept.String() }

// lineLogger passes what a slog handler writes, one record a Write, to
// t.Log until stopped.
type lineLogger struct {
	t       testing.TB
	mu      sync.Mutex
	stopped bool
}

func (w *lineLogger) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *lineLogger) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
}
