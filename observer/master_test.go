package observer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
)

// Finding and adopting the master (master.go): at start, when it restarts
// or is missing, and after a daemon restart on pinned maps.

func TestPoolStartWatchesChildrenInStartOrder(t *testing.T) {
	p, k := testPool(t)
	if !k.watched {
		t.Fatal("Start did not ask the kernel to watch the master")
	}
	if want := (Proc{PID: testMaster, StartTicks: 900}); k.master != want {
		t.Errorf("watched master %+v, want %+v", k.master, want)
	}
	wantKids := []Proc{{4001, 1000}, {4003, 1234}, {4002, 1500}}
	if !reflect.DeepEqual(k.initial, wantKids) {
		t.Errorf("watched workers %v, want %v", k.initial, wantKids)
	}

	st := snapshot(t, p)
	var got []int
	for _, w := range st.Workers {
		got = append(got, w.ID, w.PID)
	}
	if want := []int{1, 4001, 2, 4003, 3, 4002}; !reflect.DeepEqual(got, want) {
		t.Errorf("(id, pid) pairs = %v, want %v", got, want)
	}
}

func TestPoolStartMissingMaster(t *testing.T) {
	p := &Pool{Target: Target{PID: 4242}, Proc: newProcfs(t), Kernel: newFakeKernel(), Log: testutil.NewLog(t).Logger}
	if err := p.Start(context.Background()); !errors.Is(err, ErrNoTarget) {
		t.Fatalf("Start with a missing master: err = %v, want ErrNoTarget", err)
	}
}

// TestPoolFollowsRestartedMaster: the master named by a pidfile exits with
// its workers; the dump is an empty pool saying why; a new master writes the
// pidfile and observation resumes in the same slots, counts kept.
func TestPoolFollowsRestartedMaster(t *testing.T) {
	p, k := testPool(t)
	pidfile := filepath.Join(t.TempDir(), "app.pid")
	writePIDFile(t, pidfile, testMaster)
	p.Target = Target{PIDFile: pidfile}
	k.update(4001, func(c *Counters) { c.Requests, c.TX = 10, 1000 })
	k.update(4003, func(c *Counters) { c.Requests, c.TX = 20, 2000 })
	if st := snapshot(t, p); len(st.Workers) != 3 || st.PID != testMaster {
		t.Fatalf("before: %d workers, master %d", len(st.Workers), st.PID)
	}

	// The master and its workers exit (the pidfile stays, as after a crash).
	removeProc(t, p.Proc.Root, testMaster, 4001, 4002, 4003)
	for _, pid := range []int{4001, 4002, 4003} {
		k.update(pid, func(c *Counters) { c.Exited = true })
	}
	refresh(t, p)
	st := snapshot(t, p)
	if len(st.Workers) != 0 || st.PID != 0 || len(st.Sockets) != 0 {
		t.Errorf("master gone: %d workers, pid %d, %d sockets; want an empty pool", len(st.Workers), st.PID, len(st.Sockets))
	}
	for _, want := range []string{"master pid 4000 exited", "names pid 4000, which is not running", "resumes when the master is back"} {
		if !strings.Contains(st.Observer.Waiting, want) {
			t.Errorf("observer.waiting = %q, lacks %q", st.Observer.Waiting, want)
		}
	}
	if st.Observer.Target != "pidfile "+pidfile {
		t.Errorf("observer.target = %q", st.Observer.Target)
	}

	// The master is started again: a new pid in the pidfile, new workers.
	for _, fp := range []fakeProc{
		{pid: 6000, ppid: 1, comm: "uwsgi", startTicks: 9000, tasks: map[int][]int{6000: {6001, 6002, 6003}}},
		worker(6001, 9001, 1000, 40000), worker(6002, 9002, 1000, 40000), worker(6003, 9003, 1000, 40000),
	} {
		if fp.pid != 6000 {
			fp.ppid = 6000
		}
		addProc(t, p.Proc.Root, fp)
	}
	writePIDFile(t, pidfile, 6000)
	refresh(t, p)
	if k.master.PID != 6000 || len(k.initial) != 3 {
		t.Errorf("kernel watching master %d with %d workers, want 6000 with 3", k.master.PID, len(k.initial))
	}
	k.update(6001, func(c *Counters) { c.Requests, c.TX = 1, 5 })
	st = snapshot(t, p)
	if st.PID != 6000 || st.Observer.Waiting != "" {
		t.Errorf("after restart: master %d, waiting %q", st.PID, st.Observer.Waiting)
	}
	ids, pids := slotPIDs(st)
	if want := []int{6001, 6002, 6003}; !equalInts(ids, []int{1, 2, 3}) || !equalInts(pids, want) {
		t.Fatalf("after restart: slots %v pids %v, want slots 1..3 with %v", ids, pids, want)
	}
	w := st.Workers[0]
	if w.Requests != 11 || w.DeltaRequests != 1 || w.TX != 1005 || w.RespawnCount != 2 {
		t.Errorf("slot 1: requests %d delta %d tx %d respawn_count %d, want 11 1 1005 2", w.Requests, w.DeltaRequests, w.TX, w.RespawnCount)
	}
	if w := st.Workers[1]; w.Requests != 20 || w.DeltaRequests != 0 {
		t.Errorf("slot 2: requests %d delta %d, want 20 0 (pid 4003 had spawned second)", w.Requests, w.DeltaRequests)
	}
}

