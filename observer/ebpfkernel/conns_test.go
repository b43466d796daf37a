package ebpfkernel

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer"
)

// holdConns has n connections to pool held open by this process, one
// request of size bytes answered on each (see forkpool.HoldConns), until
// t ends or forkpool.CloseAll.
func holdConns(t testing.TB, pool *forkpool.Pool, n, size int, ts *forkpool.Tallies) []forkpool.HeldConn {
	t.Helper()
	conns, err := pool.HoldConns(n, size, ts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { forkpool.CloseAll(conns) })
	return conns
}

// sums adds up the dump's workers.
func sums(st *observer.Stats) (accepted, closed, requests, tx, rx uint64) {
	for _, w := range st.Workers {
		accepted += w.Accepted
		closed += w.Closed
		requests += w.Requests
		tx += w.TX
		rx += w.RX
	}
	return
}

// waitFor polls the pool's dump until ok holds, for up to 10 s.
func waitFor(t testing.TB, p *observer.Pool, what string, ok func(*observer.Stats) error) *observer.Stats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := p.Snapshot(context.Background())
		if err == nil {
			err = ok(st)
		}
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestConnectionTablesFull: with room for 48 connections, 64 held open at
// once leave 16 untracked, said in the dump; the 48 tracked are counted
// exactly, a request and its bytes each; once they close, new connections
// are tracked again and counted exactly.
func TestConnectionTablesFull(t *testing.T) {
	testutil.RequireEBPF(t)
	const room, held, size = 48, 64, 700
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) {
			pool := forkpool.Start(t, 2, "")
			k, err := Load(Options{Hooks: hooks, MaxConnections: room, Log: testutil.NewLog(t).Logger})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { k.Unwatch(pool.Master); k.Close() })
			p := watch(t, k, pool)

			var first forkpool.Tallies
			conns := holdConns(t, pool, held, size, &first)
			reqLen := uint64(len(fmt.Sprintf("%d 0 0\n", size)))
			respLen := func(pid int) uint64 { return uint64(len(fmt.Sprintf("%d %d\n", pid, size))) + size }
			waitFor(t, p, "the full tables' counts", func(st *observer.Stats) error {
				accepted, _, requests, _, rx := sums(st)
				untracked := st.Observer.Dropped["connections_untracked"]
				if accepted != room || untracked != held-room || requests != room || rx != room*reqLen {
					return fmt.Errorf("accepted %d, untracked %d, requests %d, rx %d; want %d, %d, %d, %d",
						accepted, untracked, requests, rx, room, held-room, room, room*reqLen)
				}
				for _, w := range st.Workers {
					if w.Requests != w.Accepted || w.TX != w.Accepted*respLen(w.PID) {
						return fmt.Errorf("pid %d: %d requests and %d bytes sent on %d tracked connections", w.PID, w.Requests, w.TX, w.Accepted)
					}
				}
				return nil
			})

			forkpool.CloseAll(conns)
			before := waitFor(t, p, "the tracked connections' closes", func(st *observer.Stats) error {
				if _, closed, _, _, _ := sums(st); closed != room {
					return fmt.Errorf("%d closed, want %d", closed, room)
				}
				return nil
			})
			var next forkpool.Tallies
			holdConns(t, pool, room, size, &next)
			waitFor(t, p, "the connections after the full ones", func(st *observer.Stats) error {
				return agreeSince(before, st, &next)
			})
		})
	}
}

// agreeSince is agree for what st counts since before.
func agreeSince(before, st *observer.Stats, ts *forkpool.Tallies) error {
	was := map[int]observer.Worker{}
	for _, w := range before.Workers {
		was[w.PID] = w
	}
	now := map[int]observer.Worker{}
	for _, w := range st.Workers {
		now[w.PID] = w
	}
	for pid, want := range ts.ByPID() {
		a, b := was[pid], now[pid]
		if got := (forkpool.Tally{Requests: b.Requests - a.Requests, TX: b.TX - a.TX, RX: b.RX - a.RX}); got != want {
			return fmt.Errorf("pid %d: %+v since, clients %+v", pid, got, want)
		}
	}
	if n := st.Observer.Dropped["connections_untracked"]; n != before.Observer.Dropped["connections_untracked"] {
		return fmt.Errorf("%d more connections untracked", n-before.Observer.Dropped["connections_untracked"])
	}
	return nil
}

// TestTCPPoolNeedsNoSyscallTracepoint: with the sock hooks, a pool that
// listens on TCP only is counted without accept's and close's syscall
// tracepoints, whose mere presence slows every syscall of the host; a
// pool on a Unix socket, or one whose listeners are unknown, gets them.
func TestTCPPoolNeedsNoSyscallTracepoint(t *testing.T) {
	testutil.RequireEBPF(t)
	if !carries(t, HooksSock) {
		t.Skip("this kernel has no sock hooks")
	}
	pool := forkpool.Start(t, 2, "")
	k, p := loadFor(t, HooksSock, pool)
	hooked := func() bool { return connHooked(k) }
	if hooked() {
		t.Fatal("a TCP-only pool left accept and close hooked")
	}
	var ts forkpool.Tallies
	if err := pool.Session(&ts, 5, func(int) int { return 300 }, 0, 0); err != nil {
		t.Fatal(err)
	}
	settleOn(t, p, &ts)

	other := 4242 // a second pool, on a Unix socket
	if err := k.Listening(other, []observer.Socket{{Proto: "tcp", Name: ":8000"}, {Proto: "unix", Name: "/run/app.sock"}}); err != nil {
		t.Fatal(err)
	}
	if !hooked() {
		t.Error("a pool on a Unix socket did not get accept and close hooked")
	}
	if err := k.Unwatch(other); err != nil {
		t.Fatal(err)
	}
	if hooked() {
		t.Error("accept and close still hooked once the Unix pool went")
	}
	if err := pool.Session(&ts, 5, func(int) int { return 300 }, 0, 0); err != nil {
		t.Fatal(err)
	}
	settleOn(t, p, &ts)
}

