package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// The tests in this file find pools the ways an operator names them:
// --pidfile (followed across a restart), --name, nothing at all (the daemon
// says what it could watch), and --config with several pools.

// stopGunicorn ends a gunicorn master with SIGTERM (its workers finish
// first) and waits until it is gone.
func stopGunicorn(t testing.TB, p *gunicornPool) {
	t.Helper()
	if err := syscall.Kill(p.pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "gunicorn to exit", func() error {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid)); err == nil && !strings.Contains(string(b), ") Z ") {
			return fmt.Errorf("master %d still running", p.pid)
		}
		return nil
	})
}

// TestPidfileFollowsRestartedMaster: the daemon watches a gunicorn pool by
// its pidfile. The pool is stopped (the dump is then an empty pool saying
// why, and the daemon keeps serving) and started again with a new master:
// observation resumes by itself, in the same slots, with every request
// counted before and after.
func TestPidfileFollowsRestartedMaster(t *testing.T) {
	testutil.RequireEBPF(t)
	testutil.RequireCommand(t, "gunicorn", "gunicorn")
	pidfile := filepath.Join(t.TempDir(), "gunicorn.pid")
	g1 := startGunicorn(t, 3, "-k", "sync", "--pid", pidfile)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	d := startDaemon(t, "--pidfile", pidfile, "--stats", addr)

	l1 := driveHTTP(t, g1.addr, 600, 1, 8, 0)
	st1 := waitRequests(t, addr, 20*time.Second, "the first pool's requests", l1.ok)
	if !slices.Equal(socketNames(st1.Sockets), []string{g1.addr}) || st1.CWD == "" || len(st1.Observer.Unknown) != 0 {
		t.Errorf("a pool found at start-up: sockets %v, cwd %q, unknown %v; want its socket and cwd, read before the daemon dropped its privileges", st1.Sockets, st1.CWD, st1.Observer.Unknown)
	}

	stopGunicorn(t, g1)
	st := waitStats(t, addr, 20*time.Second, "an empty pool after the master exited", func(st *observer.Stats) error {
		if len(st.Workers) != 0 || st.PID != 0 || st.Observer.Waiting == "" {
			return fmt.Errorf("pid %d, %d workers, waiting %q", st.PID, len(st.Workers), st.Observer.Waiting)
		}
		return nil
	})
	t.Logf("while gunicorn is down the dump says: target %q, waiting %q", st.Observer.Target, st.Observer.Waiting)
	for _, want := range []string{fmt.Sprintf("master pid %d exited", g1.pid), "resumes when the master is back"} {
		if !strings.Contains(st.Observer.Waiting, want) {
			t.Errorf("observer.waiting %q lacks %q", st.Observer.Waiting, want)
		}
	}
	if n := strings.Count(d.log.String(), "no master: the pool is empty"); n != 1 {
		t.Errorf("the daemon logged the missing master %d times, want once:\n%s", n, d.log.String())
	}

	g2 := startGunicorn(t, 3, "-k", "sync", "--pid", pidfile)
	st = waitStats(t, addr, 20*time.Second, "the restarted master to be watched", func(st *observer.Stats) error {
		if st.PID != g2.pid || len(st.Workers) != 3 || st.Observer.Waiting != "" {
			return fmt.Errorf("master %d with %d workers (waiting %q), want %d with 3", st.PID, len(st.Workers), st.Observer.Waiting, g2.pid)
		}
		return nil
	})
	// Found once the daemon holds no privilege: its fd table and working
	// directory cannot be read, and the dump says so.
	t.Logf("before any connection to the restarted pool: sockets %v, unknown %v", st.Sockets, st.Observer.Unknown)
	if len(st.Sockets) != 0 || st.Observer.Unknown["sockets"] == "" || st.Observer.Unknown["cwd"] == "" || st.CWD != "" {
		t.Errorf("the restarted pool before any connection: sockets %v, cwd %q, unknown %v; want no sockets, no cwd, and why", st.Sockets, st.CWD, st.Observer.Unknown)
	}
	l2 := driveHTTP(t, g2.addr, 600, 1, 8, 0)
	st = waitRequests(t, addr, 20*time.Second, "every request before and after the restart", l1.ok+l2.ok)
	// Its workers' first connection answered the kernel's question.
	st = waitStats(t, addr, 20*time.Second, "the restarted pool's sockets", func(st *observer.Stats) error {
		if !slices.Equal(socketNames(st.Sockets), []string{g2.addr}) || st.Observer.Unknown["sockets"] != "" {
			return fmt.Errorf("sockets %v (unknown %v), want the restarted pool's [%s]", socketNames(st.Sockets), st.Observer.Unknown, g2.addr)
		}
		return nil
	})
	t.Logf("after its first connections: sockets %v, unknown %v", socketNames(st.Sockets), st.Observer.Unknown)
	_, tx, _ := sumRequests(st)
	if tx != uint64(l1.received+l2.received) {
		t.Errorf("tx %d, clients received %d", tx, l1.received+l2.received)
	}
	kids, err := childPIDs(g2.pid)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range st.Workers {
		t.Logf("slot %d pid %d: requests %d delta %d respawn_count %d (clients: %d from this pid)", w.ID, w.PID, w.Requests, w.DeltaRequests, w.RespawnCount, l2.byPID[w.PID])
		if w.ID != i+1 || !slices.Contains(kids, w.PID) || w.RespawnCount != 2 || w.DeltaRequests != uint64(l2.byPID[w.PID]) || w.Requests < w.DeltaRequests {
			t.Errorf("slot %d: pid %d respawn_count %d delta %d requests %d; want a new worker %v, respawn_count 2, delta %d",
				w.ID, w.PID, w.RespawnCount, w.DeltaRequests, w.Requests, kids, l2.byPID[w.PID])
		}
	}
	t.Logf("requests: %d before the restart + %d after = %d counted", l1.ok, l2.ok, l1.ok+l2.ok)
}

