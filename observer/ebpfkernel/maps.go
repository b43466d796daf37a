package ebpfkernel

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
)

const (
	roleMaster = bpf.ObserverRoleROLE_MASTER
	roleWorker = bpf.ObserverRoleROLE_WORKER
)

// Watch implements observer.Kernel.
func (k *Kernel) Watch(master observer.Proc, workers []observer.Proc) error {
	// The master's entry holds no counts, so it is always written: over a
	// pinned map's entry for the same master (a restart) it changes
	// nothing, and over a dead process's entry under a reused pid it
	// makes the pid this master's.
	m := bpf.ObserverWorker{Role: roleMaster, StartNs: observer.TicksToNs(master.StartTicks)}
	if err := k.objs.Workers.Put(uint32(master.PID), &m); err != nil {
		if errors.Is(err, unix.E2BIG) {
			err = ErrWorkersFull
		}
		return fmt.Errorf("add master %d to the kernel map: %w", master.PID, err)
	}
	k.unheardOf(master.PID)
	for _, w := range workers {
		added, err := k.watchWorker(master.PID, w)
		if err != nil {
			return fmt.Errorf("add worker %d to the kernel map: %w", w.PID, err)
		}
		if !added {
			continue
		}
		if err := k.markWatched(w.PID, true); err != nil {
			return fmt.Errorf("add worker %d: %w", w.PID, err)
		}
	}
	return nil
}

// ErrWorkersFull says the workers table has no room for a master: the
// table's size is the limit to raise.
var ErrWorkersFull = errors.New("the workers table is full")

// watchWorker adds a worker the master already had; false when the
// workers table has no room for it (counted, once per pid, as untracked).
func (k *Kernel) watchWorker(master int, w observer.Proc) (bool, error) {
	v := bpf.ObserverWorker{Role: roleWorker, Master: uint32(master), StartNs: observer.TicksToNs(w.StartTicks), NsPid: nsPID(w.PID)}
	// NoExist: a worker the kernel saw fork meanwhile keeps its counts.
	err := k.objs.Workers.Update(uint32(w.PID), &v, ebpf.UpdateNoExist)
	if errors.Is(err, unix.E2BIG) {
		k.unfitMu.Lock()
		defer k.unfitMu.Unlock()
		if k.unfit == nil {
			k.unfit = map[int]bool{}
		}
		k.unfit[w.PID] = true
		return false, nil
	}
	if !errors.Is(err, ebpf.ErrKeyExist) {
		return err == nil, err
	}
	// Kept from before a restart (pinned maps) when it is this process;
	// another process's under a reused pid is replaced.
	var old bpf.ObserverWorker
	if k.objs.Workers.Lookup(uint32(w.PID), &old) == nil && observer.NsToTicks(old.StartNs) != w.StartTicks {
		return true, k.objs.Workers.Put(uint32(w.PID), &v)
	}
	return true, nil
}

// nsPID is process pid's pid in its own (innermost) PID namespace, as
// the kernel's on_fork notes it for the workers it adds: the last field
// of the NSpid line of /proc/PID/status. 0 when it cannot be read.
func nsPID(pid int) uint32 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				return 0
			}
			n, _ := strconv.ParseUint(f[len(f)-1], 10, 32)
			return uint32(n)
		}
	}
	return 0
}

// unfitWorkers is how many workers watchWorker found no room for.
func (k *Kernel) unfitWorkers() uint64 {
	k.unfitMu.Lock()
	defer k.unfitMu.Unlock()
	return uint64(len(k.unfit))
}

