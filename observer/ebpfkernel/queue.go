package ebpfkernel

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
)

// Time in the listen queue (see bpf/queue.c): the kernel times each TCP
// connection from its listener's accept queue to a watched worker's
// accept, for the ports the watched pools listen on. A Unix socket's
// connect is seen by no tracepoint, so a Unix listener's waits are not
// timed.

// queueWaitFirstUs and queueWaitBuckets are the programs' QWAIT_FIRST_US and
// QWAIT_BUCKETS: bucket i holds the waits of at most queueWaitFirstUs << i µs.
const (
	queueWaitFirstUs = uint64(bpf.ObserverQueueWaitBucketQWAIT_FIRST_US)
	queueWaitBuckets = len(bpf.ObserverQueueWait{}.Counts)
)

// queueWaitBoundsUs are the buckets' upper bounds, as a dump shows them.
var queueWaitBoundsUs = func() []uint64 {
	b := make([]uint64, queueWaitBuckets-1)
	for i := range b {
		b[i] = queueWaitFirstUs << i
	}
	return b
}()

// watchQueues makes the kernel time the waits on master's TCP listeners.
// A port's entry is created once and kept while a pool listens on it, so
// a restarted daemon goes on from the sums the last one left.
func (k *Kernel) watchQueues(master int, sockets []observer.Socket) error {
	k.queueMu.Lock()
	defer k.queueMu.Unlock()
	var ports []uint32
	for _, s := range sockets {
		if port, ok := tcpPort(s); ok {
			ports = append(ports, port)
		} else if _, known := k.queuePorts[master]; !known {
			k.log.Info("listen queue wait not timed", "socket", s.Name, "proto", s.Proto, "master", master,
				"why", "no tracepoint sees a connect to a Unix socket")
		}
	}
	if k.queuePorts == nil {
		k.queuePorts = map[int][]uint32{}
	}
	k.queuePorts[master] = ports
	var errs []error
	zero := make([]bpf.ObserverQueueWait, ebpf.MustPossibleCPU()) // a copy per CPU
	for _, p := range ports {
		err := k.objs.QueueWaits.Update(p, zero, ebpf.UpdateNoExist)
		if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			errs = append(errs, fmt.Errorf("queue_waits: port %d: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// forgetQueues stops timing master's listeners, but for the ports another
// watched pool listens on.
func (k *Kernel) forgetQueues(master int) error {
	k.queueMu.Lock()
	defer k.queueMu.Unlock()
	if _, ok := k.queuePorts[master]; !ok {
		return nil
	}
	delete(k.queuePorts, master)
	return k.keepQueues()
}

// pruneQueues drops the entries of ports no watched pool listens on: an
// earlier daemon's, once every pool has said its listeners.
func (k *Kernel) pruneQueues() error {
	k.queueMu.Lock()
	defer k.queueMu.Unlock()
	return k.keepQueues()
}

// keepQueues deletes every queue_waits entry whose port is not in
// k.queuePorts.
func (k *Kernel) keepQueues() error {
	keep := map[uint32]bool{}
	for ports := range maps.Values(k.queuePorts) {
		for _, p := range ports {
			keep[p] = true
		}
	}
	var (
		port  uint32
		stale []uint32
	)
	var perCPU []bpf.ObserverQueueWait
	it := k.objs.QueueWaits.Iterate()
	for it.Next(&port, &perCPU) {
		if !keep[port] {
			stale = append(stale, port)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read queue_waits: %w", err)
	}
	for _, p := range stale {
		if err := k.objs.QueueWaits.Delete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("queue_waits: port %d: %w", p, err)
		}
	}
	return nil
}

// QueueWait implements observer.QueueAware: the waits in s's accept queue
// of the connections watched workers took from it; nil for a socket not
// timed (a Unix one).
func (k *Kernel) QueueWait(s observer.Socket) *observer.Durations {
	port, ok := tcpPort(s)
	if !ok {
		return nil
	}
	var perCPU []bpf.ObserverQueueWait
	if err := k.objs.QueueWaits.Lookup(port, &perCPU); err != nil {
		return nil
	}
	var v bpf.ObserverQueueWait
	for _, c := range perCPU {
		v.Count, v.SumNs = v.Count+c.Count, v.SumNs+c.SumNs
		for i, n := range c.Counts {
			v.Counts[i] += n
		}
	}
	return &observer.Durations{
		Count: v.Count, SumUs: v.SumNs / 1000, BoundsUs: slices.Clone(queueWaitBoundsUs), Counts: v.Counts[:],
	}
}
