package ebpfkernel

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
)

// The listeners a scan found (scan.go), read in the kernel: the daemon
// runs read_listeners (see bpf/listeners.c), which is never attached,
// with BPF_PROG_TEST_RUN. It reads each socket the scan recorded as it is
// now, in whatever network namespace it is, where a sock_diag dump sees
// only the daemon's own, and it needs no capability on a descriptor the
// daemon holds (once the kernel has run one while the daemon was
// privileged: probed at load).

// probeListenerReads runs read_listeners once, at load, while the daemon
// is privileged: where the kernel cannot run it (raw tracepoint test runs
// came in Linux 5.10), ReadListeners says why from then on.
func (k *Kernel) probeListenerReads() {
	k.readMu.Lock()
	defer k.readMu.Unlock()
	if _, err := k.runReadListeners(0); err != nil {
		k.readErr = fmt.Errorf("%w: the kernel does not run the program that reads listeners on demand (BPF_PROG_TEST_RUN of a raw tracepoint program: Linux 5.10 and newer): %w",
			errors.ErrUnsupported, err)
		k.log.Info("listening sockets are read with sock_diag only, in the daemon's network namespace", "why", k.readErr)
	}
}

// runReadListeners runs read_listeners for master: whether a scan has
// answered for it. k.readMu is held.
func (k *Kernel) runReadListeners(master int) (bool, error) {
	ret, err := k.objs.ReadListeners.Run(&ebpf.RunOptions{Context: []uint64{uint64(master)}})
	return ret == 1, err
}

// ReadListeners implements observer.ListenerReader: the listening sockets
// the kernel's answer to ScanListeners found for master, as they are now,
// each with its network namespace; those closed since, or no longer
// listening, are left out. ok is false until an answer has come.
func (k *Kernel) ReadListeners(master int) ([]observer.Socket, bool, error) {
	if k.readErr != nil {
		return nil, false, k.readErr
	}
	k.readMu.Lock()
	defer k.readMu.Unlock()
	answered, err := k.runReadListeners(master)
	if err != nil {
		return nil, false, fmt.Errorf("read pid %d's listeners in the kernel: %w", master, err)
	}
	if !answered {
		return nil, false, nil
	}
	var out bpf.ObserverListenersRead
	if err := k.objs.ListenersRead.Lookup(uint32(0), &out); err != nil {
		return nil, false, fmt.Errorf("read listeners_read: %w", err)
	}
	if out.Master != uint32(master) {
		return nil, false, fmt.Errorf("listeners_read holds pid %d's listeners, not pid %d's: another process runs read_listeners on these maps", out.Master, master)
	}
	return listenerSockets(out.Socks[:min(int(out.Count), len(out.Socks))]), true, nil
}

// listenerSockets are the listeners read, as ListeningByInode gives them:
// TCP ones first, then Unix ones, each by name; each socket once, however
// many fds held it; the gone left out.
func listenerSockets(read []bpf.ObserverListenerRead) []observer.Socket {
	seen := map[uint64]bool{}
	var tcp, unixSocks []observer.Socket
	for _, r := range read {
		if seen[r.Inode] {
			continue
		}
		seen[r.Inode] = true
		switch bpf.ObserverListenerKind(r.Kind) {
		case bpf.ObserverListenerKindLISTENER_TCP:
			tcp = append(tcp, tcpListener(r))
		case bpf.ObserverListenerKindLISTENER_UNIX:
			unixSocks = append(unixSocks, observer.Socket{
				Name:  observer.UnixSocketName(string(r.Name[:min(int(r.NameLen), len(r.Name))])),
				Proto: "unix", Queue: uint64(r.Queue), MaxQueue: uint64(r.MaxQueue), NetNS: r.Netns,
			})
		}
	}
	byName := func(a, b observer.Socket) int {
		return cmp.Or(strings.Compare(a.Name, b.Name), cmp.Compare(a.NetNS, b.NetNS))
	}
	slices.SortFunc(tcp, byName)
	slices.SortFunc(unixSocks, byName)
	return append(append(make([]observer.Socket, 0, len(tcp)+len(unixSocks)), tcp...), unixSocks...)
}

// tcpListener is a TCP listener read.
func tcpListener(r bpf.ObserverListenerRead) observer.Socket {
	ip := r.Addr[:]
	if r.Family == unix.AF_INET {
		ip = r.Addr[:4]
	}
	return observer.Socket{
		Name:  observer.TCPSocketName(uint8(r.Family), ip, uint16(r.Port)),
		Proto: "tcp", Queue: uint64(r.Queue), MaxQueue: uint64(r.MaxQueue), Drops: uint64(r.Drops), NetNS: r.Netns,
	}
}
