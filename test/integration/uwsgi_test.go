package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The tests in this file run Debian's real uWSGI and compare, worker by
// worker, what workerstats counted from outside with uWSGI's own stats.

// comparePool is the whole comparison: start uWSGI, observe it from before
// its first request, drive load, and compare per worker.
func comparePool(t *testing.T, o harness.UWSGIOptions, requests, idle int) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartUWSGI(t, o)
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t),
				"--hooks", hooks, "--bpf-stats")
			res := harness.Drive(t, p, requests, 32, idle)
			ours, theirs := harness.Settle(t, p, d, uint64(res.OK))
			harness.LogComparison(t, ours, theirs)
			if ours.Observer.Hooks != hooks {
				t.Errorf("dump says hooks %q, asked for %q", ours.Observer.Hooks, hooks)
			}
			// Across workers, bytes equal what the clients moved: nothing
			// from idle or outbound connections leaked in.
			_, tx, rx := harness.SumRequests(ours)
			if tx != uint64(res.Received) || rx != uint64(res.Sent) {
				t.Errorf("workers' tx %d rx %d, clients received %d sent %d", tx, rx, res.Received, res.Sent)
			}
			harness.CheckDropped(t, ours, 0)
			// And worker by worker, what the clients got from each pid.
			for _, w := range ours.Workers {
				if c := res.Tally(w.PID); w.Requests != uint64(c.OK) || w.TX != uint64(c.Received) {
					t.Errorf("pid %d: requests %d tx %d, clients got %d responses, %d bytes from it", w.PID, w.Requests, w.TX, c.OK, c.Received)
				}
			}
			if o.Threads > 1 {
				checkThreads(t, o.Threads, res, theirs)
			}
			t.Logf("%d requests and %d idle connections, counts equal uWSGI's for all %d workers", res.OK, res.Idle, len(theirs.Workers))
		})
	}
}

// checkThreads fails t unless the pool really ran threads that overlapped:
// uWSGI shows threads cores per worker, and every worker had requests in
// progress in two threads at once.
func checkThreads(t *testing.T, threads int, res *harness.LoadResult, theirs *observer.Stats) {
	t.Helper()
	for _, u := range theirs.Workers {
		var served []uint64
		for _, c := range u.Cores {
			served = append(served, c.Requests)
		}
		most := res.Tally(u.PID).Inflight
		t.Logf("worker %d pid %d: requests by thread (uWSGI's cores) %v; at most %d in progress at once", u.ID, u.PID, served, most)
		if len(u.Cores) != threads {
			t.Errorf("uWSGI worker %d has %d cores, want %d threads", u.ID, len(u.Cores), threads)
		}
		if most < 2 {
			t.Errorf("worker pid %d never had two requests in progress at once: its threads did not overlap", u.PID)
		}
	}
}

// TestUWSGIThreadsMatchOwnStats: 4 workers of 4 threads each, one request
// in 8 slow enough (20 ms) that the threads of a worker serve requests at
// the same time, on connections each thread accepts itself.
func TestUWSGIThreadsMatchOwnStats(t *testing.T) {
	comparePool(t, harness.UWSGIOptions{Processes: 4, Threads: 4, SlowEvery: 8}, 8000, 200)
}

func TestUWSGIHTTPSocketMatchesOwnStats(t *testing.T) {
	comparePool(t, harness.UWSGIOptions{Processes: 4}, 20000, 500)
}

func TestUWSGIUnixSocketMatchesOwnStats(t *testing.T) {
	comparePool(t, harness.UWSGIOptions{Processes: 4, Unix: true}, 10000, 250)
}

