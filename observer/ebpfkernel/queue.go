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
// accept, for the listeners (network namespace and port) the watched pools
// listen on. A Unix socket's connect is seen by no tracepoint, so a Unix
// listener's waits are not timed.

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
// A listener's entry is created once and kept while a pool listens on it,
// so a restarted daemon goes on from the sums the last one left.
func (k *Kernel) watchQueues(master int, sockets []observer.Socket) error {
	k.queueMu.Lock()
	defer k.queueMu.Unlock()
	var keys []listenKey
	for _, s := range sockets {
		if key, ok := k.listenKey(s); ok {
			keys = append(keys, key)
		} else if _, known := k.queueKeys[master]; !known {
			k.log.Info("listen queue wait not timed", "socket", s.Name, "proto", s.Proto, "master", master,
				"why", "no tracepoint sees a connect to a Unix socket")
		}
	}
	if k.queueKeys == nil {
		k.queueKeys = map[int][]listenKey{}
	}
	k.queueKeys[master] = keys
	if err := k.markPorts(keys...); err != nil {
		return err
	}
	var errs []error
	for _, s := range sockets {
		key, ok := k.listenKey(s)
		if !ok {
			continue
		}
		// What the listener dropped before count as no refusal of
		// ours (refused.go): the first CPU's copy carries them.
		first := make([]bpf.ObserverQueueWait, ebpf.MustPossibleCPU()) // a copy per CPU
		first[0].Strays = s.Drops
		err := k.objs.QueueWaits.Update(key, first, ebpf.UpdateNoExist)
		if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			errs = append(errs, fmt.Errorf("queue_waits: port %d of network namespace %d: %w", key.Port, key.Netns, err))
		}
	}
	return errors.Join(errs...)
}

// forgetQueues stops timing master's listeners, but for those another
// watched pool listens on.
func (k *Kernel) forgetQueues(master int) error {
	k.queueMu.Lock()
	defer k.queueMu.Unlock()
	if _, ok := k.queueKeys[master]; !ok {
		return nil
	}
	delete(k.queueKeys, master)
	return k.keepQueues()
}

// pruneQueues drops the entries of listeners no watched pool listens on:
// an earlier daemon's, once every pool has said its listeners.
func (k *Kernel) pruneQueues() error {
	k.queueMu.Lock()
	defer k.queueMu.Unlock()
	return k.keepQueues()
}

// keepQueues deletes every queue_waits entry whose listener is not in
// k.queueKeys.
func (k *Kernel) keepQueues() error {
	keep := map[listenKey]bool{}
	for keys := range maps.Values(k.queueKeys) {
		for _, key := range keys {
			keep[key] = true
		}
	}
	var stale []listenKey
	if err := eachKey(k.objs.QueueWaits, func(key listenKey) {
		if !keep[key] {
			stale = append(stale, key)
		}
	}); err != nil {
		return fmt.Errorf("read queue_waits: %w", err)
	}
	for _, key := range stale {
		delete(k.refusedSeen, key) // its entry, and its count, go
		if err := k.objs.QueueWaits.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("queue_waits: port %d of network namespace %d: %w", key.Port, key.Netns, err)
		}
	}
	return k.markPorts()
}

// QueueWait implements observer.QueueAware: the waits in s's accept queue
// of the connections watched workers took from it; nil for a socket not
// timed (a Unix one).
func (k *Kernel) QueueWait(s observer.Socket) *observer.Durations {
	key, ok := k.listenKey(s)
	if !ok {
		return nil
	}
	v, ok := k.queueCounts(key)
	if !ok {
		return nil
	}
	return &observer.Durations{
		Count: v.Count, SumUs: v.SumNs / 1000, BoundsUs: slices.Clone(queueWaitBoundsUs), Counts: v.Counts[:],
	}
}

// queueCounts is listener key's queue_waits entry, its CPUs' copies summed;
// false when it has none.
func (k *Kernel) queueCounts(key listenKey) (bpf.ObserverQueueWait, bool) {
	var perCPU []bpf.ObserverQueueWait
	var v bpf.ObserverQueueWait
	if err := k.objs.QueueWaits.Lookup(key, &perCPU); err != nil {
		return v, false
	}
	for _, c := range perCPU {
		v.Count, v.SumNs = v.Count+c.Count, v.SumNs+c.SumNs
		v.Refused, v.Strays = v.Refused+c.Refused, v.Strays+c.Strays
		for i, n := range c.Counts {
			v.Counts[i] += n
		}
	}
	return v, true
}
