package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// runDemo runs `workerstats demo --exit` and returns the dump it printed on
// stdout and what it said on stderr.
func runDemo(t *testing.T, args ...string) (*observer.Stats, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(binPath, append([]string{"demo", "--exit", "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t))}, args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("demo: %v\n%s", err, stderr.String())
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("demo did not finish in 60 s:\n%s", stderr.String())
	}
	var st observer.Stats
	if err := json.Unmarshal(stdout.Bytes(), &st); err != nil {
		t.Fatalf("demo's stdout is not the stats JSON: %v\n%s", err, truncate(stdout.Bytes()))
	}
	// The pool is gone with the demo: no master or worker left behind.
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", st.PID)); err == nil {
		t.Errorf("the demo pool's master %d still runs after the demo exited", st.PID)
	}
	for _, w := range st.Workers {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", w.PID)); err == nil {
			t.Errorf("demo worker %d still runs after the demo exited", w.PID)
		}
	}
	return &st, stderr.String()
}

// TestDemoShowsCountedPool: the README's first command. The demo's own
// pre-fork pool is watched with eBPF and its stats count every request the
// demo sent, worker by worker.
func TestDemoShowsCountedPool(t *testing.T) {
	testutil.RequireEBPF(t)
	st, say := runDemo(t, "--workers", "3", "--requests", "300")
	req, tx, _ := sumRequests(st)
	if st.Observer.Mode != "ebpf" || len(st.Workers) != 3 || req != 300 {
		t.Errorf("demo dump: mode %q, %d workers, %d requests; want ebpf, 3, 300", st.Observer.Mode, len(st.Workers), req)
	}
	for _, w := range st.Workers {
		if w.PID == 0 || w.Accepting != 1 || w.RSS == 0 {
			t.Errorf("worker %d: pid %d accepting %d rss %d", w.ID, w.PID, w.Accepting, w.RSS)
		}
	}
	if tx == 0 || len(st.Sockets) != 1 {
		t.Errorf("tx %d, sockets %+v; want bytes sent and the pool's one listening socket", tx, st.Sockets)
	}
	for _, want := range []string{"workerstats demo: 300 requests sent to a pool of 3 workers", "workerstats read 127.0.0.1:"} {
		if !strings.Contains(say, want) {
			t.Errorf("demo's stderr lacks %q:\n%s", want, say)
		}
	}
	t.Logf("demo: %d requests over %d workers, %d bytes sent; sockets %+v", req, len(st.Workers), tx, st.Sockets)
}

// TestDemoProcfsMode: where eBPF cannot load the demo still shows the pool,
// in procfs mode.
func TestDemoProcfsMode(t *testing.T) {
	st, _ := runDemo(t, "--workers", "2", "--requests", "20", "--mode", "procfs")
	if st.Observer.Mode != "procfs" || len(st.Workers) != 2 {
		t.Errorf("procfs demo: mode %q, %d workers; want procfs, 2", st.Observer.Mode, len(st.Workers))
	}
}
