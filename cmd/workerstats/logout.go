package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
)

// logOutput is where the logs go: stderr, except while the demo's top has
// the terminal, when they are held back and written out after it.
var logOutput = &holdWriter{w: os.Stderr}

// holdWriterMax is the most a holdWriter holds; beyond it, writes are
// counted and dropped.
const holdWriterMax = 256 << 10

// holdWriter writes to w, or, between hold and release, into a buffer
// that release writes to w.
type holdWriter struct {
	mu      sync.Mutex
	w       io.Writer
	held    *bytes.Buffer
	dropped int
}

func (h *holdWriter) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		return h.w.Write(p)
	}
	if h.held.Len()+len(p) > holdWriterMax {
		h.dropped += len(p)
		return len(p), nil
	}
	return h.held.Write(p)
}

// hold starts holding writes back.
func (h *holdWriter) hold() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held = &bytes.Buffer{}
}

// release writes what was held back, and writes through again.
func (h *holdWriter) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held == nil {
		return
	}
	h.w.Write(h.held.Bytes())
	if h.dropped > 0 {
		fmt.Fprintf(h.w, "(%d bytes of log left out)\n", h.dropped)
	}
	h.held, h.dropped = nil, 0
}
