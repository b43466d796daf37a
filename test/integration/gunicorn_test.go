package integration

import (
	"fmt"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The tests in this file run Debian's real gunicorn. gunicorn keeps no
// per-worker counters and has no stats server, so the reference is the load
// generator's own (harness.HTTPLoad): it counts every response it read to
// the end, the bytes it sent and received, and, from an X-Worker header the
// app adds, which worker pid served each response. workerstats must agree
// with it, worker by worker.

// TestGunicornSyncWorkers: 4 sync workers (one request per connection, the
// server closes it), 3,000 requests, a fifth of them sent by sendfile, and
// idle connections.
func TestGunicornSyncWorkers(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartGunicorn(t, 4, "-k", "sync")
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			load := harness.DriveHTTP(t, p.Addr, 3000, 1, 16, 100)
			st := harness.GunicornSettle(t, d, load)
			harness.CheckGunicorn(t, st, load, hooks, nil)
			if len(st.Workers) != 4 {
				t.Errorf("%d workers in the dump, gunicorn has 4", len(st.Workers))
			}
		})
	}
}

// TestGunicornGthreadKeepAlive: 4 gthread workers of 4 threads with
// keep-alive; 100 connections of 30 requests each, plus idle connections.
func TestGunicornGthreadKeepAlive(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartGunicorn(t, 4, "-k", "gthread", "--threads", "4", "--keep-alive", "5")
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			load := harness.DriveHTTP(t, p.Addr, 100, 30, 50, 100)
			st := harness.GunicornSettle(t, d, load)
			harness.CheckGunicorn(t, st, load, hooks, nil)
			if len(st.Workers) != 4 {
				t.Errorf("%d workers in the dump, gunicorn has 4", len(st.Workers))
			}
		})
	}
}

// TestGunicornKilledWorkerConnectionsClosed: a gthread worker holding idle
// keep-alive connections is killed (as gunicorn's --timeout does with
// SIGKILL after SIGABRT, or the OOM killer). The kernel closes its
// connections, the clients read EOF; the slot keeps its requests and tx, and
// its connections should all show closed.
func TestGunicornKilledWorkerConnectionsClosed(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartGunicorn(t, 1, "-k", "gthread", "--threads", "4", "--keep-alive", "30")
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			kids, err := harness.ChildPIDs(p.PID)
			if err != nil {
				t.Fatal(err)
			}
			victim := kids[0]
			load := &harness.HTTPLoad{}
			var clients []*harness.HTTPClient
			for i := range 10 {
				h, err := harness.DialHTTP(p.Addr, load)
				if err != nil {
					t.Fatal(err)
				}
				if closing, err := h.Do(i + 1); err != nil || closing {
					t.Fatalf("request %d: closing %v, %v", i, closing, err)
				}
				clients = append(clients, h)
			}
			if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			for _, h := range clients {
				if err := h.Close(true); err != nil { // EOF from the kernel's close
					t.Fatal(err)
				}
			}
			st := harness.WaitStats(t, d.Addr, 30*time.Second, "gunicorn to respawn the killed worker and workerstats to fold it", func(st *observer.Stats) error {
				if len(st.Workers) != 1 || st.Workers[0].PID == victim || st.Workers[0].Accepting != 1 {
					return fmt.Errorf("slots %+v", st.Workers)
				}
				return nil
			})
			w := st.Workers[0]
			t.Logf("slot 1 after killing pid %d: pid %d respawn_count %d requests %d (clients %d) tx %d (clients received %d) accepted %d closed %d (clients saw all %d closed)",
				victim, w.PID, w.RespawnCount, w.Requests, load.OK, w.TX, load.Received, w.Accepted, w.Closed, load.Conns)
			if w.Requests != uint64(load.OK) || w.TX != uint64(load.Received) || w.Accepted != uint64(load.Conns) || w.RespawnCount != 2 {
				t.Errorf("slot 1: requests %d tx %d accepted %d respawn_count %d; clients completed %d received %d opened %d",
					w.Requests, w.TX, w.Accepted, w.RespawnCount, load.OK, load.Received, load.Conns)
			}
			if w.Closed != w.Accepted {
				t.Errorf("slot 1: %d accepted, %d closed: the killed worker's connections must count as closed", w.Accepted, w.Closed)
			}
		})
	}
}