// TestPoolLosesZombieMaster: a master that has exited but is not yet
// reaped (its parent reaps late) is gone, with its pidfile removed as a
// stopping master removes it: the pool is empty and says why, and a worker
// its parent has not reaped either leaves its slot.
func TestPoolLosesZombieMaster(t *testing.T) {
	p, k := testPool(t)
	pidfile := filepath.Join(t.TempDir(), "app.pid")
	writePIDFile(t, pidfile, testMaster)
	p.Target = Target{PIDFile: pidfile}
	if st := snapshot(t, p); st.PID != testMaster || len(st.Workers) != 3 {
		t.Fatalf("before: master %d with %d workers", st.PID, len(st.Workers))
	}
	// Its entry lost, procfs alone says whether worker 4002 (slot 3) runs.
	k.mu.Lock()
	delete(k.counters, 4002)
	k.mu.Unlock()
	addProc(t, p.Proc.Root, fakeProc{pid: 4002, ppid: testMaster, comm: "uwsgi (worker)", startTicks: 1500, state: 'Z'})
	refresh(t, p)
	if w := workerBySlot(t, snapshot(t, p), 3); w.PID == 4002 {
		t.Errorf("a zombie worker still holds slot 3: status %q", w.Status)
	}

	// The master exits; its pidfile still names it (a crash leaves it).
	addProc(t, p.Proc.Root, fakeProc{pid: testMaster, ppid: 1, comm: "uwsgi (master)", startTicks: 900, state: 'Z'})
	for i := range 2 { // and stays empty: the pidfile's zombie is not adopted again
		refresh(t, p)
		st := snapshot(t, p)
		if st.PID != 0 || len(st.Workers) != 0 || (i == 0 && !strings.Contains(st.Observer.Waiting, "master pid 4000 exited")) ||
			!strings.Contains(st.Observer.Waiting, "finds pid 4000, which has exited (not yet reaped)") {
			t.Errorf("a zombie master: pid %d, %d workers, waiting %q; want an empty pool saying the master exited", st.PID, len(st.Workers), st.Observer.Waiting)
		}
	}
	if err := os.Remove(pidfile); err != nil {
		t.Fatal(err)
	}
	refresh(t, p)
	if st := snapshot(t, p); st.PID != 0 || !strings.Contains(st.Observer.Waiting, "does not exist") {
		t.Errorf("the pidfile removed: pid %d, waiting %q", st.PID, st.Observer.Waiting)
	}
}

