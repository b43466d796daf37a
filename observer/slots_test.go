package observer

import (
	"errors"
	"os"
	"reflect"
	"testing"
)

// Slot book-keeping (slots.go, refresh.go): respawns, reloads, torn reads
// of the kernel map, and what the kernel loses or cannot drop.

func TestPoolRespawnKeepsSlot(t *testing.T) {
	p, k := testPool(t)
	k.update(4001, func(c *Counters) {
		c.Requests, c.TX, c.RX, c.RunNs, c.Accepts, c.Closes = 10, 1000, 100, 4_000_000, 10, 10
	})
	k.update(4003, func(c *Counters) { c.Requests, c.TX = 7, 700 })
	before := snapshot(t, p)

	// 4001 served two more requests and exited; the master respawned it
	// as 4007.
	// Three requests it received it never answered (say it died in one).
	k.update(4001, func(c *Counters) {
		c.Requests, c.TX, c.RX, c.RunNs, c.Accepts, c.Closes = 12, 1200, 120, 5_000_000, 12, 12
		c.Unanswered, c.Exited = 3, true
	})
	addProc(t, p.Proc.Root, worker(4007, 9000, 1100, 39000))
	k.set(Counters{PID: 4007, Master: testMaster, Start: TicksToNs(9000),
		Requests: 5, Unanswered: 1, TX: 300, RX: 50, RunNs: 1_000_000, Accepts: 5, Closes: 4, InProgress: 1})

	for _, round := range []string{"after respawn", "next snapshot"} {
		st := snapshot(t, p)
		if len(st.Workers) != 3 {
			t.Fatalf("%s: %d workers, want 3 (the new process reuses slot 1)", round, len(st.Workers))
		}
		w := workerBySlot(t, st, 1)
		// Unanswered requests are requests, and exceptions.
		got := []any{w.PID, w.RespawnCount, w.Requests, w.DeltaRequests, w.Exceptions, w.TX, w.RX, w.RunningTime, w.Accepted, w.Closed, w.Status, w.Accepting,
			w.Apps[0].Requests, w.Apps[0].Exceptions, w.Cores[0].Requests, w.RSS}
		want := []any{4007, uint64(2), uint64(21), uint64(6), uint64(4), uint64(1500), uint64(170), uint64(6000), uint64(17), uint64(16), "busy", 1,
			uint64(21), uint64(4), uint64(21), 1100 * uint64(os.Getpagesize())}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: slot 1 [pid respawn_count requests delta_requests exceptions tx rx running_time accepted closed status accepting apps apps.exceptions cores rss]\n got %v\nwant %v",
				round, got, want)
		}
		if d := w.LastSpawn - workerBySlot(t, before, 1).LastSpawn; d != (9000-1000)/100 {
			t.Errorf("%s: last_spawn moved by %d s, want %d (the new process's start)", round, d, (9000-1000)/100)
		}
		if o := workerBySlot(t, st, 2); o.PID != 4003 || o.RespawnCount != 1 || o.Requests != 7 {
			t.Errorf("%s: slot 2 = pid %d respawn_count %d requests %d, want 4003 1 7 (untouched)", round, o.PID, o.RespawnCount, o.Requests)
		}
		if st.Load != 1 {
			t.Errorf("%s: load = %d, want 1", round, st.Load)
		}
	}
	// 4001's entry stays in the kernel as slot 1's history (for a daemon
	// restarted on pinned maps): the slot's sums before 4007, one process.
	if got := k.forgot(); len(got) != 0 {
		t.Errorf("kernel asked to forget %v, want nothing", got)
	}
	k.mu.Lock()
	h := k.counters[4001]
	k.mu.Unlock()
	if !h.Exited || h.Spawns != 1 || h.Requests != 12 || h.Unanswered != 3 || h.TX != 1200 || h.Closes != 12 {
		t.Errorf("4001's entry = %+v, want slot 1's history: spawns 1, requests 12, unanswered 3, tx 1200", h)
	}
}