// TestUWSGIAppExceptionsMatchOwnStats: an app that raises in one request
// in five, over uWSGI's http-socket and the uwsgi protocol on a Unix
// socket. uWSGI closes such a request's connection without a byte of
// response and counts it as a request and an exception; so does
// workerstats, worker by worker, and across workers they are exactly the
// requests the clients got no answer to.
func TestUWSGIAppExceptionsMatchOwnStats(t *testing.T) {
	eachSocketAndHooks(t, func(t *testing.T, unix bool, hooks string) {
		p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 4, Unix: unix, RaiseEvery: 5})
		d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
		res := harness.Drive(t, p, 5000, 16, 100)
		ours, theirs := harness.Settle(t, p, d, uint64(res.OK+res.Raised))
		harness.LogComparison(t, ours, theirs)
		var req, exc, appExc, rx uint64
		for _, w := range ours.Workers {
			req, exc, appExc, rx = req+w.Requests, exc+w.Exceptions, appExc+w.Apps[0].Exceptions, rx+w.RX
		}
		if exc != uint64(res.Raised) || appExc != exc || req != uint64(res.OK+res.Raised) || rx != uint64(res.Sent+res.RaisedSent) {
			t.Errorf("workers: requests %d exceptions %d (apps' %d) rx %d; clients: %d answered, %d without a response, %d bytes sent",
				req, exc, appExc, rx, res.OK, res.Raised, res.Sent+res.RaisedSent)
		}
		if res.Raised == 0 {
			t.Error("no request raised")
		}
		harness.CheckDropped(t, ours, 0)
		t.Logf("%d requests answered and %d that raised: requests and exceptions equal uWSGI's for all %d workers", res.OK, res.Raised, len(theirs.Workers))
	})
}

// eachSocketAndHooks runs test as a subtest for uWSGI's http-socket and
// its uwsgi protocol on a Unix socket, each on every hook set.
func eachSocketAndHooks(t *testing.T, test func(t *testing.T, unix bool, hooks string)) {
	testutil.RequireEBPF(t)
	for _, unix := range []bool{false, true} {
		for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
			name := "http-socket/" + hooks
			if unix {
				name = "unix/" + hooks
			}
			t.Run(name, func(t *testing.T) { test(t, unix, hooks) })
		}
	}
}

// TestUWSGIOutboundNotCounted: every request makes the worker open its own
// TCP connection and move 1,100 bytes on it; tx still equals uWSGI's.
func TestUWSGIOutboundNotCounted(t *testing.T) {
	testutil.RequireEBPF(t)
	peer := testutil.TCPServer(t, func(c net.Conn) {
		buf := make([]byte, 100)
		if _, err := io.ReadFull(c, buf); err == nil {
			c.Write(bytes.Repeat([]byte("r"), 1000))
		}
	})
	comparePool(t, harness.UWSGIOptions{Processes: 4, Env: []string{"OUTBOUND=" + peer}}, 5000, 100)
}

// TestUWSGIRespawnedWorkerCounted: a worker killed and respawned by the
// master after workerstats started is followed by the kernel; its slot keeps
// its counts and the new process's own requests count from its first.
func TestUWSGIRespawnedWorkerCounted(t *testing.T) {
	testutil.RequireEBPF(t)
	p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2})
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t))
	first := harness.Drive(t, p, 2000, 8, 0)
	_, before := harness.Settle(t, p, d, uint64(first.OK))

	victim := before.Workers[0]
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	harness.WaitStats(t, p.Stats, 30*time.Second, "uWSGI to respawn the killed worker", func(st *observer.Stats) error {
		w := st.Workers[0]
		if w.PID == victim.PID || w.PID == 0 || w.Accepting == 0 {
			return fmt.Errorf("worker 1 is pid %d accepting %d", w.PID, w.Accepting)
		}
		return nil
	})
	second := harness.Drive(t, p, 2000, 8, 0)
	ours, theirs := harness.Settle(t, p, d, uint64(first.OK+second.OK))
	harness.LogComparison(t, ours, theirs)
	w := ours.Workers[0]
	if w.PID == victim.PID || w.RespawnCount != 2 || w.DeltaRequests == 0 || w.Requests <= victim.Requests {
		t.Errorf("slot 1 after respawn: pid %d (killed %d) respawn_count %d delta_requests %d requests %d (before %d)",
			w.PID, victim.PID, w.RespawnCount, w.DeltaRequests, w.Requests, victim.Requests)
	}
}