// TestPoolPIDTargetIsNotFollowed: with --pid, a master that exits is not
// followed, and a process that later gets the same pid is not taken for it.
func TestPoolPIDTargetIsNotFollowed(t *testing.T) {
	p, k := testPool(t)
	snapshot(t, p)
	removeProc(t, p.Proc.Root, testMaster)
	refresh(t, p)
	// An unrelated process is given pid 4000.
	addProc(t, p.Proc.Root, fakeProc{pid: testMaster, ppid: 1, comm: "cron", startTicks: 99999})
	refresh(t, p)
	st := snapshot(t, p)
	if st.PID != 0 || len(st.Workers) != 0 {
		t.Errorf("pid %d, %d workers; want an empty pool", st.PID, len(st.Workers))
	}
	if !strings.Contains(st.Observer.Waiting, "master pid 4000 exited") || !strings.Contains(st.Observer.Waiting, "give its pidfile or its name") {
		t.Errorf("observer.waiting = %q", st.Observer.Waiting)
	}
	if k.master.StartTicks != 900 {
		t.Errorf("the kernel was told to watch %+v, the reused pid", k.master)
	}
}

// TestPoolWaitsForMaster: a pidfile that does not exist yet leaves the pool
// empty and waiting; once the master starts it is watched.
func TestPoolWaitsForMaster(t *testing.T) {
	fs := newProcfs(t, fakeProc{pid: testMaster, ppid: 1, comm: "uwsgi", startTicks: 900, tasks: map[int][]int{testMaster: {4001}}},
		worker(4001, 1000, 1200, 40000))
	pidfile := filepath.Join(t.TempDir(), "app.pid")
	k := newFakeKernel()
	p := &Pool{Target: Target{PIDFile: pidfile}, Proc: fs, Kernel: k, Log: testutil.NewLog(t).Logger}
	if err := p.Start(context.Background()); !errors.Is(err, ErrNoTarget) {
		t.Fatalf("Start: %v, want ErrNoTarget", err)
	}
	st := snapshot(t, p)
	if len(st.Workers) != 0 || !strings.Contains(st.Observer.Waiting, "does not exist") || p.Waiting() == "" {
		t.Errorf("waiting pool: %d workers, waiting %q", len(st.Workers), st.Observer.Waiting)
	}
	writePIDFile(t, pidfile, testMaster)
	refresh(t, p)
	st = snapshot(t, p)
	if len(st.Workers) != 1 || st.Workers[0].PID != 4001 || st.Observer.Waiting != "" || !k.watched {
		t.Errorf("after the master started: workers %+v, waiting %q, watched %v", st.Workers, st.Observer.Waiting, k.watched)
	}
}

// TestProcfsPoolWaitsForMaster: in procfs mode too, a master not there yet
// is an empty pool that says why, not a failed read.
func TestProcfsPoolWaitsForMaster(t *testing.T) {
	fs := newProcfs(t)
	pidfile := filepath.Join(t.TempDir(), "app.pid")
	p := &Pool{Target: Target{PIDFile: pidfile}, Proc: fs, Kernel: &ProcfsKernel{Proc: fs, Reason: "test"}, Log: testutil.NewLog(t).Logger}
	if err := p.Start(context.Background()); !errors.Is(err, ErrNoTarget) {
		t.Fatalf("Start: %v, want ErrNoTarget", err)
	}
	refresh(t, p)
	st := snapshot(t, p)
	if len(st.Workers) != 0 || st.Observer.Mode != "procfs" || !strings.Contains(st.Observer.Waiting, "does not exist") {
		t.Errorf("procfs pool with no master: %d workers, mode %q, waiting %q", len(st.Workers), st.Observer.Mode, st.Observer.Waiting)
	}
}

