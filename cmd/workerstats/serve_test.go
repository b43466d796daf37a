package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
)

// blockingSweeper is a kernel side whose Sweep blocks until release is
// closed. It records, in order, every sweep's start and end and Close, so a
// test can tell whether Close came while a sweep was in progress.
type blockingSweeper struct {
	started chan struct{} // closed when the first sweep starts
	release chan struct{} // closed by free: every sweep may return
	free    func()

	mu     sync.Mutex
	events []string // "sweep", "swept", "close"
	active int      // sweeps in progress
	closed bool
}

func newBlockingSweeper() *blockingSweeper {
	s := &blockingSweeper{started: make(chan struct{}), release: make(chan struct{})}
	s.free = sync.OnceFunc(func() { close(s.release) })
	return s
}

func (s *blockingSweeper) record(e string, d int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e == "sweep" && !slices.Contains(s.events, "sweep") {
		close(s.started)
	}
	s.events = append(s.events, e)
	s.active += d
}

func (s *blockingSweeper) Sweep() error {
	s.record("sweep", 1)
	<-s.release
	s.record("swept", -1)
	return nil
}

func (s *blockingSweeper) Info() observer.ObserverInfo {
	return observer.ObserverInfo{Mode: modeEBPF, Hooks: "syscall"}
}

// Close is what serveDaemon's deferred Close of the eBPF observer does once
// serveAndMaintain has returned; it notes a sweep still running.
func (s *blockingSweeper) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active != 0 {
		s.events = append(s.events, "close during a sweep")
	}
	s.events = append(s.events, "close")
	s.closed = true
	return nil
}

// testPools binds n TCP stats sockets on loopback and starts a procfs pool
// on each, watching this test process as the master, as startPools does.
func testPools(t *testing.T, n int) []*servedPool {
	t.Helper()
	specs := make([]poolSpec, n)
	for i := range specs {
		p := poolOptions{PID: os.Getpid(), Stats: "127.0.0.1:0"}
		s, err := p.check("test", "test")
		if err != nil {
			t.Fatal(err)
		}
		specs[i] = s
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	pools, err := bindSockets(specs, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeListeners(pools) })
	o := daemonOptions{proc: observer.Procfs{Root: defaultProcRoot}, statsMaxConns: statsock.DefaultMaxConns, statsTimeout: statsock.DefaultTimeout}
	if err := startPools(context.Background(), pools, nil, nil, "test", o, log); err != nil {
		t.Fatal(err)
	}
	return pools
}

// The run step stops cleanly while the kernel side is in the middle of a
// sweep: on cancellation, or when one stats server fails, it waits for the
// sweep to end before it returns, so the kernel side (closed by the caller
// once it has returned) is never closed under a sweep. A failing server
// stops the other servers too. Cancellation returns nil.
func TestDaemonShutdownWaitsForSweep(t *testing.T) {
	for _, c := range []struct {
		name string
		// stop ends the run: cancel its context, or break a server.
		stop    func(cancel context.CancelFunc, pools []*servedPool)
		wantErr error
	}{
		{"cancelled", func(cancel context.CancelFunc, _ []*servedPool) { cancel() }, nil},
		{"a server fails", func(_ context.CancelFunc, pools []*servedPool) { pools[0].ln.Close() }, net.ErrClosed},
	} {
		t.Run(c.name, func(t *testing.T) {
			pools := testPools(t, 2)
			k := newBlockingSweeper()
			defer k.free() // a failed test leaves no sweep blocked
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			done := make(chan error, 1)
			go func() {
				err := serveAndMaintain(ctx, pools, k, maintenance{refresh: 5 * time.Millisecond, sweep: 10 * time.Millisecond}, log)
				k.Close() // as serveDaemon's deferred Close does
				done <- err
			}()

			// Running: every pool answers with its dump, and a sweep is
			// under way.
			for _, sp := range pools {
				addr := sp.ln.Addr().String()
				rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
				b, err := statsock.Read(rctx, addr)
				rcancel()
				if err != nil || !strings.Contains(string(b), `"workers"`) {
					t.Fatalf("stats on %s while running: %v %.80q", addr, err, b)
				}
			}
			select {
			case <-k.started:
			case <-time.After(5 * time.Second):
				t.Fatal("no sweep started within 5 s at a 10 ms interval")
			}

			c.stop(cancel, pools)
			select {
			case err := <-done:
				t.Fatalf("returned (%v) while a sweep was in progress", err)
			case <-time.After(200 * time.Millisecond):
			}
			k.free()
			var err error
			select {
			case err = <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("did not return within 5 s of the sweep's end")
			}
			if c.wantErr == nil && err != nil || c.wantErr != nil && !errors.Is(err, c.wantErr) {
				t.Errorf("returned %v, want %v", err, c.wantErr)
			}

			k.mu.Lock()
			events := slices.Clone(k.events)
			k.mu.Unlock()
			if last := events[len(events)-1]; last != "close" || slices.Contains(events, "close during a sweep") {
				t.Errorf("events %v: want Close last, after every sweep returned", events)
			}
			if n := len(events); n < 3 || events[n-2] != "swept" {
				t.Errorf("events %v: want a sweep's end right before Close", events)
			}
			// Every server has stopped: its socket is closed.
			for _, sp := range pools {
				if c, err := net.DialTimeout("tcp", sp.ln.Addr().String(), time.Second); err == nil {
					c.Close()
					t.Errorf("stats socket %s still accepts after the run returned", sp.ln.Addr())
				}
			}
		})
	}
}

// TestFullTablesSaidOnce: when a kernel table (connections, workers,
// transfers in flight, the capture ring) was full since the last sweep, the daemon says so in one line naming the
// flag to raise; while nothing more is dropped it says nothing.
func TestFullTablesSaidOnce(t *testing.T) {
	for _, l := range limits {
		log := testutil.NewLog(t)
		info := func(n uint64) observer.ObserverInfo {
			return observer.ObserverInfo{Dropped: map[string]uint64{l.dropped: n}}
		}
		n := warnUntracked(info(0), nil, log.Logger)
		n = warnUntracked(info(5), n, log.Logger)
		n = warnUntracked(info(5), n, log.Logger)
		if n[l.dropped] != 5 {
			t.Errorf("%s: count now %d, want 5", l.dropped, n[l.dropped])
		}
		got := log.String()
		if strings.Count(got, "level=WARN") != 1 || !strings.Contains(got, "raise "+l.flag) || !strings.Contains(got, "untracked=5") {
			t.Errorf("want one warning naming %s and the 5 untracked, got:\n%s", l.flag, got)
		}
	}
}
