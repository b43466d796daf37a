package userspace

import (
	"fmt"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// TestGunicornHUPReload: SIGHUP makes gunicorn's master fork a new set of
// workers and then stop the old ones gracefully (gthread workers drop their
// idle keep-alive connections), all under load. The totals across the
// reload still equal the clients', and the new workers are in the dump.
//
// gunicorn's master sends SIGTERM to the old workers again on each turn of
// its loop until they are gone; one landing while Python shuts down (its
// handler already reset) kills the worker with keep-alive connections still
// open, which the kernel then closes: they must count as closed.
func TestGunicornHUPReload(t *testing.T) {
	testutil.RequireEBPF(t)
	kinds := []struct {
		name string
		args []string
	}{
		{"sync", []string{"-k", "sync"}},
		{"gthread", []string{"-k", "gthread", "--threads", "4", "--keep-alive", "5"}},
	}
	for _, kind := range kinds {
		t.Run(kind.name, func(t *testing.T) {
			for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
				t.Run(hooks, func(t *testing.T) { gunicornHUP(t, hooks, kind.args...) })
			}
		})
	}
}

func gunicornHUP(t *testing.T, hooks string, args ...string) {
	p := harness.StartGunicorn(t, 4, args...)
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
	old, err := harness.ChildPIDs(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	b := harness.StartBackgroundLoad(p.Addr, 32, 20, 20)
	b.WaitCompleted(t, int64(testutil.Scale(1500)), "1,500 requests (scaled) before the reload", nil)

	// A reader polls through the reload, as uwsgitop would: which slots the
	// new workers take depends on whether a dump is read while old and new
	// workers are both alive.
	polled := make(chan int)
	pollStop := make(chan struct{})
	go func() {
		most := 0
		for {
			select {
			case <-pollStop:
				polled <- most
				return
			case <-time.After(20 * time.Millisecond):
			}
			if st, err := harness.ReadStats(d.Addr); err == nil {
				most = max(most, len(st.Workers))
			}
		}
	}()
	if err := syscall.Kill(p.PID, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	atHUP := b.Load.Completed()
	var fresh []int
	harness.WaitFor(t, 30*time.Second, "gunicorn to replace its workers", func() error {
		kids, err := harness.ChildPIDs(p.PID)
		if err != nil {
			return err
		}
		for _, k := range kids {
			if slices.Contains(old, k) {
				return fmt.Errorf("old worker %d still running (children %v)", k, kids)
			}
		}
		if len(kids) != 4 {
			return fmt.Errorf("children %v", kids)
		}
		fresh = kids
		return nil
	})
	atNew := b.Load.Completed()
	close(pollStop)
	mostSlots := <-polled
	b.WaitCompleted(t, atNew+int64(testutil.Scale(1500)), "1,500 requests (scaled) after the reload", func() error {
		for _, k := range fresh {
			if b.Load.ServedBy(k) == 0 {
				return fmt.Errorf("new worker %d has served nothing yet", k)
			}
		}
		return nil
	})
	load := b.Finish(t)
	t.Logf("old workers %v, new workers %v; requests completed: %d before SIGHUP, %d when the old workers were gone, %d in all",
		old, fresh, atHUP, atNew, load.OK)

	st := harness.GunicornSettle(t, d, load)
	replaced := map[int]bool{}
	for _, k := range old {
		replaced[k] = true
	}
	harness.CheckGunicorn(t, st, load, hooks, replaced)
	var live int
	respawns := map[uint64]int{}
	for _, w := range st.Workers {
		live += w.Accepting
		respawns[w.RespawnCount]++
	}
	byPID := harness.WorkersByPID(st)
	for _, k := range fresh {
		if w, ok := byPID[k]; !ok || w.Accepting != 1 {
			t.Errorf("new worker %d is not a live worker in the dump", k)
		}
	}
	if live != 4 {
		t.Errorf("%d live workers in the dump, gunicorn has 4", live)
	}
	// The reload keeps the slots: once the old workers are gone, each new
	// one sits in an old one's slot, its second process.
	if len(st.Workers) != 4 || respawns[2] != 4 {
		t.Errorf("after the reload: %d slots, by respawn_count %v; want slots 1..4, each respawned once", len(st.Workers), respawns)
	}
	for i, w := range st.Workers {
		if w.ID != i+1 {
			t.Errorf("slot ids %d at position %d: want 1..4", w.ID, i)
		}
	}
	t.Logf("a reader polling every 20 ms through the reload saw up to %d slots; the dump now has %d slots (%d live), slots by respawn_count: %v",
		mostSlots, len(st.Workers), live, respawns)
	if accepted, closed := harness.SumConns(st); closed != accepted {
		t.Errorf("%d connections accepted, %d closed: those a worker held when it exited must count as closed", accepted, closed)
	}
}