// TestPoolRestartRebuildsSlots: a daemon restarted on pinned maps rebuilds
// the slots from what the kernel kept: each slot's history entry and the
// workers that ran or exited while no daemon was there. No slot is added,
// and every slot's counts and respawns are as before.
func TestPoolRestartRebuildsSlots(t *testing.T) {
	p, k := testPool(t)
	k.update(4001, func(c *Counters) { c.Requests, c.TX = 10, 100 })
	k.update(4003, func(c *Counters) { c.Requests, c.TX = 30, 300 })
	k.update(4002, func(c *Counters) { c.Requests, c.TX = 20, 200 })
	snapshot(t, p)
	// 4001 (slot 1) exits and 4007 replaces it, seen by the first daemon.
	k.update(4001, func(c *Counters) { c.Requests, c.Exited, c.ExitNs = 11, true, TicksToNs(8000) })
	addProc(t, p.Proc.Root, worker(4007, 9000, 1000, 40000))
	k.set(Counters{PID: 4007, Master: testMaster, Start: TicksToNs(9000), Requests: 4, TX: 40})
	before := snapshot(t, p)

	// The daemon stops. Meanwhile 4003 (slot 2) exits and 4020 replaces
	// it, and the others serve more.
	k.update(4003, func(c *Counters) { c.Requests, c.Exited, c.ExitNs = 33, true, TicksToNs(9500) })
	removeProc(t, p.Proc.Root, 4001, 4003)
	addProc(t, p.Proc.Root, fakeProc{pid: testMaster, ppid: 1, comm: "uwsgi (master)", startTicks: 900,
		tasks: map[int][]int{testMaster: {4007, 4002, 4020}}})
	addProc(t, p.Proc.Root, worker(4020, 9600, 1000, 40000))
	k.set(Counters{PID: 4020, Master: testMaster, Start: TicksToNs(9600), Requests: 2, TX: 20})
	k.update(4007, func(c *Counters) { c.Requests = 6 })

	// A new daemon on the same kernel maps.
	q := &Pool{Target: Target{PID: testMaster}, Proc: p.Proc, Kernel: k, Log: testutil.NewLog(t).Logger}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := snapshot(t, q)
	ids, pids := slotPIDs(st)
	if !equalInts(ids, []int{1, 2, 3}) || !equalInts(pids, []int{4007, 4020, 4002}) {
		t.Fatalf("after the restart: slots %v pids %v, want 1..3 held by 4007, 4020, 4002 as before", ids, pids)
	}
	for _, c := range []struct {
		slot                    int
		requests, delta, spawns uint64
	}{{1, 11 + 6, 6, 2}, {2, 33 + 2, 2, 2}, {3, 20, 20, 1}} {
		w := workerBySlot(t, st, c.slot)
		if w.Requests != c.requests || w.DeltaRequests != c.delta || w.RespawnCount != c.spawns {
			t.Errorf("slot %d: requests %d delta %d respawn_count %d, want %d %d %d", c.slot, w.Requests, w.DeltaRequests, w.RespawnCount, c.requests, c.delta, c.spawns)
		}
	}
	if w0, w1 := workerBySlot(t, before, 1), workerBySlot(t, st, 1); w1.Requests < w0.Requests || w1.TX < w0.TX {
		t.Errorf("slot 1 went down across the restart: requests %d -> %d, tx %d -> %d", w0.Requests, w1.Requests, w0.TX, w1.TX)
	}
	// A third read changes nothing: history is not added twice.
	if again := snapshot(t, q); workerBySlot(t, again, 2).Requests != 35 {
		t.Errorf("slot 2 on a later read: %d requests, want 35", workerBySlot(t, again, 2).Requests)
	}
}

// TestPoolRestartKeepsKeptSlots: a restarted daemon puts each process in
// the slot the kernel kept for it, where the order the processes started
// in would put them elsewhere (the last daemon placed two workers forked
// at once in the order it found them): 4001 in slot 2 and 4003 in slot 1,
// each slot with its own counts.
func TestPoolRestartKeepsKeptSlots(t *testing.T) {
	p, k := testPool(t)
	k.update(4001, func(c *Counters) { c.Requests = 10 })
	k.update(4003, func(c *Counters) { c.Requests = 30 })
	snapshot(t, p)
	k.KeepSlot(Proc{PID: 4001, StartTicks: 1000}, 2)
	k.KeepSlot(Proc{PID: 4003, StartTicks: 1234}, 1)
	q := &Pool{Target: Target{PID: testMaster}, Proc: p.Proc, Kernel: k, Log: testutil.NewLog(t).Logger}
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := snapshot(t, q)
	for slot, want := range map[int]struct {
		pid      int
		requests uint64
	}{1: {4003, 30}, 2: {4001, 10}, 3: {4002, 0}} {
		if w := workerBySlot(t, st, slot); w.PID != want.pid || w.Requests != want.requests {
			t.Errorf("slot %d: pid %d with %d requests, want pid %d with %d", slot, w.PID, w.Requests, want.pid, want.requests)
		}
	}
}
