package ebpfkernel

import (
	"fmt"

	"github.com/workerstats/workerstats/bpf"
)

// Sweep removes connections, and fd entries, whose owner is no longer a live
// worker (their close was never seen: the process exited with them open),
// and works out how many open connections the LRU map evicted, which the
// kernel cannot count itself: evicted = tracked - closed - swept - present.
func (k *Kernel) Sweep() error {
	live, err := k.liveWorkers()
	if err != nil {
		return err
	}
	present, removed, err := k.sweepConns(live)
	if err != nil {
		return err
	}
	if err := k.sweepFds(live); err != nil {
		return err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.swept += removed
	if k.sweptMap != nil && removed > 0 {
		if err := k.sweptMap.Put(uint32(0), k.swept); err != nil {
			k.log.Warn("cannot record swept connections in the pinned map", "error", err)
		}
	}
	tracked := k.counter(bpf.ObserverCounterCNT_CONN_TRACKED)
	closed := k.counter(bpf.ObserverCounterCNT_CONN_CLOSED) + k.counter(bpf.ObserverCounterCNT_CONN_STALE)
	if gone := closed + k.swept + present; tracked > gone {
		k.evicted = tracked - gone
	}
	return nil
}

// liveWorkers returns the tgids of the workers alive now.
func (k *Kernel) liveWorkers() (map[uint32]bool, error) {
	var (
		pid uint32
		w   bpf.ObserverWorker
	)
	live := map[uint32]bool{}
	it := k.objs.Workers.Iterate()
	for it.Next(&pid, &w) {
		live[pid] = w.Role == roleWorker && w.ExitNs == 0
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate workers map: %w", err)
	}
	return live, nil
}

// sweepConns removes the connections of owners not live, and returns how
// many connections are left and how many went.
func (k *Kernel) sweepConns(live map[uint32]bool) (present, removed uint64, err error) {
	var (
		sk    uint64
		c     bpf.ObserverConn
		stale []uint64
	)
	it := k.objs.Conns.Iterate()
	for it.Next(&sk, &c) {
		if live[c.Owner] {
			present++
		} else {
			stale = append(stale, sk)
		}
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("iterate connections map: %w", err)
	}
	for _, key := range stale {
		if k.objs.Conns.Delete(key) == nil {
			removed++
		} else {
			present++
		}
	}
	return present, removed, nil
}

// sweepFds drops the fd entries, keyed tgid<<32|fd, of processes not live.
func (k *Kernel) sweepFds(live map[uint32]bool) error {
	var (
		key, sk uint64
		stale   []uint64
	)
	it := k.objs.Fds.Iterate()
	for it.Next(&key, &sk) {
		if !live[uint32(key>>32)] {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate fds map: %w", err)
	}
	for _, key := range stale {
		k.objs.Fds.Delete(key)
	}
	return nil
}

// counter sums one per-CPU counter.
func (k *Kernel) counter(c bpf.ObserverCounter) uint64 {
	var per []uint64
	if err := k.objs.Counters.Lookup(uint32(c), &per); err != nil {
		return 0
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum
}
