package ebpfkernel

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
)

// The sock hook set sees every send and receive from the sock tracepoints
// and a TCP connection's close from inet_sock_set_state, none of them a
// syscall tracepoint. Only accept, and the close of a Unix socket, have no
// other hook: attaching their syscall tracepoints would put every thread
// of the host on the kernel's slow syscall path (make bench measures it).
// So while every watched pool listens on TCP only, they stay detached: the
// pools' listeners (network namespace and port) are in listen_ports, and a
// connection is adopted at its worker's first send, receive or close on
// one of them. While any pool
// listens on a Unix socket, or its listeners are unknown, they are
// attached and listen_ports is empty.
//
// The fentry set adopts TCP connections the same way, and Unix ones by
// their listener's address (the scan's answer): it never hooks a syscall,
// and listen_ports always holds the pools' listeners.

// startHooks is what to attach at load. The sock set starts as its pins
// left it: TCP-only (accept and close unhooked, listen_ports as pinned)
// when the last daemon left it so, so a restart changes nothing in the
// kernel; else with accept and close hooked and no port adopted, until the
// pools say what they listen on.
func (k *Kernel) startHooks() ([]hook, error) {
	all := k.hookList()
	if k.hooks == HooksFentry && k.pins != nil {
		return all, nil // listen_ports as the last daemon left it
	}
	if k.hooks == HooksSock && k.pins != nil {
		pinned, err := k.pins.pinnedLinks()
		if err != nil {
			return nil, err
		}
		conn := k.connPins()
		connPinned := slices.ContainsFunc(pinned, func(name string) bool { return conn[name] })
		if !connPinned && slices.Contains(pinned, tcpStatePin) {
			k.connHooksOff = true
			return k.tcpOnly(all), nil
		}
	}
	return all, k.syncPorts(nil)
}

// tcpOnly is hooks without accept's and close's syscall tracepoints.
func (k *Kernel) tcpOnly(hooks []hook) []hook {
	conn := k.connPins()
	return slices.DeleteFunc(hooks, func(h hook) bool { return conn[h.pin] })
}

// connPins are the pin names of accept's and close's links.
func (k *Kernel) connPins() map[string]bool {
	pins := map[string]bool{}
	for _, h := range k.connHooks() {
		pins[h.pin] = true
	}
	return pins
}

// tcpStatePin is the pinned link of a TCP state program.
var tcpStatePin = linkPinPrefix + bpf.ObserverProgOnTcpDone + "_inet_sock_set_state"

// listeners is one pool's listening sockets as the kernel side needs them.
type listeners struct {
	keys  []listenKey // TCP listeners
	other bool        // a listener that is not TCP, or none known
}

// Listening implements observer.ListenerAware: it records master's
// listening sockets, and attaches or detaches accept's and close's syscall
// tracepoints as the watched pools now need.
func (k *Kernel) Listening(master int, sockets []observer.Socket) error {
	if len(sockets) > 0 {
		if err := k.watchQueues(master, sockets); err != nil {
			return err
		}
	}
	if k.hooks != HooksSock && k.hooks != HooksFentry {
		return nil // the syscall and raw sets see accept and close anyway
	}
	k.listenMu.Lock()
	defer k.listenMu.Unlock()
	if _, known := k.listening[master]; known && len(sockets) == 0 {
		// Read in the middle of a reload (the worker asked about was
		// exiting, say): not knowing now is not having none.
		return nil
	}
	l := listeners{other: len(sockets) == 0}
	for _, s := range sockets {
		key, ok := k.listenKey(s)
		if !ok {
			l.other = true
			continue
		}
		l.keys = append(l.keys, key)
	}
	if k.listening == nil {
		k.listening = map[int]listeners{}
	}
	// A listener is its newest master's: a pool's new master (a restart
	// followed through its pidfile) takes over the old one's.
	for m, old := range k.listening {
		old.keys = slices.DeleteFunc(old.keys, func(key listenKey) bool { return slices.Contains(l.keys, key) })
		k.listening[m] = old
	}
	k.listening[master] = l
	delete(k.unheard, master)
	return k.applyListening()
}

// unheardOf notes a master watched whose listeners are not said yet: until
// they are, accept and close stay hooked where they are.
func (k *Kernel) unheardOf(master int) {
	k.listenMu.Lock()
	defer k.listenMu.Unlock()
	if _, said := k.listening[master]; said {
		return
	}
	if k.unheard == nil {
		k.unheard = map[int]bool{}
	}
	k.unheard[master] = true
}

// FixHooks is the last moment the attachments may change: the daemon drops
// the privileges that attaching and detaching take right after. With a
// pool still waiting for its master (everyPoolFound false) accept and
// close are hooked, since what it will listen on is unknown. From then on
// Listening only keeps listen_ports up to date, and says so once when a
// pool would need accept and close hooked and they are not.
func (k *Kernel) FixHooks(everyPoolFound bool) error {
	if everyPoolFound {
		if err := k.pruneQueues(); err != nil {
			return err
		}
	}
	if k.hooks != HooksSock {
		return nil
	}
	k.listenMu.Lock()
	defer k.listenMu.Unlock()
	if !everyPoolFound {
		if err := k.hookConns(true); err != nil {
			return err
		}
		if err := k.syncPorts(nil); err != nil {
			return err
		}
	}
	k.hooksFixed = true
	return nil
}

// forgetListening drops master's listeners, when it is no longer watched.
func (k *Kernel) forgetListening(master int) error {
	if err := k.forgetQueues(master); err != nil {
		return err
	}
	if err := k.forgetScan(master); err != nil {
		return err
	}
	k.listenMu.Lock()
	defer k.listenMu.Unlock()
	_, said := k.listening[master]
	if !said && !k.unheard[master] {
		return nil
	}
	delete(k.listening, master)
	delete(k.unheard, master)
	return k.applyListening()
}

