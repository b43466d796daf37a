package ebpfkernel

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
)

// A TCP listener is known to the kernel side by its network namespace and
// port (struct listen_key): queue_waits and listen_ports are keyed so, and
// watched_ports has a bit for each port of their keys, so that the
// programs read a socket's namespace only when its port is one a watched
// pool listens on.

// listenKey is a TCP listener's key in queue_waits and listen_ports.
type listenKey = bpf.ObserverListenKey

// watchedPortWords is watched_ports' size: a bit per port, in words of
// the bitmaps' width (enum key_layout).
const watchedPortWords = 65536 / wordBits

// ownNetNS reads the daemon's network namespace: the inode number of
// /proc/self/ns/net, which a Socket's NetNS 0 stands for.
func ownNetNS() (uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("read the daemon's network namespace: %w: is /proc mounted?", err)
	}
	return uint32(st.Ino), nil
}

// listenKey is s's key, when s is a TCP listener: its port, and its
// namespace (the daemon's when s.NetNS is 0).
func (k *Kernel) listenKey(s observer.Socket) (listenKey, bool) {
	port, ok := tcpPort(s)
	netns := s.NetNS
	if netns == 0 {
		netns = k.netns
	}
	return listenKey{Netns: netns, Port: port}, ok
}

// markPorts writes watched_ports: a bit for the port of every key of
// queue_waits and listen_ports, and of also (keys about to be added: a
// bit is set before its key is, and cleared only after its last key
// went). Only the words that changed since the last write are written.
func (k *Kernel) markPorts(also ...listenKey) error {
	k.portsMu.Lock()
	defer k.portsMu.Unlock()
	words := make([]uint64, watchedPortWords)
	mark := func(key listenKey) { words[int(key.Port)/wordBits] |= 1 << (int(key.Port) % wordBits) }
	for _, key := range also {
		mark(key)
	}
	for _, name := range []string{bpf.ObserverMapQueueWaits, bpf.ObserverMapListenPorts} {
		if err := eachKey(k.maps[name], mark); err != nil {
			return fmt.Errorf("read the keys of %s: %w", name, err)
		}
	}
	if k.portWords == nil {
		if err := k.writeAllPorts(words); err != nil {
			return err
		}
	}
	for i, w := range words {
		if k.portWords != nil && k.portWords[i] == w {
			continue
		}
		if err := k.objs.WatchedPorts.Put(uint32(i), w); err != nil {
			return fmt.Errorf("watched_ports: ports %d to %d: %w", i*wordBits, (i+1)*wordBits-1, err)
		}
	}
	k.portWords = words
	return nil
}

// writeAllPorts writes every word of watched_ports in one call, and
// records them as written; where the kernel has no batch updates (before
// 5.6) it records nothing, and markPorts writes them one by one.
func (k *Kernel) writeAllPorts(words []uint64) error {
	keys := make([]uint32, len(words))
	for i := range keys {
		keys[i] = uint32(i)
	}
	_, err := k.objs.WatchedPorts.BatchUpdate(keys, words, nil)
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		return nil
	case err != nil:
		return fmt.Errorf("watched_ports: %w", err)
	}
	k.portWords = slices.Clone(words)
	return nil
}

// eachKey calls f with every key of m, a map keyed by listenKey.
func eachKey(m *ebpf.Map, f func(listenKey)) error {
	var key listenKey
	err := m.NextKey(nil, &key)
	for err == nil {
		f(key)
		err = m.NextKey(key, &key)
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}
