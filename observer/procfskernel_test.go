package observer

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil/forkpool"
)

// procfs mode follows a real pool with no eBPF and no root: workers and
// their memory, the pool's socket, busy while a worker holds an accepted
// connection, and a replaced worker taking its predecessor's slot.
func TestProcfsKernelFollowsPool(t *testing.T) {
	pool := forkpool.Start(t, 2, "")
	p := &Pool{Target: Target{PID: pool.Master}, Proc: Procfs{Root: "/proc"}, Kernel: &ProcfsKernel{Proc: Procfs{Root: "/proc"}, Reason: "test"}}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	snap := func() *Stats {
		t.Helper()
		st, err := p.Snapshot(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := snap()
	if st.Observer.Mode != "procfs" || st.Observer.Reason != "test" || len(st.Workers) != 2 {
		t.Fatalf("observer %+v, %d workers; want procfs mode with its reason and 2 workers", st.Observer, len(st.Workers))
	}
	for _, w := range st.Workers {
		if w.RSS == 0 || w.VSZ == 0 || w.Status != "idle" || w.Requests != 0 || w.RespawnCount != 1 {
			t.Errorf("worker %+v: want memory filled, idle, no counters, respawn_count 1", w)
		}
	}
	if len(st.Sockets) != 1 || st.Sockets[0].Name != pool.Addr {
		t.Errorf("sockets %+v, want the pool's listener %s", st.Sockets, pool.Addr)
	}

	// A request in progress: the worker holding it is busy.
	c, err := net.Dial("tcp", pool.Addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "10 1000 0\n")
	busy := false
	for deadline := time.Now().Add(3 * time.Second); !busy && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		busy = snap().Load == 1
	}
	c.Close()
	if !busy {
		t.Error("no worker showed busy while holding an accepted connection")
	}

	// A worker killed and replaced: the new one takes the slot.
	victim := st.Workers[0]
	syscall.Kill(victim.PID, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		kids, _ := (Procfs{Root: "/proc"}).Children(pool.Master)
		if len(kids) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("killed worker still listed")
		}
	}
	syscall.Kill(pool.Master, syscall.SIGUSR1)
	pool.WaitWorkers(t, 2)
	var w Worker
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if w = snap().Workers[0]; w.PID != victim.PID && w.RespawnCount == 2 {
			break
		}
	}
	if w.PID == victim.PID || w.RespawnCount != 2 || w.Accepting != 1 {
		t.Errorf("slot 1 after its worker was replaced: %+v; want a new pid, respawn_count 2, accepting", w)
	}
}