// TestNameFindsMaster: --name finds the master among its same-named
// workers, here a gunicorn run by python3 under a name of its own.
func TestNameFindsMaster(t *testing.T) {
	testutil.RequireEBPF(t)
	orig := testutil.RequireCommand(t, "gunicorn", "gunicorn")
	name := fmt.Sprintf("gunicorn-wstest-%d", os.Getpid())
	bin := filepath.Join(t.TempDir(), name)
	copyFile(t, orig, bin, 0o755)
	g := startGunicornBin(t, bin, 2, "-k", "sync")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startDaemon(t, "--name", name, "--stats", addr)
	l := driveHTTP(t, g.addr, 200, 1, 4, 0)
	st := waitRequests(t, addr, 20*time.Second, "the named pool's requests", l.ok)
	if st.PID != g.pid || len(st.Workers) != 2 || st.Observer.Target != "name "+name {
		t.Errorf("--name %s: master %d with %d workers, target %q; want %d with 2", name, st.PID, len(st.Workers), st.Observer.Target, g.pid)
	}
}

// socketNames lists sockets' names.
func socketNames(socks []observer.Socket) []string {
	names := []string{}
	for _, s := range socks {
		names = append(names, s.Name)
	}
	return names
}

func copyFile(t testing.TB, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNoTargetListsCandidates: serve with no target names the pre-fork
// masters running, with the flag that picks each, in one line.
func TestNoTargetListsCandidates(t *testing.T) {
	testutil.RequireCommand(t, "gunicorn", "gunicorn")
	g := startGunicorn(t, 2, "-k", "sync")
	out, err := runCommand("serve", "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("serve with no target: %v, want a failed exit\n%s", err, out)
	}
	want := fmt.Sprintf("gunicorn (--pid %d, 2 workers)", g.pid)
	if strings.Count(out, "\n") != 0 || !strings.HasPrefix(out, "workerstats: no target: give the pool's master with --pid PID, --pidfile FILE or --name NAME") || !strings.Contains(out, want) {
		t.Errorf("serve with no target said:\n%s\nwant one line offering %q", out, want)
	}
}

// TestConfigServesSeveralPools: one daemon, three pools from --config: two
// gunicorn pools found by pidfile and by name, each on its own stats socket
// (TCP and Unix), counting only its own requests; and a pool whose master
// is not running, which is an empty pool saying why and stops nothing.
func TestConfigServesSeveralPools(t *testing.T) {
	testutil.RequireEBPF(t)
	orig := testutil.RequireCommand(t, "gunicorn", "gunicorn")
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "a.pid")
	a := startGunicorn(t, 2, "-k", "sync", "--pid", pidfile)
	name := fmt.Sprintf("gunicorn-wsconf-%d", os.Getpid())
	bin := filepath.Join(dir, name)
	copyFile(t, orig, bin, 0o755)
	b := startGunicornBin(t, bin, 3, "-k", "gthread", "--threads", "2", "--keep-alive", "5")

	addrA := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	addrB := filepath.Join(dir, "b.sock")
	addrC := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	conf := filepath.Join(dir, "workerstats.toml")
	writeTestFile(t, conf, fmt.Sprintf(`# three pools
hooks = "auto"
stats-max-age = "0s"

[[pool]]
pidfile = %q
stats = %q

[[pool]]
name = %q
stats = %q
stats-chmod = "660"

[[pool]]
pidfile = %q
stats = %q
`, pidfile, addrA, name, addrB, filepath.Join(dir, "nothing.pid"), addrC))
	startDaemonAt(t, addrA, "--config", conf)

	la := driveHTTP(t, a.addr, 300, 1, 4, 0)
	lb := driveHTTP(t, b.addr, 100, 5, 4, 0)
	for _, c := range []struct {
		addr   string
		master int
		load   *httpLoad
		slots  int
	}{{addrA, a.pid, la, 2}, {addrB, b.pid, lb, 3}} {
		st := waitRequests(t, c.addr, 20*time.Second, "pool "+c.addr, c.load.ok)
		if st.PID != c.master || len(st.Workers) != c.slots {
			t.Errorf("%s: master %d with %d workers, want %d with %d", c.addr, st.PID, len(st.Workers), c.master, c.slots)
		}
		for _, w := range st.Workers {
			if w.DeltaRequests != uint64(c.load.byPID[w.PID]) {
				t.Errorf("%s: pid %d counted %d, clients got %d responses from it", c.addr, w.PID, w.DeltaRequests, c.load.byPID[w.PID])
			}
		}
		t.Logf("%s (master %d): %d requests, as the clients completed", c.addr, st.PID, c.load.ok)
	}
	if fi, err := os.Stat(addrB); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("pool 2's Unix stats socket: %v, mode %v; want 0660 as configured", err, fi.Mode().Perm())
	}
	st, err := readStats(addrC)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Workers) != 0 || !strings.Contains(st.Observer.Waiting, "does not exist") {
		t.Errorf("pool with no master: %d workers, waiting %q; want an empty pool saying why", len(st.Workers), st.Observer.Waiting)
	}
}

