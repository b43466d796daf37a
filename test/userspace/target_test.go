package userspace

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/test/harness"
)

// The tests in this file find pools the ways an operator names them:
// --pidfile (followed across a restart), --name, nothing at all (the daemon
// says what it could watch), and --config with several pools.

// TestPidfileFollowsRestartedMaster: the daemon watches a gunicorn pool by
// its pidfile. The pool is stopped (the dump is then an empty pool saying
// why, and the daemon keeps serving) and started again with a new master:
// observation resumes by itself, in the same slots, with every request
// counted before and after.
func TestPidfileFollowsRestartedMaster(t *testing.T) {
	testutil.RequireEBPF(t)
	testutil.RequireCommand(t, "gunicorn", "gunicorn")
	pidfile := filepath.Join(t.TempDir(), "gunicorn.pid")
	g1 := harness.StartGunicorn(t, 3, "-k", "sync", "--pid", pidfile)
	addr := harness.FreeAddr(t)
	d := harness.StartDaemon(t, "--pidfile", pidfile, "--stats", addr)

	l1 := harness.DriveHTTP(t, g1.Addr, 600, 1, 8, 0)
	st1 := harness.WaitRequests(t, addr, 20*time.Second, "the first pool's requests", l1.OK)
	if !slices.Equal(harness.SocketNames(st1.Sockets), []string{g1.Addr}) || st1.CWD == "" || len(st1.Observer.Unknown) != 0 {
		t.Errorf("a pool found at start-up: sockets %v, cwd %q, unknown %v; want its socket and cwd, read before the daemon dropped its privileges", st1.Sockets, st1.CWD, st1.Observer.Unknown)
	}

	harness.StopGunicorn(t, g1)
	st := harness.WaitStats(t, addr, 20*time.Second, "an empty pool after the master exited", func(st *observer.Stats) error {
		if len(st.Workers) != 0 || st.PID != 0 || st.Observer.Waiting == "" {
			return fmt.Errorf("pid %d, %d workers, waiting %q", st.PID, len(st.Workers), st.Observer.Waiting)
		}
		return nil
	})
	t.Logf("while gunicorn is down the dump says: target %q, waiting %q", st.Observer.Target, st.Observer.Waiting)
	for _, want := range []string{fmt.Sprintf("master pid %d exited", g1.PID), "resumes when the master is back"} {
		if !strings.Contains(st.Observer.Waiting, want) {
			t.Errorf("observer.waiting %q lacks %q", st.Observer.Waiting, want)
		}
	}
	if n := strings.Count(d.Log.String(), "no master: the pool is empty"); n != 1 {
		t.Errorf("the daemon logged the missing master %d times, want once:\n%s", n, d.Log.String())
	}

	g2 := harness.StartGunicorn(t, 3, "-k", "sync", "--pid", pidfile)
	st = harness.WaitStats(t, addr, 20*time.Second, "the restarted master to be watched", func(st *observer.Stats) error {
		if st.PID != g2.PID || len(st.Workers) != 3 || st.Observer.Waiting != "" {
			return fmt.Errorf("master %d with %d workers (waiting %q), want %d with 3", st.PID, len(st.Workers), st.Observer.Waiting, g2.PID)
		}
		return nil
	})
	// Found once the daemon holds no privilege: its fd table and working
	// directory cannot be read, and the dump says so.
	t.Logf("before any connection to the restarted pool: sockets %v, unknown %v", st.Sockets, st.Observer.Unknown)
	if len(st.Sockets) != 0 || st.Observer.Unknown["sockets"] == "" || st.Observer.Unknown["cwd"] == "" || st.CWD != "" {
		t.Errorf("the restarted pool before any connection: sockets %v, cwd %q, unknown %v; want no sockets, no cwd, and why", st.Sockets, st.CWD, st.Observer.Unknown)
	}
	l2 := harness.DriveHTTP(t, g2.Addr, 600, 1, 8, 0)
	st = harness.WaitRequests(t, addr, 20*time.Second, "every request before and after the restart", l1.OK+l2.OK)
	// Its workers' first connection answered the kernel's question.
	st = harness.WaitStats(t, addr, 20*time.Second, "the restarted pool's sockets", func(st *observer.Stats) error {
		if !slices.Equal(harness.SocketNames(st.Sockets), []string{g2.Addr}) || st.Observer.Unknown["sockets"] != "" {
			return fmt.Errorf("sockets %v (unknown %v), want the restarted pool's [%s]", harness.SocketNames(st.Sockets), st.Observer.Unknown, g2.Addr)
		}
		return nil
	})
	t.Logf("after its first connections: sockets %v, unknown %v", harness.SocketNames(st.Sockets), st.Observer.Unknown)
	_, tx, _ := harness.SumRequests(st)
	if tx != uint64(l1.Received+l2.Received) {
		t.Errorf("tx %d, clients received %d", tx, l1.Received+l2.Received)
	}
	kids, err := harness.ChildPIDs(g2.PID)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range st.Workers {
		t.Logf("slot %d pid %d: requests %d delta %d respawn_count %d (clients: %d from this pid)", w.ID, w.PID, w.Requests, w.DeltaRequests, w.RespawnCount, l2.ByPID[w.PID])
		if w.ID != i+1 || !slices.Contains(kids, w.PID) || w.RespawnCount != 2 || w.DeltaRequests != uint64(l2.ByPID[w.PID]) || w.Requests < w.DeltaRequests {
			t.Errorf("slot %d: pid %d respawn_count %d delta %d requests %d; want a new worker %v, respawn_count 2, delta %d",
				w.ID, w.PID, w.RespawnCount, w.DeltaRequests, w.Requests, kids, l2.ByPID[w.PID])
		}
	}
	t.Logf("requests: %d before the restart + %d after = %d counted", l1.OK, l2.OK, l1.OK+l2.OK)
}