func TestPoolWorkerForkedAndExitedBetweenSnapshots(t *testing.T) {
	p, k := testPool(t)
	snapshot(t, p)

	// The master forked 4009, which served 3 requests and exited before the
	// next read.
	k.set(Counters{PID: 4009, Master: testMaster, Start: TicksToNs(5000), Exited: true,
		Requests: 3, TX: 900, RX: 80, RunNs: 3_000_000, AvgRTNs: 1_000_000, Accepts: 3, Closes: 3})

	for _, round := range []string{"first seen", "next snapshot"} {
		st := snapshot(t, p)
		if len(st.Workers) != 4 {
			t.Fatalf("%s: %d workers, want 4 (the short-lived worker holds a slot)", round, len(st.Workers))
		}
		w := workerBySlot(t, st, 4)
		got := []any{w.PID, w.Requests, w.DeltaRequests, w.TX, w.RX, w.RunningTime, w.AvgRT, w.RespawnCount, w.Status, w.Accepting, w.Cores[0].InRequest, w.RSS, w.VSZ}
		// Its slot has no process now: uWSGI shows such a slot as pid 0,
		// "cheap".
		want := []any{0, uint64(3), uint64(0), uint64(900), uint64(80), uint64(3000), uint64(1000), uint64(1), "cheap", 0, 0, uint64(0), uint64(0)}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: slot 4 [pid requests delta_requests tx rx running_time avg_rt respawn_count status accepting in_request rss vsz]\n got %v\nwant %v",
				round, got, want)
		}
	}
	if got := k.forgot(); len(got) != 0 || !reflect.DeepEqual(k.remembered, []int{4009}) {
		t.Errorf("kernel asked to forget %v and keep as history %v, want nothing and [4009]", got, k.remembered)
	}

	// The next worker the master spawns takes the free slot.
	addProc(t, p.Proc.Root, worker(4011, 6000, 1000, 40000))
	k.set(Counters{PID: 4011, Master: testMaster, Start: TicksToNs(6000), Requests: 2, TX: 100})
	st := snapshot(t, p)
	if len(st.Workers) != 4 {
		t.Fatalf("%d workers, want 4", len(st.Workers))
	}
	w := workerBySlot(t, st, 4)
	if w.PID != 4011 || w.RespawnCount != 2 || w.Requests != 5 || w.DeltaRequests != 2 || w.TX != 1000 || w.Accepting != 1 {
		t.Errorf("slot 4 after respawn: pid %d respawn_count %d requests %d delta %d tx %d accepting %d, want 4011 2 5 2 1000 1",
			w.PID, w.RespawnCount, w.Requests, w.DeltaRequests, w.TX, w.Accepting)
	}

	// Its successor exits too and is replaced: the slot sums all three.
	k.update(4011, func(c *Counters) { c.Requests, c.TX, c.Exited = 4, 200, true })
	addProc(t, p.Proc.Root, worker(4013, 7000, 1000, 40000))
	k.set(Counters{PID: 4013, Master: testMaster, Start: TicksToNs(7000), Requests: 1, TX: 10})
	st = snapshot(t, p)
	w = workerBySlot(t, st, 4)
	if len(st.Workers) != 4 || w.PID != 4013 || w.RespawnCount != 3 || w.Requests != 8 || w.DeltaRequests != 1 || w.TX != 1110 {
		t.Errorf("%d workers, slot 4 after second respawn: pid %d respawn_count %d requests %d delta %d tx %d, want 4 workers, 4013 3 8 1 1110",
			len(st.Workers), w.PID, w.RespawnCount, w.Requests, w.DeltaRequests, w.TX)
	}
	// The slot keeps one history entry: 4011's now, 4009's dropped.
	if got := k.forgot(); !reflect.DeepEqual(got, []int{4009}) || k.has(4009) || !k.has(4011) {
		t.Errorf("kernel asked to forget %v, want [4009] (4011 holds slot 4's history)", got)
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

func TestPoolIgnoresOtherMasters(t *testing.T) {
	p, k := testPool(t)
	k.set(Counters{PID: 5001, Master: 5000, Start: TicksToNs(2000), Requests: 99, InProgress: 1})
	k.set(Counters{PID: 5002, Master: 5000, Start: TicksToNs(2100), Requests: 42, Exited: true})
	for range 2 {
		st := snapshot(t, p)
		if len(st.Workers) != 3 {
			t.Fatalf("%d workers, want 3", len(st.Workers))
		}
		for _, w := range st.Workers {
			if w.PID == 5001 || w.PID == 5002 || w.Requests != 0 {
				t.Errorf("another master's worker leaked into the dump: %+v", w)
			}
		}
		if st.Load != 0 {
			t.Errorf("load = %d, want 0", st.Load)
		}
	}
	if got := k.forgot(); len(got) != 0 {
		t.Errorf("kernel asked to forget %v, another master's workers", got)
	}
}

func TestPoolKernelLostWorkerKeepsCounts(t *testing.T) {
	p, k := testPool(t)
	k.update(4002, func(c *Counters) { c.Requests, c.TX = 8, 800 })
	snapshot(t, p)

	// The entry disappears from the kernel map (removed, or never added
	// because the map was full): the slot keeps what was counted.
	k.mu.Lock()
	delete(k.counters, 4002)
	k.mu.Unlock()
	st := snapshot(t, p)
	w := workerBySlot(t, st, 3)
	if w.PID != 4002 || w.Requests != 8 || w.TX != 800 || w.Status != "idle" {
		t.Errorf("slot 3 = pid %d requests %d tx %d status %s, want 4002 8 800 idle", w.PID, w.Requests, w.TX, w.Status)
	}
}

func TestPoolForgetFailureDoesNotDoubleCount(t *testing.T) {
	p, k := testPool(t)
	k.forgetErr = errors.New("map busy")
	k.rememberErr = errors.New("map busy")
	k.update(4001, func(c *Counters) { c.Requests, c.TX, c.Exited = 10, 1000, true })
	var want Worker
	for i := range 3 {
		st := snapshot(t, p)
		w := workerBySlot(t, st, 1)
		if i == 0 {
			want = w
			if w.Requests != 10 || w.RespawnCount != 1 {
				t.Fatalf("slot 1 = requests %d respawn_count %d, want 10 1", w.Requests, w.RespawnCount)
			}
			continue
		}
		if len(st.Workers) != 3 || w.Requests != want.Requests || w.TX != want.TX || w.RespawnCount != want.RespawnCount {
			t.Errorf("read %d: %d workers, slot 1 requests %d tx %d respawn_count %d; want 3 workers, %d %d %d (unchanged)",
				i+1, len(st.Workers), w.Requests, w.TX, w.RespawnCount, want.Requests, want.TX, want.RespawnCount)
		}
	}
}
