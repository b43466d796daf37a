package observer

import (
	"fmt"
	"sync"
)

// ProcfsKernel is the observer for hosts where eBPF cannot load. It
// implements Kernel from procfs and sock_diag alone: the master's children
// are the workers, a worker that is gone is reported exited once, and a
// worker holding an accepted connection is in a request. Request and byte
// counters cannot be known this way and stay 0.
type ProcfsKernel struct {
	Proc Procfs
	// Reason says why procfs mode is in use; it is shown in the dump.
	Reason string

	mu     sync.Mutex
	master Proc
	live   map[int]Proc // workers seen at the last read
	gone   map[int]Proc // exited workers not yet forgotten
}

// Watch implements Kernel.
func (k *ProcfsKernel) Watch(master Proc, workers []Proc) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.master = master
	k.live, k.gone = map[int]Proc{}, map[int]Proc{}
	for _, w := range workers {
		k.live[w.PID] = w
	}
	return nil
}

// Workers implements Kernel.
func (k *ProcfsKernel) Workers() ([]Counters, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.master.PID == 0 {
		return nil, nil // no master watched yet
	}
	kids, err := k.Proc.Children(k.master.PID)
	if err != nil {
		return nil, fmt.Errorf("workers of pid %d: %w", k.master.PID, err)
	}
	now := map[int]Proc{}
	pids := make([]int, 0, len(kids))
	for _, c := range kids {
		now[c.PID] = c
		pids = append(pids, c.PID)
	}
	for pid, w := range k.live {
		if c, ok := now[pid]; !ok || c != w {
			k.gone[pid] = w
		}
	}
	k.live = now
	busy := map[int]int{}
	if len(pids) > 0 {
		socks, err := k.Proc.ListeningSockets(k.master.PID, pids[0])
		if err == nil {
			busy, _ = k.Proc.AcceptedConnections(pids, socks)
		}
	}
	out := make([]Counters, 0, len(now)+len(k.gone))
	for _, w := range k.gone {
		out = append(out, Counters{PID: w.PID, Master: k.master.PID, Start: TicksToNs(w.StartTicks), Exited: true})
	}
	for _, w := range kids {
		out = append(out, Counters{PID: w.PID, Master: k.master.PID, Start: TicksToNs(w.StartTicks), InProgress: int64(busy[w.PID])})
	}
	return out, nil
}

// Remember implements Kernel: procfs mode keeps nothing across restarts, so
// it only forgets the process.
func (k *ProcfsKernel) Remember(_ int, h Counters) error { return k.Forget(h.PID) }

// Forget implements Kernel.
func (k *ProcfsKernel) Forget(pid int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.gone, pid)
	return nil
}

// Info implements Kernel.
func (k *ProcfsKernel) Info() ObserverInfo {
	return ObserverInfo{Mode: "procfs", Reason: k.Reason, Dropped: map[string]uint64{}}
}
