package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
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

// asNobody returns the command line that runs the workerstats binary as
// user nobody: a copy of it that nobody can run, under setpriv. Not root,
// the binary is run as it is (already unprivileged).
func asNobody(t *testing.T) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		return []string{binPath}
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	setpriv := testutil.RequireCommand(t, "setpriv", "util-linux")
	dir, err := os.MkdirTemp("", "workerstats-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(binPath)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "workerstats"), b, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	return []string{setpriv, "--reuid=" + u.Uid, "--regid=" + u.Gid, "--clear-groups", filepath.Join(dir, "workerstats")}
}

// TestDemoMistakesAreOneLine: without root the demo stops at once, saying
// in one line that counting needs root and how to run it; --stats with
// port 0 is refused in one line too. Neither starts a pool.
func TestDemoMistakesAreOneLine(t *testing.T) {
	nobody := asNobody(t)
	for _, c := range []struct {
		name string
		cmd  []string
		want string
	}{
		{"without root", append(nobody, "demo", "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t))),
			"workerstats: demo: counting needs root (eBPF): run sudo workerstats demo, or sudo make demo"},
		{"without root, --mode ebpf", append(nobody, "demo", "--mode", "ebpf"), "counting needs root (eBPF)"},
		{"port 0", []string{binPath, "demo", "--exit", "--mode", "procfs", "--stats", "127.0.0.1:0"},
			"demo --stats 127.0.0.1:0: port 0 cannot be read back; give a free port, such as 127.0.0.1:1717"},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			out, err := exec.Command(c.cmd[0], c.cmd[1:]...).CombinedOutput()
			if err == nil || strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), c.want) {
				t.Errorf("%v: exit %v, output %q; want one line containing %q", c.cmd, err, out, c.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v to refuse: it started something first", d)
			}
		})
	}
}

// TestDemoProcfsModeWithoutRoot: asked for --mode procfs, the demo runs
// without root as it does with, its pool shown uncounted.
func TestDemoProcfsModeWithoutRoot(t *testing.T) {
	nobody := asNobody(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(nobody[0], append(nobody[1:], "demo", "--exit", "--mode", "procfs", "--workers", "2", "--requests", "10",
		"--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)))...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("demo --mode procfs as nobody: %v\n%s", err, stderr.String())
	}
	var st observer.Stats
	if err := json.Unmarshal(stdout.Bytes(), &st); err != nil || st.Observer.Mode != "procfs" || len(st.Workers) != 2 {
		t.Errorf("demo --mode procfs as nobody: %v, mode %q, %d workers; want procfs, 2\n%s", err, st.Observer.Mode, len(st.Workers), truncate(stdout.Bytes()))
	}
}

// TestDemoEndsInTopInATerminal: `workerstats demo` in a terminal shows top
// on its own pool, a row per worker, with figures the trickle of traffic
// moves; q ends the demo, its pool stopped.
func TestDemoEndsInTopInATerminal(t *testing.T) {
	testutil.RequireEBPF(t)
	stats := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	term := startTerminal(t, 160, 40, binPath+" demo --workers 2 --requests 100 --stats "+stats)
	master := 0
	term.waitScreen(60*time.Second, "top on the demo's pool, requests per second above 0", func(screen string) error {
		if n, err := fmt.Sscanf(screen[max(strings.Index(screen, "· master "), 0):], "· master %d", &master); n != 1 {
			return fmt.Errorf("no top title naming the master: %v", err)
		}
		rows := topRows(screen)
		var sum float64
		for _, r := range rows {
			v, _ := strconv.ParseFloat(r.fields[3], 64)
			sum += v
		}
		if !strings.Contains(screen, "workerstats top · "+stats) || len(rows) != 2 || sum <= 0 {
			return fmt.Errorf("%d rows, %v req/s in all", len(rows), sum)
		}
		return nil
	})
	term.keys("q")
	if status := term.waitExit(30 * time.Second); status != 0 {
		t.Errorf("the demo exited %d on q, want 0", status)
	}
	if screen := term.screenNow(); !strings.Contains(screen, "pool stopped.") {
		t.Errorf("after q the terminal shows no word of the pool stopping:\n%s", screen)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", master)); err == nil {
		t.Errorf("the demo pool's master %d still runs after q", master)
	}
}