// tcpPort is a TCP listener's port, from its name.
func tcpPort(s observer.Socket) (uint32, bool) {
	if s.Proto != "tcp" {
		return 0, false
	}
	i := strings.LastIndexByte(s.Name, ':')
	port, err := strconv.ParseUint(s.Name[i+1:], 10, 16)
	return uint32(port), err == nil && i >= 0
}

// applyListening puts the kernel side in the state k.listening needs.
// Accept and close are hooked before listen_ports is emptied, and
// unhooked before it is filled, so no connection is tracked both ways.
func (k *Kernel) applyListening() error {
	ports := map[listenKey]uint32{}
	other := false // a pool on a Unix socket, or that said none
	for master, l := range k.listening {
		other = other || l.other
		for _, key := range l.keys {
			ports[key] = uint32(master)
		}
	}
	// A pool not heard from (the daemon could not read its listeners)
	// needs accept hooked too, until the kernel's answer says; one whose
	// master has exited (replaced by a restart) no longer does.
	for m := range k.unheard {
		if _, err := os.Stat("/proc/" + strconv.Itoa(m)); errors.Is(err, os.ErrNotExist) {
			delete(k.unheard, m)
		}
	}
	if k.hooks == HooksFentry {
		return k.syncPortsWithScanned(ports)
	}
	need := other || len(k.listening) == 0 || len(k.unheard) > 0
	if k.hooksFixed {
		return k.fixedListening(need, other, ports)
	}
	if need {
		if err := k.hookConns(true); err != nil {
			return err
		}
		ports = nil
	} else if err := k.hookConns(false); err != nil {
		return err
	}
	return k.syncPorts(ports)
}

// fixedListening is applyListening once the attachments are fixed
// (attaching takes privileges the daemon no longer holds): accept and
// close may still be unhooked, once every pool has said it listens on TCP
// only (need false), and then only the ports change. A pool not heard from
// by then is adopted by the kernel from its answer (ScanListeners); only
// one on a Unix socket (other) is missed.
func (k *Kernel) fixedListening(need, other bool, ports map[listenKey]uint32) error {
	if !k.connHooksOff {
		if need {
			return nil // every connection is tracked from accept
		}
		if err := k.hookConns(false); err != nil {
			return err
		}
	}
	if other && !k.warnedFixed {
		k.warnedFixed = true
		k.log.Warn("a pool found after start-up listens on a Unix socket (or says it listens on nothing): its connections are not counted until the daemon restarts, since accept and close are hooked only at start-up")
	}
	return k.syncPortsWithScanned(ports)
}

// syncPortsWithScanned makes listen_ports hold ports and what the kernel
// adopted from its answers (ScanListeners), which stays until the pools
// say their listeners themselves.
func (k *Kernel) syncPortsWithScanned(ports map[listenKey]uint32) error {
	scanned, err := k.scannedPorts()
	if err != nil {
		return err
	}
	for key, master := range scanned {
		if _, said := ports[key]; !said {
			ports[key] = master
		}
	}
	return k.syncPorts(ports)
}

// hookConns attaches (on) or detaches accept's and close's syscall
// tracepoints, pinning or unpinning their links.
func (k *Kernel) hookConns(on bool) error {
	if k.connHooksOff == !on {
		return nil
	}
	for _, h := range k.connHooks() {
		var err error
		if on {
			err = k.attachHook(h)
		} else {
			err = k.detachHook(h)
		}
		if err != nil {
			return err
		}
	}
	k.connHooksOff = !on
	k.log.Info("accept and close syscall tracepoints", "attached", on, "why", map[bool]string{
		true:  "a watched pool listens on a Unix socket, or its listeners are unknown",
		false: "every watched pool listens on TCP only: its connections are followed from the sock and TCP state tracepoints",
	}[on])
	return nil
}

func (k *Kernel) attachHook(h hook) error {
	if k.linkOf[h.pin] != nil {
		return nil
	}
	l, err := h.attach(*h.prog)
	if err != nil {
		return err
	}
	k.addLink(h, l)
	if k.pins == nil {
		return nil
	}
	if err := l.Pin(k.pins.file(h.pin)); err != nil && !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("pin link %s: %w", k.pins.file(h.pin), err)
	}
	return nil
}

func (k *Kernel) detachHook(h hook) error {
	l := k.linkOf[h.pin]
	if l == nil {
		return nil
	}
	if k.pins != nil {
		if err := os.Remove(k.pins.file(h.pin)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("unpin link %s: %w", k.pins.file(h.pin), err)
		}
	}
	delete(k.linkOf, h.pin)
	k.links = slices.DeleteFunc(k.links, func(x link.Link) bool { return x == l })
	return l.Close()
}

// syncPorts makes listen_ports hold exactly want, each port's bit in
// watched_ports set before its first key is added and cleared after its
// last is deleted.
func (k *Kernel) syncPorts(want map[listenKey]uint32) error {
	m := k.objs.ListenPorts
	var (
		key    listenKey
		master uint32
		stale  []listenKey
	)
	it := m.Iterate()
	for it.Next(&key, &master) {
		if w, ok := want[key]; !ok || w != master {
			stale = append(stale, key)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read listen_ports: %w", err)
	}
	if err := k.markPorts(slices.Collect(maps.Keys(want))...); err != nil {
		return err
	}
	for _, key := range stale {
		m.Delete(key)
	}
	for key, master := range want {
		if err := m.Put(key, master); err != nil {
			return fmt.Errorf("listen_ports: port %d of network namespace %d: %w", key.Port, key.Netns, err)
		}
	}
	return k.markPorts()
}