// Workers implements observer.Kernel.
func (k *Kernel) Workers() ([]observer.Counters, error) {
	// Exit times are on bpf_ktime_get_ns()'s clock, start times on
	// start_boottime's: they differ by the time the host was suspended.
	now, suspended, err := clockOffset()
	if err != nil {
		return nil, err
	}
	var (
		pid uint32
		v   bpf.ObserverWorker
		out []observer.Counters
	)
	it := k.objs.Workers.Iterate()
	for it.Next(&pid, &v) {
		if v.Role == roleWorker {
			c := counters(pid, &v, now, suspended)
			if k.countStatus {
				c.Followed = summary(&v)
			}
			out = append(out, c)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate workers map: %w", err)
	}
	return out, nil
}

// counters converts a worker's kernel entry.
func counters(pid uint32, v *bpf.ObserverWorker, now, suspended uint64) observer.Counters {
	return observer.Counters{
		PID:        int(pid),
		Master:     int(v.Master),
		NSPID:      int(v.NsPid),
		Start:      v.StartNs,
		Exited:     v.ExitNs != 0,
		ExitNs:     exitBoot(v.ExitNs, suspended),
		Spawns:     v.Spawns,
		Accepts:    v.Accepts,
		Requests:   v.Requests,
		Unanswered: v.Unanswered,
		Closes:     v.Closes,
		RX:         v.Rx,
		TX:         v.Tx,
		RunNs:      v.RtNs,
		AvgRTNs:    v.AvgRtNs,
		InProgress: inRequest(v, now),

		ExitStatus:         v.ExitStatus,
		KillSig:            int(v.KillSig),
		Killer:             killer(v.Killer),
		KillNs:             exitBoot(v.KillNs, suspended),
		ExitedInRequest:    bpf.ObserverInRequestAt(v.InRequestAt)&bpf.ObserverInRequestAtIN_REQUEST_AT_EXIT != 0,
		SignalledInRequest: bpf.ObserverInRequestAt(v.InRequestAt)&bpf.ObserverInRequestAtIN_REQUEST_AT_SIGNAL != 0,
	}
}

// ResponseIdle is how long after its last response byte a connection whose
// next request has not come is taken as idle: the kernel cannot see where a
// response ends, and a keep-alive connection waits in that state. The
// programs use it too (enum response_idle in bpf/lib/types.h).
const ResponseIdle = time.Duration(bpf.ObserverResponseIdleRESPONSE_IDLE_NS)

// inRequest is how many requests a worker is in: those received and not
// answered yet, plus one being answered when a response byte went out
// within ResponseIdle.
func inRequest(v *bpf.ObserverWorker, now uint64) int64 {
	n := max(v.Awaiting, 0)
	if v.InProgress > n && now-v.LastTxNs < uint64(ResponseIdle) {
		n++
	}
	return n
}

func exitBoot(exitNs, suspended uint64) uint64 {
	if exitNs == 0 {
		return 0
	}
	return exitNs + suspended
}

// Remember implements observer.Kernel.
func (k *Kernel) Remember(master int, h observer.Counters) error {
	var v bpf.ObserverWorker
	if err := k.objs.Workers.Lookup(uint32(h.PID), &v); err != nil {
		return fmt.Errorf("worker %d's entry: %w", h.PID, err)
	}
	if v.Role != roleWorker || v.ExitNs == 0 {
		return fmt.Errorf("worker %d has not exited", h.PID)
	}
	v.Master = uint32(master)
	v.Accepts, v.Requests, v.Unanswered, v.Closes = h.Accepts, h.Requests, h.Unanswered, h.Closes
	v.Rx, v.Tx, v.RtNs, v.AvgRtNs = h.RX, h.TX, h.RunNs, h.AvgRTNs
	v.InProgress, v.Awaiting, v.Spawns = 0, 0, h.Spawns
	keepSummary(&v, h)
	if err := k.objs.Workers.Update(uint32(h.PID), &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write worker %d's slot history: %w", h.PID, err)
	}
	return k.markWatched(h.PID, false) // it exited
}

// KeepSlot implements observer.SlotKeeper.
func (k *Kernel) KeepSlot(p observer.Proc, slot int) error {
	v := bpf.ObserverSlotOf{StartTicks: p.StartTicks, Slot: uint32(slot)}
	if err := k.objs.Slots.Put(uint32(p.PID), &v); err != nil {
		return fmt.Errorf("keep worker %d's slot: %w", p.PID, err)
	}
	return nil
}

// KeptSlots implements observer.SlotKeeper.
func (k *Kernel) KeptSlots() (map[observer.Proc]int, error) {
	kept := map[observer.Proc]int{}
	var (
		pid uint32
		v   bpf.ObserverSlotOf
	)
	it := k.objs.Slots.Iterate()
	for it.Next(&pid, &v) {
		kept[observer.Proc{PID: int(pid), StartTicks: v.StartTicks}] = int(v.Slot)
	}
	if err := it.Err(); err != nil {
		return kept, fmt.Errorf("read the kept slots: %w", err)
	}
	return kept, nil
}

// Forget implements observer.Kernel.
func (k *Kernel) Forget(pid int) error {
	if err := k.objs.Slots.Delete(uint32(pid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	err := k.objs.Workers.Delete(uint32(pid))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return k.markWatched(pid, false)
}

// Unwatch removes a master and its workers from the kernel map.
func (k *Kernel) Unwatch(master int) error {
	_, err := k.prune(func(owner int) bool { return owner == master })
	return errors.Join(err, k.forgetListening(master))
}

// Prune removes from the kernel map every master not in watched, and its
// workers: pinned maps outlive the daemon, so a master watched by an
// earlier run (a pool since dropped from the config, or restarted while no
// daemon ran) would otherwise stay counted and fill the map. It returns how
// many entries went.
func (k *Kernel) Prune(watched map[int]bool) (int, error) {
	return k.prune(func(owner int) bool { return !watched[owner] })
}

// prune removes every entry, master or worker, whose master drop picks.
func (k *Kernel) prune(drop func(owner int) bool) (int, error) {
	var (
		pid  uint32
		v    bpf.ObserverWorker
		gone []uint32
	)
	it := k.objs.Workers.Iterate()
	for it.Next(&pid, &v) {
		owner := int(v.Master)
		if v.Role == roleMaster {
			owner = int(pid)
		}
		if drop(owner) {
			gone = append(gone, pid)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate workers map: %w", err)
	}
	for _, pid := range gone {
		if err := k.Forget(int(pid)); err != nil {
			return 0, fmt.Errorf("drop pid %d from the workers map: %w", pid, err)
		}
	}
	return len(gone), nil
}

// killer is a worker's killer as observer.Counters says it.
func killer(k uint32) int {
	if bpf.ObserverKiller(k) == bpf.ObserverKillerKILLER_OOM {
		return observer.KillerOOM
	}
	return int(k)
}

// clockOffset returns CLOCK_MONOTONIC now (bpf_ktime_get_ns()'s clock) and
// how far CLOCK_BOOTTIME is ahead of it. The two clocks are read apart, so
// the offset is taken from the closest of three pairs of reads, a boot-time
// read between two monotonic ones, against their midpoint: a reader
// descheduled between two reads (a loaded guest) would otherwise put every
// exit that late, after the start of the worker that replaced it.
func clockOffset() (now, offset uint64, err error) {
	best := int64(-1)
	for range 3 {
		var m1, b, m2 unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &m1); err != nil {
			return 0, 0, fmt.Errorf("read the monotonic clock: %w", err)
		}
		if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &b); err != nil {
			return 0, 0, fmt.Errorf("read the boot-time clock: %w", err)
		}
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &m2); err != nil {
			return 0, 0, fmt.Errorf("read the monotonic clock: %w", err)
		}
		if gap := m2.Nano() - m1.Nano(); best < 0 || gap < best {
			best, now = gap, uint64(m2.Nano())
			offset = uint64(b.Nano() - (m1.Nano()+m2.Nano())/2)
		}
	}
	return now, offset, nil
}
