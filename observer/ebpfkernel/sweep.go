package ebpfkernel

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/bpf"
)

// Sweep removes connections, and fd entries, whose owner is no longer a live
// worker (their close was never seen: the process exited with them open).
func (k *Kernel) Sweep() error {
	live, err := k.liveWorkers()
	if err != nil {
		return err
	}
	if err := sweepMap(k.objs.Conns, func(sk uint64, c bpf.ObserverConn) bool { return !live[c.Owner] }); err != nil {
		return fmt.Errorf("sweep connections map: %w", err)
	}
	if err := sweepMap(k.objs.Fds, func(key, sk uint64) bool { return !live[uint32(key>>bpf.ObserverKeyLayoutFD_KEY_FD_BITS)] }); err != nil {
		return fmt.Errorf("sweep fds map: %w", err)
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

// sweepMap deletes the entries of m for which stale is true, read in
// batches where the kernel can (eachEntry).
func sweepMap[K, V any](m *ebpf.Map, stale func(K, V) bool) error {
	var doomed []K
	err := eachEntry(m, func(k K, v V) {
		if stale(k, v) {
			doomed = append(doomed, k)
		}
	})
	if err != nil {
		return err
	}
	for _, key := range doomed {
		m.Delete(key) // gone already: closed meanwhile
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
