package userspace

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/test/harness"
)

// runDemo runs `workerstats demo --exit` and returns the dump it printed on
// stdout and what it said on stderr.
func runDemo(t *testing.T, args ...string) (*observer.Stats, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(harness.Binary(), append([]string{"demo", "--exit", "--stats", harness.FreeAddr(t)}, args...)...)
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
		t.Fatalf("demo's stdout is not the stats JSON: %v\n%s", err, harness.Truncate(stdout.Bytes()))
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
	req, tx, _ := harness.SumRequests(st)
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
	testutil.RequireRoot(t, "run the demo's pool, as the black-box tests do")
	st, _ := runDemo(t, "--workers", "2", "--requests", "20", "--mode", "procfs")
	if st.Observer.Mode != "procfs" || len(st.Workers) != 2 {
		t.Errorf("procfs demo: mode %q, %d workers; want procfs, 2", st.Observer.Mode, len(st.Workers))
	}
}

// TestDemoProcfsModeWithoutRoot: asked for --mode procfs, the demo runs
// without root as it does with, its pool shown uncounted.
func TestDemoProcfsModeWithoutRoot(t *testing.T) {
	testutil.RequireRoot(t, "run the demo as user nobody (setpriv)")
	nobody := harness.AsNobody(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(nobody[0], append(nobody[1:], "demo", "--exit", "--mode", "procfs", "--workers", "2", "--requests", "10",
		"--stats", harness.FreeAddr(t))...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo --mode procfs as nobody: %v\n%s", err, stderr.String())
	}
	var st observer.Stats
	if err := json.Unmarshal(stdout.Bytes(), &st); err != nil || st.Observer.Mode != "procfs" || len(st.Workers) != 2 {
		t.Errorf("demo --mode procfs as nobody: %v, mode %q, %d workers; want procfs, 2\n%s", err, st.Observer.Mode, len(st.Workers), harness.Truncate(stdout.Bytes()))
	}
}

// TestDemoEndsInTopInATerminal: `workerstats demo` in a terminal shows top
// on its own pool, a row per worker, with figures the trickle of traffic
// moves; q ends the demo, its pool stopped.
func TestDemoEndsInTopInATerminal(t *testing.T) {
	testutil.RequireEBPF(t)
	stats := harness.FreeAddr(t)
	term := harness.StartTerminal(t, 160, 40, harness.Binary()+" demo --workers 2 --requests 100 --stats "+stats)
	master := 0
	term.WaitScreen(60*time.Second, "top on the demo's pool, requests per second above 0", func(screen string) error {
		if n, err := fmt.Sscanf(screen[max(strings.Index(screen, "· master "), 0):], "· master %d", &master); n != 1 {
			return fmt.Errorf("no top title naming the master: %v", err)
		}
		rows := harness.TopRows(screen)
		var sum float64
		for _, r := range rows {
			v, _ := strconv.ParseFloat(r.Fields[3], 64)
			sum += v
		}
		if !strings.Contains(screen, "workerstats top · "+stats) || len(rows) != 2 || sum <= 0 {
			return fmt.Errorf("%d rows, %v req/s in all", len(rows), sum)
		}
		return nil
	})
	term.Keys("q")
	if status := term.WaitExit(30 * time.Second); status != 0 {
		t.Errorf("the demo exited %d on q, want 0", status)
	}
	if screen := term.ScreenNow(); !strings.Contains(screen, "pool stopped.") {
		t.Errorf("after q the terminal shows no word of the pool stopping:\n%s", screen)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", master)); err == nil {
		t.Errorf("the demo pool's master %d still runs after q", master)
	}
}