// TestNameFindsMaster: --name finds the master among its same-named
// workers, here a gunicorn run by python3 under a name of its own.
func TestNameFindsMaster(t *testing.T) {
	testutil.RequireEBPF(t)
	orig := testutil.RequireCommand(t, "gunicorn", "gunicorn")
	name := fmt.Sprintf("gunicorn-wstest-%d", os.Getpid())
	bin := filepath.Join(t.TempDir(), name)
	harness.CopyFile(t, orig, bin, 0o755)
	g := harness.StartGunicornBin(t, bin, 2, "-k", "sync")
	addr := harness.FreeAddr(t)
	harness.StartDaemon(t, "--name", name, "--stats", addr)
	l := harness.DriveHTTP(t, g.Addr, 200, 1, 4, 0)
	st := harness.WaitRequests(t, addr, 20*time.Second, "the named pool's requests", l.OK)
	if st.PID != g.PID || len(st.Workers) != 2 || st.Observer.Target != "name "+name {
		t.Errorf("--name %s: master %d with %d workers, target %q; want %d with 2", name, st.PID, len(st.Workers), st.Observer.Target, g.PID)
	}
}

// TestNoTargetListsCandidates: serve with no target names the pre-fork
// masters running, with the flag that picks each, in one line.
func TestNoTargetListsCandidates(t *testing.T) {
	testutil.RequireRoot(t, "run gunicorn and the daemon, as the black-box tests do")
	testutil.RequireCommand(t, "gunicorn", "gunicorn")
	g := harness.StartGunicorn(t, 2, "-k", "sync")
	out, err := harness.RunCommand("serve", "--stats", harness.FreeAddr(t))
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("serve with no target: %v, want a failed exit\n%s", err, out)
	}
	want := fmt.Sprintf("gunicorn (--pid %d, 2 workers)", g.PID)
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
	a := harness.StartGunicorn(t, 2, "-k", "sync", "--pid", pidfile)
	name := fmt.Sprintf("gunicorn-wsconf-%d", os.Getpid())
	bin := filepath.Join(dir, name)
	harness.CopyFile(t, orig, bin, 0o755)
	b := harness.StartGunicornBin(t, bin, 3, "-k", "gthread", "--threads", "2", "--keep-alive", "5")

	addrA := harness.FreeAddr(t)
	addrB := filepath.Join(dir, "b.sock")
	addrC := harness.FreeAddr(t)
	conf := filepath.Join(dir, "workerstats.toml")
	harness.WriteFile(t, conf, fmt.Sprintf(`# three pools
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
	harness.StartDaemonAt(t, addrA, "--config", conf)

	la := harness.DriveHTTP(t, a.Addr, 300, 1, 4, 0)
	lb := harness.DriveHTTP(t, b.Addr, 100, 5, 4, 0)
	for _, c := range []struct {
		addr   string
		master int
		load   *harness.HTTPLoad
		slots  int
	}{{addrA, a.PID, la, 2}, {addrB, b.PID, lb, 3}} {
		st := harness.WaitRequests(t, c.addr, 20*time.Second, "pool "+c.addr, c.load.OK)
		if st.PID != c.master || len(st.Workers) != c.slots {
			t.Errorf("%s: master %d with %d workers, want %d with %d", c.addr, st.PID, len(st.Workers), c.master, c.slots)
		}
		for _, w := range st.Workers {
			if w.DeltaRequests != uint64(c.load.ByPID[w.PID]) {
				t.Errorf("%s: pid %d counted %d, clients got %d responses from it", c.addr, w.PID, w.DeltaRequests, c.load.ByPID[w.PID])
			}
		}
		t.Logf("%s (master %d): %d requests, as the clients completed", c.addr, st.PID, c.load.OK)
	}
	if fi, err := os.Stat(addrB); err != nil || fi.Mode().Perm() != 0o660 {
		t.Errorf("pool 2's Unix stats socket: %v, mode %v; want 0660 as configured", err, fi.Mode().Perm())
	}
	st, err := harness.ReadStats(addrC)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Workers) != 0 || !strings.Contains(st.Observer.Waiting, "does not exist") {
		t.Errorf("pool with no master: %d workers, waiting %q; want an empty pool saying why", len(st.Workers), st.Observer.Waiting)
	}
}