func writeTestFile(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConfigMistakesAreOneClearLine: a config file's mistakes end the
// daemon in one line naming the file and what to fix.
func TestConfigMistakesAreOneClearLine(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, conf string
		args       []string
		want       string
	}{
		{"no pools", "mode = \"auto\"\n", nil, "has no [[pool]]"},
		{"unknown key", "[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\nstat-http = true\n", nil, "unknown key pool.stat-http"},
		{"syntax", "[[pool]\npid = 1\n", nil, "end of table array name"},
		{"two targets", "[[pool]]\npid = 1\nname = \"uwsgi\"\nstats = \"127.0.0.1:1\"\n", nil, "[[pool]] 1: give exactly one of pid, pidfile or name"},
		{"no stats", "[[pool]]\npid = 1\n", nil, "[[pool]] 1: stats is required"},
		{"same stats", "[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n[[pool]]\nname = \"x\"\nstats = \"127.0.0.1:1\"\n", nil, "[[pool]] 2: stats 127.0.0.1:1 is already pool 1's"},
		{"bad chmod", "[[pool]]\npid = 1\nstats = \"/tmp/x.sock\"\nstats-chmod = \"rw\"\n", nil, `stats-chmod "rw" is not an octal file mode`},
		{"bad connection limit", "max-connections = -1\n[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n", nil, "--max-connections -1: give 1 to"},
		{"bad capture ring", "capture-ring = 1000\n[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n", nil, "--capture-ring 1000: give a power of two"},
		{"bad duration", "stats-timeout = \"5\"\n[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n", nil, `"5" is not a duration`},
		{"flag and config", "[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n", []string{"--pid", "1"}, "--pid and --config exclude each other"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conf := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".toml")
			writeTestFile(t, conf, c.conf)
			out, err := runCommand(append([]string{"serve", "--config", conf}, c.args...)...)
			if err == nil || strings.Contains(out, "\n") || !strings.HasPrefix(out, "workerstats: ") || !strings.Contains(out, c.want) {
				t.Errorf("err %v, output:\n%s\nwant one line with %q", err, out, c.want)
			}
		})
	}
	out, err := runCommand("serve", "--config", filepath.Join(dir, "missing.toml"))
	if err == nil || !strings.Contains(out, "missing.toml") || strings.Contains(out, "\n") {
		t.Errorf("missing config: %v %s", err, out)
	}
	out, err = runCommand("serve", "--pid", "1", "--name", "uwsgi")
	if err == nil || !strings.Contains(out, "give exactly one of pid, pidfile or name") {
		t.Errorf("--pid with --name: %v %s", err, out)
	}
}
