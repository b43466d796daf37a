package ebpfkernel

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/bpf"
)

// Which listening sockets a pool serves on, once the daemon may no longer
// read other users' fd tables (see listener_scans in the C file): the
// daemon asks, and the next connection one of the pool's workers takes
// answers with the listening sockets that worker holds, read from its own
// file table in the kernel.

// ScanListeners implements observer.ListenerScanner: it asks which
// listening sockets master's workers hold. An earlier answer is kept until
// the new one comes.
func (k *Kernel) ScanListeners(master int) error {
	k.scanMu.Lock()
	defer k.scanMu.Unlock()
	var s bpf.ObserverListenerScan
	if err := k.objs.ListenerScans.Lookup(uint32(master), &s); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("read listener_scans: %w", err)
	}
	s.Want = 1
	s.Adopt = 0
	if k.adoptsPorts() {
		s.Adopt = 1
	}
	if err := k.objs.ListenerScans.Put(uint32(master), &s); err != nil {
		return fmt.Errorf("ask which listeners pid %d's workers hold: %w", master, err)
	}
	return k.objs.ScansAsked.Put(uint32(0), uint32(1))
}

// adoptsPorts says whether the hook set follows connections from
// listen_ports now (the fentry set always, the sock set with accept
// unhooked): the ports a scan finds are then adopted by the kernel at
// once, before the daemon reads the answer.
func (k *Kernel) adoptsPorts() bool {
	k.listenMu.Lock()
	defer k.listenMu.Unlock()
	return k.hooks == HooksFentry || k.hooks == HooksSock && k.connHooksOff
}

// ScannedListeners implements observer.ListenerScanner: the inodes of the
// listening sockets the answer to master's question found, and whether it
// has come.
func (k *Kernel) ScannedListeners(master int) ([]uint64, bool, error) {
	k.scanMu.Lock()
	defer k.scanMu.Unlock()
	var s bpf.ObserverListenerScan
	err := k.objs.ListenerScans.Lookup(uint32(master), &s)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read listener_scans: %w", err)
	}
	if s.Want != 0 {
		return nil, false, nil
	}
	if err := k.settleAsked(); err != nil {
		return nil, false, err
	}
	// A socket held under two fds is found twice.
	inodes := slices.Clone(s.Inodes[:min(int(s.Found), len(s.Inodes))])
	slices.Sort(inodes)
	return slices.Compact(inodes), true, nil
}

// settleAsked clears scans_asked when no question waits, so accepts go
// back to reading nothing but it.
func (k *Kernel) settleAsked() error {
	var (
		master uint32
		s      bpf.ObserverListenerScan
	)
	it := k.objs.ListenerScans.Iterate()
	for it.Next(&master, &s) {
		if s.Want != 0 {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate listener_scans: %w", err)
	}
	return k.objs.ScansAsked.Put(uint32(0), uint32(0))
}

// scannedPorts are the TCP listeners the kernel adopted from answers
// (listener to master), which listen_ports keeps until the daemon has read
// them.
func (k *Kernel) scannedPorts() (map[listenKey]uint32, error) {
	var (
		master uint32
		s      bpf.ObserverListenerScan
	)
	ports := map[listenKey]uint32{}
	it := k.objs.ListenerScans.Iterate()
	for it.Next(&master, &s) {
		if s.Adopt == 0 || s.Want != 0 {
			continue
		}
		for i, p := range s.Ports[:min(int(s.Found), len(s.Ports))] {
			if p != 0 {
				ports[listenKey{Netns: s.Netns[i], Port: p}] = master
			}
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate listener_scans: %w", err)
	}
	return ports, nil
}

// forgetScan drops master's question and answer.
func (k *Kernel) forgetScan(master int) error {
	k.scanMu.Lock()
	defer k.scanMu.Unlock()
	err := k.objs.ListenerScans.Delete(uint32(master))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("drop pid %d from listener_scans: %w", master, err)
	}
	return k.settleAsked()
}
