package ebpfkernel

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/bpf"
)

// CheckAccess performs, once, each kind of bpf(2) call the daemon makes
// while it runs (read, iterate and write the maps; read the programs'
// statistics; run the program that reads listeners), so a caller can
// find out whether they still work with fewer capabilities. From Linux 5.19 they need none on descriptors already held
// (seen on Debian 12's 6.1 with kernel.unprivileged_bpf_disabled=2);
// before, with kernel.unprivileged_bpf_disabled set, every bpf(2) call
// needs CAP_BPF.
func (k *Kernel) CheckAccess() error {
	var per []uint64
	if err := k.objs.Counters.Lookup(uint32(bpf.ObserverCounterCNT_CONN_TRACKED), &per); err != nil {
		return fmt.Errorf("read counters map: %w", err)
	}
	var (
		pid uint32
		w   bpf.ObserverWorker
	)
	it := k.objs.Workers.Iterate()
	it.Next(&pid, &w)
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate workers map: %w", err)
	}
	// pid 0 is never a worker: updating only an existing entry fails with
	// ENOENT where writing is allowed, EPERM where it is not.
	err := k.objs.Workers.Update(uint32(0), &w, ebpf.UpdateExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("write workers map: %w", err)
	}
	// Info reads every program's recursion misses, with or without
	// bpf_stats.
	if _, err := k.objs.OnFork.Stats(); err != nil {
		return fmt.Errorf("read program statistics: %w", err)
	}
	// ReadListeners runs a program, where this kernel can.
	if k.readErr == nil {
		k.readMu.Lock()
		defer k.readMu.Unlock()
		if _, err := k.runReadListeners(0); err != nil {
			return fmt.Errorf("run the program that reads listeners: %w", err)
		}
	}
	return nil
}
