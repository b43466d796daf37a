package observer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
)

// removeProc takes a process out of a fixture tree: it exited.
func removeProc(t *testing.T, root string, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		if err := os.RemoveAll(filepath.Join(root, strconv.Itoa(pid))); err != nil {
			t.Fatal(err)
		}
	}
}

// writePIDFile writes a pidfile as a server does, dated after the fixture's
// processes started.
func writePIDFile(t *testing.T, path string, pid int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(fixtureBtime+1000, 0)
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

func refresh(t *testing.T, p *Pool) {
	t.Helper()
	if err := p.Refresh(); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
}

func slotPIDs(st *Stats) (ids, pids []int) {
	for _, w := range st.Workers {
		ids = append(ids, w.ID)
		pids = append(pids, w.PID)
	}
	return ids, pids
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

// TestPoolReloadOverlapKeepsSlots: a reload that starts the new workers
// before the old ones exit (gunicorn's HUP) shows extra slots only during
// the overlap; then each new worker sits in an old worker's slot, counts
// kept.
func TestPoolReloadOverlapKeepsSlots(t *testing.T) {
	p, k := testPool(t)
	k.update(4001, func(c *Counters) { c.Requests = 10 })
	k.update(4003, func(c *Counters) { c.Requests = 30 })
	k.update(4002, func(c *Counters) { c.Requests = 20 })
	snapshot(t, p)

	fresh := []int{4101, 4102, 4103}
	for i, pid := range fresh {
		addProc(t, p.Proc.Root, worker(pid, uint64(8000+i), 1000, 40000))
		k.set(Counters{PID: pid, Master: testMaster, Start: TicksToNs(uint64(8000 + i)), Requests: 1})
	}
	st := snapshot(t, p)
	if ids, _ := slotPIDs(st); !equalInts(ids, []int{1, 2, 3, 4, 5, 6}) {
		t.Fatalf("during the overlap: slots %v, want 1..6", ids)
	}
	// The old workers exit, the first one before the next read and the
	// other two after it.
	k.update(4003, func(c *Counters) { c.Exited = true })
	st = snapshot(t, p)
	ids, pids := slotPIDs(st)
	if !equalInts(ids, []int{1, 2, 3, 5, 6}) || !equalInts(pids, []int{4001, 4101, 4002, 4102, 4103}) {
		t.Errorf("one old worker gone: slots %v pids %v, want the first new worker in slot 2", ids, pids)
	}
	k.update(4001, func(c *Counters) { c.Exited = true })
	k.update(4002, func(c *Counters) { c.Exited = true })
	st = snapshot(t, p)
	ids, pids = slotPIDs(st)
	if !equalInts(ids, []int{1, 2, 3}) || !equalInts(pids, []int{4102, 4101, 4103}) {
		t.Fatalf("after the reload: slots %v pids %v, want 1..3 held by the new workers", ids, pids)
	}
	var total uint64
	for _, w := range st.Workers {
		total += w.Requests
		if w.RespawnCount != 2 || w.DeltaRequests != 1 || w.Accepting != 1 {
			t.Errorf("slot %d: respawn_count %d delta %d accepting %d, want 2 1 1", w.ID, w.RespawnCount, w.DeltaRequests, w.Accepting)
		}
	}
	if total != 63 {
		t.Errorf("requests over the slots = %d, want 63 (60 old, 3 new)", total)
	}
	if w := workerBySlot(t, st, 2); w.Requests != 31 {
		t.Errorf("slot 2 (4003's): requests %d, want 31", w.Requests)
	}
	// A later respawn takes a freed slot again and opens none.
	k.update(4101, func(c *Counters) { c.Exited = true })
	addProc(t, p.Proc.Root, worker(4200, 9500, 1000, 40000))
	k.set(Counters{PID: 4200, Master: testMaster, Start: TicksToNs(9500)})
	st = snapshot(t, p)
	if ids, pids := slotPIDs(st); !equalInts(ids, []int{1, 2, 3}) || pids[1] != 4200 {
		t.Errorf("respawn after the reload: slots %v pids %v", ids, pids)
	}
}

// TestPoolTornReadKeepsForkOrder: uWSGI's --reload under load. The old
// workers exit, then the master forks the new ones in slot order; the pass
// over the kernel map that first shows a new worker may miss the ones
// forked before it, and the exit of the slot's old worker. Each new worker
// must still take its predecessor's slot, as uWSGI numbers them.
func TestPoolTornReadKeepsForkOrder(t *testing.T) {
	p, k := testPool(t)
	for pid, n := range map[int]uint64{4001: 10, 4003: 30, 4002: 20} {
		k.update(pid, func(c *Counters) { c.Requests = n })
	}
	snapshot(t, p)

	for _, pid := range []int{4001, 4003, 4002} {
		k.update(pid, func(c *Counters) { c.Exited = true })
	}
	fresh := []int{4101, 4102, 4103} // forked in this order
	for i, pid := range fresh {
		addProc(t, p.Proc.Root, worker(pid, uint64(8000+i), 1000, 40000))
		k.set(Counters{PID: pid, Master: testMaster, Start: TicksToNs(uint64(8000 + i)), Requests: uint64(i + 1)})
	}
	// The pass read 4001's and 4003's entries before they exited, and
	// 4101's and 4102's parts of the map before they were forked.
	k.torn = func(all []Counters) []Counters {
		var out []Counters
		for _, c := range all {
			switch c.PID {
			case 4101, 4102:
				continue
			case 4001, 4003:
				c.Exited = false
			}
			out = append(out, c)
		}
		return out
	}
	st := snapshot(t, p)
	ids, pids := slotPIDs(st)
	if !equalInts(ids, []int{1, 2, 3}) || !equalInts(pids, fresh) {
		t.Fatalf("after the reload: slots %v pids %v, want 1..3 held by %v in fork order", ids, pids, fresh)
	}
	for i, want := range []uint64{10 + 1, 30 + 2, 20 + 3} {
		if w := st.Workers[i]; w.Requests != want || w.DeltaRequests != uint64(i+1) || w.RespawnCount != 2 {
			t.Errorf("slot %d: requests %d delta %d respawn_count %d, want %d %d 2 (its old worker's and its own)",
				w.ID, w.Requests, w.DeltaRequests, w.RespawnCount, want, i+1)
		}
	}
}

// TestPoolStoppedWorkerIsPaused: a worker stopped with SIGSTOP shows
// uWSGI's "pause".
func TestPoolStoppedWorkerIsPaused(t *testing.T) {
	p, _ := testPool(t)
	w := worker(4002, 1500, 1300, 41000)
	w.state = 'T'
	addProc(t, p.Proc.Root, w)
	st := snapshot(t, p)
	if got := workerBySlot(t, st, 3).Status; got != "pause" {
		t.Errorf("stopped worker: status %q, want pause", got)
	}
	if got := workerBySlot(t, st, 1).Status; got != "idle" {
		t.Errorf("running worker: status %q, want idle", got)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
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