// connHooked says accept's and close's syscall tracepoints are attached.
func connHooked(k *Kernel) bool {
	k.listenMu.Lock()
	defer k.listenMu.Unlock()
	for _, h := range k.connHooks() {
		if k.linkOf[h.pin] != nil {
			return true
		}
	}
	return false
}

// TestHooksFixedAtStartup: once the daemon fixes its hooks (just before
// it drops the privileges that attaching takes), a pool on a Unix socket
// found later is said, once, not to be counted, instead of failing; and
// a pool still waiting for its master at that moment keeps accept and
// close hooked, whatever it turns out to listen on.
func TestHooksFixedAtStartup(t *testing.T) {
	testutil.RequireEBPF(t)
	if !carries(t, HooksSock) {
		t.Skip("this kernel has no sock hooks")
	}
	tcp := []observer.Socket{{Proto: "tcp", Name: "127.0.0.1:8000"}}
	unixSock := []observer.Socket{{Proto: "unix", Name: "/run/app.sock"}}
	for _, waiting := range []bool{false, true} {
		log := testutil.NewLog(t)
		k, err := Load(Options{Hooks: HooksSock, Log: log.Logger})
		if err != nil {
			t.Fatal(err)
		}
		if err := k.Listening(1, tcp); err != nil {
			t.Fatal(err)
		}
		if err := k.FixHooks(!waiting); err != nil {
			t.Fatal(err)
		}
		if got := connHooked(k); got != waiting {
			t.Errorf("waiting pool %v: accept and close hooked %v", waiting, got)
		}
		// Listeners read as none in the middle of a reload leave the
		// pool's ports as they were, and say nothing.
		if err := k.Listening(1, nil); err != nil {
			t.Fatal(err)
		}
		var master uint32
		if err := k.objs.ListenPorts.Lookup(ownKey(k, 8000), &master); !waiting && (err != nil || master != 1) {
			t.Errorf("port 8000 after an empty read: master %d, %v", master, err)
		}
		for range 2 {
			if err := k.Listening(2, unixSock); err != nil {
				t.Errorf("a Unix pool after start-up: %v", err)
			}
		}
		warned := strings.Count(log.String(), "found after start-up listens on a Unix socket")
		if want := map[bool]int{false: 1, true: 0}[waiting]; warned != want {
			t.Errorf("waiting pool %v: warned %d times, want %d:\n%s", waiting, warned, want, log.String())
		}
		k.Close()
	}
}

// TestListenPortGoesToNewMaster: a pool whose master was replaced (found
// again through its pidfile, on the same port) has its port counted for
// the new master's workers, not the old one's.
func TestListenPortGoesToNewMaster(t *testing.T) {
	testutil.RequireEBPF(t)
	if !carries(t, HooksSock) {
		t.Skip("this kernel has no sock hooks")
	}
	k, err := Load(Options{Hooks: HooksSock, Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	tcp := []observer.Socket{{Proto: "tcp", Name: ":8000"}}
	for _, master := range []int{100, 200} {
		if err := k.Listening(master, tcp); err != nil {
			t.Fatal(err)
		}
		var got uint32
		if err := k.objs.ListenPorts.Lookup(ownKey(k, 8000), &got); err != nil || got != uint32(master) {
			t.Errorf("after master %d: port 8000 is master %d's (%v)", master, got, err)
		}
	}
}

// TestWorkersTableFull: with room for a master and 2 workers, a pool of 4
// has 2 workers left untracked, said in the dump; the tracked are counted
// exactly, the others not at all.
func TestWorkersTableFull(t *testing.T) {
	testutil.RequireEBPF(t)
	hooks := hookSets(t)[0]
	pool := forkpool.Start(t, 4, "")
	k, err := Load(Options{Hooks: hooks, MaxWorkers: 3, Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Unwatch(pool.Master); k.Close() })
	p := watch(t, k, pool)
	var ts forkpool.Tallies
	for range 40 {
		if err := pool.Session(&ts, 5, func(int) int { return 300 }, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, p, "2 workers counted exactly and 2 untracked", func(st *observer.Stats) error {
		if n := st.Observer.Dropped["workers_untracked"]; n != 2 {
			return fmt.Errorf("workers_untracked %d, want 2", n)
		}
		// Each worker the clients reached is counted exactly, or (one
		// of the 2 untracked) not at all; which ones the clients reach
		// is the kernel's choice.
		counted, unseen := 0, 0
		for pid, want := range ts.ByPID() {
			w := workerOf(st, pid)
			got := forkpool.Tally{Requests: w.Requests, TX: w.TX, RX: w.RX}
			switch got {
			case want:
				counted++
			case forkpool.Tally{}:
				unseen++
			default:
				return fmt.Errorf("pid %d: %+v, clients %+v", pid, got, want)
			}
		}
		if counted < 1 || counted > 2 || unseen < 1 || unseen > 2 {
			return fmt.Errorf("%d workers counted exactly and %d not at all; want 1 or 2 of each", counted, unseen)
		}
		return nil
	})
}

// workerOf is pid's worker in st; zero if it has none.
func workerOf(st *observer.Stats, pid int) observer.Worker {
	for _, w := range st.Workers {
		if w.PID == pid {
			return w
		}
	}
	return observer.Worker{}
}
