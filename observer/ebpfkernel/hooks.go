package ebpfkernel

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sync/errgroup"

	"github.com/workerstats/workerstats/bpf"
)

// Hook sets: where the kernel side learns of bytes moved.
const (
	HooksAuto = "auto"
	// HooksFentry is fexit and fentry programs on the socket layer's
	// send, receive, accept and release functions (any kernel whose BPF
	// trampolines load): no syscall hook, so nothing else on the host
	// pays.
	HooksFentry  = "fentry"
	HooksSock    = "sock"    // the sock_{send,recv}_length raw tracepoints, Linux >= 6.3
	HooksSyscall = "syscall" // per-syscall enter/exit tracepoints, any kernel with BTF
	// HooksRaw is the raw sys_exit tracepoint, and sys_enter for close
	// (x86-64): what the syscall hooks do, reading a syscall's arguments
	// from its saved registers at its exit, from links that can be pinned
	// before Linux 5.15, where tracepoint attachments cannot.
	HooksRaw = "raw"
)

// ErrNoSockTracepoints is returned by Load when the sock hooks are asked
// for on a kernel that lacks their tracepoints.
var ErrNoSockTracepoints = errors.New("the sock hooks need the sock:sock_send_length and sock:sock_recv_length tracepoints (Linux 6.3 or newer), which this kernel lacks")

// ErrNoFentry is returned by Load when the fentry hooks are asked for on
// a kernel where BPF trampolines do not load or attach.
var ErrNoFentry = errors.New("the fentry hooks need BPF trampolines (fentry/fexit programs), which this kernel refuses")

// CheckHooks returns an error when s names no hook set.
func CheckHooks(s string) error {
	switch s {
	case "", HooksAuto, HooksFentry, HooksSock, HooksSyscall, HooksRaw:
		return nil
	}
	return fmt.Errorf("%q is not one of %s, %s, %s, %s, %s", s, HooksAuto, HooksFentry, HooksSock, HooksSyscall, HooksRaw)
}

// resolveHooks probes the kernel and picks the hook set for want; it
// returns what it probed too.
func resolveHooks(want string, log *slog.Logger) (string, features, error) {
	if err := CheckHooks(want); err != nil {
		return "", features{}, err
	}
	k, err := probeKernel()
	if err != nil {
		return "", features{}, err
	}
	hooks, err := chooseHooks(want, k)
	if err != nil {
		return "", features{}, err
	}
	if want == HooksAuto && hooks != HooksFentry {
		log.Info("the fentry hooks do not load here: using tracepoints instead", "hooks", hooks, "why", k.fentry)
	}
	if hooks == HooksSock && !k.sendfileSeen {
		log.Warn("on this kernel sendfile(2) bypasses sock_sendmsg, so the sock hooks miss the bytes a server sends with it (nginx's static files): prefer the raw hooks, or auto")
	}
	return hooks, k, nil
}

// chooseHooks resolves HooksAuto against what the kernel has. fentry
// first wherever BPF trampolines load: it hooks no syscall, so no other
// process of the host pays (make bench-vm measures it), and its links pin.
// Then the sock tracepoints, where sendfile's bytes pass them and their
// links pin. Else raw over syscall on every kernel: one program per
// syscall exit and no map between enter and exit cost less, for a watched
// worker's request and for every other process, and their links pin from
// 5.8.
func chooseHooks(want string, k features) (string, error) {
	switch want {
	case HooksFentry:
		if k.fentry != nil {
			return "", fmt.Errorf("%w (%w)", ErrNoFentry, k.fentry)
		}
		return HooksFentry, nil
	case HooksSock:
		if !k.sock {
			return "", ErrNoSockTracepoints
		}
		return HooksSock, nil
	case HooksSyscall, HooksRaw:
		return want, nil
	}
	switch {
	case k.fentry == nil:
		return HooksFentry, nil
	case k.sock && k.sendfileSeen && k.tracepointLinks:
		return HooksSock, nil
	}
	return HooksRaw, nil
}

var (
	recvSyscalls = []string{"read", "readv", "recvfrom", "recvmsg"}
	sendSyscalls = []string{"write", "writev", "sendto", "sendmsg", "sendfile64"}
)

// hook is one attachment of a program.
type hook struct {
	name string // the program's name in the C file
	pin  string // file name of its pinned link
	// prog points at the program's field in the loaded objects; when a
	// pinned link running the same program is kept, the field is set to
	// that running program so its statistics are the ones reported.
	prog   **ebpf.Program
	attach func(*ebpf.Program) (link.Link, error)
}

// rawTracepointHook attaches prog, named progName, to a raw tracepoint.
func rawTracepointHook(name, progName string, prog **ebpf.Program) hook {
	return hook{name: progName, pin: linkPinPrefix + progName + "_" + name, prog: prog, attach: func(p *ebpf.Program) (link.Link, error) {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: name, Program: p})
		if err != nil {
			return nil, fmt.Errorf("attach to raw tracepoint %s: %w", name, err)
		}
		return l, nil
	}}
}

// tracepointHook attaches prog, named progName, to a tracepoint.
func tracepointHook(group, name, progName string, prog **ebpf.Program) hook {
	return hook{name: progName, pin: linkPinPrefix + progName + "_" + name, prog: prog, attach: func(p *ebpf.Program) (link.Link, error) {
		l, err := link.Tracepoint(group, name, p, nil)
		if err != nil {
			return nil, fmt.Errorf("attach to tracepoint %s:%s: %w", group, name, err)
		}
		return l, nil
	}}
}

// tracingHook attaches prog, named progName, an fentry or fexit program,
// to the kernel function it was loaded for, fn.
func tracingHook(fn, progName string, prog **ebpf.Program) hook {
	return hook{name: progName, pin: linkPinPrefix + progName + "_" + fn, prog: prog, attach: func(p *ebpf.Program) (link.Link, error) {
		l, err := link.AttachTracing(link.TracingOptions{Program: p})
		if err != nil {
			return nil, fmt.Errorf("attach to kernel function %s: %w", fn, err)
		}
		return l, nil
	}}
}

// syscallHooks attaches prog to the enter or exit tracepoint of each syscall.
func syscallHooks(hooks []hook, edge string, syscalls []string, progName string, prog **ebpf.Program) []hook {
	for _, sc := range syscalls {
		hooks = append(hooks, tracepointHook("syscalls", "sys_"+edge+"_"+sc, progName, prog))
	}
	return hooks
}

// hookList is every attachment of the hook set in use.
func (k *Kernel) hookList() []hook {
	p := &k.objs.ObserverPrograms
	hooks := []hook{
		rawTracepointHook("sched_process_fork", bpf.ObserverProgOnFork, &p.OnFork),
		rawTracepointHook("sched_process_exit", bpf.ObserverProgOnExit, &p.OnExit),
		rawTracepointHook("signal_generate", bpf.ObserverProgOnSignal, &p.OnSignal),
		rawTracepointHook("mark_victim", bpf.ObserverProgOnOomVictim, &p.OnOomVictim),
		rawTracepointHook("inet_sock_set_state", bpf.ObserverProgOnTcpQueued, &p.OnTcpQueued),
		rawTracepointHook("inet_sock_set_state", bpf.ObserverProgOnTcpQueuedTwin, &p.OnTcpQueuedTwin),
	}
	if k.listenerDrops {
		hooks = append(hooks, rawTracepointHook("kfree_skb", bpf.ObserverProgOnListenerDrop, &p.OnListenerDrop))
	}
	if k.hooks == HooksRaw {
		return append(hooks,
			rawTracepointHook("sys_enter", bpf.ObserverProgOnRawSysEnter, &p.OnRawSysEnter),
			rawTracepointHook("sys_exit", bpf.ObserverProgOnRawSysExit, &p.OnRawSysExit))
	}
	if k.hooks == HooksFentry {
		return append(hooks, k.fentryHooks()...)
	}
	hooks = append(hooks, k.connHooks()...)
	if k.hooks == HooksSock {
		return append(hooks,
			rawTracepointHook("sock_recv_length", bpf.ObserverProgOnSockRecv, &p.OnSockRecv),
			rawTracepointHook("sock_send_length", bpf.ObserverProgOnSockSend, &p.OnSockSend),
			rawTracepointHook("inet_sock_set_state", bpf.ObserverProgOnTcpClose, &p.OnTcpClose),
			rawTracepointHook("inet_sock_set_state", bpf.ObserverProgOnTcpDone, &p.OnTcpDone),
			rawTracepointHook("inet_sock_set_state", bpf.ObserverProgOnTcpDoneTwin, &p.OnTcpDoneTwin))
	}
	hooks = syscallHooks(hooks, "enter", []string{"read", "readv"}, bpf.ObserverProgOnRecvEnter, &p.OnRecvEnter)
	hooks = syscallHooks(hooks, "enter", []string{"recvfrom"}, bpf.ObserverProgOnRecvfromEnter, &p.OnRecvfromEnter)
	hooks = syscallHooks(hooks, "enter", []string{"recvmsg"}, bpf.ObserverProgOnRecvmsgEnter, &p.OnRecvmsgEnter)
	hooks = syscallHooks(hooks, "enter", sendSyscalls, bpf.ObserverProgOnSendEnter, &p.OnSendEnter)
	hooks = syscallHooks(hooks, "exit", recvSyscalls, bpf.ObserverProgOnDataExit, &p.OnDataExit)
	return syscallHooks(hooks, "exit", sendSyscalls, bpf.ObserverProgOnDataExit, &p.OnDataExit)
}

// fentryHooks are the fentry set's own: its programs on kernel functions
// (those of them the kernel has, see fentryTargets) and the TCP state
// programs the sock set uses too.
func (k *Kernel) fentryHooks() []hook {
	p := &k.objs.ObserverPrograms
	hooks := []hook{
		rawTracepointHook("inet_sock_set_state", bpf.ObserverProgOnTcpClose, &p.OnTcpClose),
		rawTracepointHook("inet_sock_set_state", bpf.ObserverProgOnTcpDone, &p.OnTcpDone),
		rawTracepointHook("inet_sock_set_state", bpf.ObserverProgOnTcpDoneTwin, &p.OnTcpDoneTwin),
	}
	for _, t := range []struct {
		fn, name string
		prog     **ebpf.Program
	}{
		{"inet_recvmsg", bpf.ObserverProgOnInetRecv, &p.OnInetRecv},
		{"inet6_recvmsg", bpf.ObserverProgOnInet6Recv, &p.OnInet6Recv},
		{"unix_stream_recvmsg", bpf.ObserverProgOnUnixRecv, &p.OnUnixRecv},
		{"inet_sendmsg", bpf.ObserverProgOnInetSend, &p.OnInetSend},
		{"inet6_sendmsg", bpf.ObserverProgOnInet6Send, &p.OnInet6Send},
		{"unix_stream_sendmsg", bpf.ObserverProgOnUnixSend, &p.OnUnixSend},
		{"inet_sendpage", bpf.ObserverProgOnInetSendpage, &p.OnInetSendpage},
		{"unix_stream_sendpage", bpf.ObserverProgOnUnixSendpage, &p.OnUnixSendpage},
		{"unix_release", bpf.ObserverProgOnUnixRelease, &p.OnUnixRelease},
		{"tcp_conn_request", bpf.ObserverProgOnSynRefused, &p.OnSynRefused},
		{"tcp_v4_syn_recv_sock", bpf.ObserverProgOnAckRefused, &p.OnAckRefused},
		{"tcp_v6_syn_recv_sock", bpf.ObserverProgOnAckRefused6, &p.OnAckRefused6},
	} {
		if !k.absent[t.fn] && !(k.noRefusals && refusalPrograms[t.name]) {
			hooks = append(hooks, tracingHook(t.fn, t.name, t.prog))
		}
	}
	return hooks
}

// connHooks are accept's and close's syscall tracepoints: part of the
// syscall hook set, and of the sock set only while a watched pool listens
// on something other than TCP (see listen.go).
func (k *Kernel) connHooks() []hook {
	p := &k.objs.ObserverPrograms
	hooks := syscallHooks(nil, "exit", []string{"accept4", "accept"}, bpf.ObserverProgOnAcceptExit, &p.OnAcceptExit)
	return syscallHooks(hooks, "enter", []string{"close"}, bpf.ObserverProgOnCloseEnter, &p.OnCloseEnter)
}

// attached lists, by name, the programs the hook set in use runs.
func (k *Kernel) attached() map[string]*ebpf.Program {
	progs := map[string]*ebpf.Program{}
	for _, h := range k.hookList() {
		progs[h.name] = *h.prog
	}
	return progs
}

// attach attaches every hook; with pinning, keeps or replaces the pinned
// links (keepOrReplace).
func (k *Kernel) attach() error {
	if err := ensureTracefs(); err != nil {
		return err
	}
	hooks, err := k.startHooks()
	if err != nil {
		return err
	}
	if k.pins != nil {
		return k.keepOrReplace(hooks)
	}
	links, err := attachAll(hooks)
	if err != nil {
		return err
	}
	for i, h := range hooks {
		k.addLink(h, links[i])
	}
	return nil
}

// attachAll attaches every hook at once, each from a thread of its own:
// before Linux 5.12 an attachment to a kernel function (fentry, fexit)
// waits for a grace period of RCU tasks, which attachments made together
// share, instead of one after another. Nothing is watched yet, so the
// order in which they take effect does not matter. On an error, those
// attached are detached again.
func attachAll(hooks []hook) ([]link.Link, error) {
	links := make([]link.Link, len(hooks))
	var g errgroup.Group
	for i, h := range hooks {
		g.Go(func() error {
			l, err := h.attach(*h.prog)
			links[i] = l
			return err
		})
	}
	if err := g.Wait(); err != nil {
		closeAll(links)
		return nil, err
	}
	return links, nil
}

// closeAll closes links at once (see attachAll: detaching from a kernel
// function waits for the same grace period), nil ones skipped.
func closeAll(links []link.Link) error {
	errs := make([]error, len(links))
	var wg sync.WaitGroup
	for i, l := range links {
		if l == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.Close()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// addLink records l, h's attachment.
func (k *Kernel) addLink(h hook, l link.Link) {
	k.links = append(k.links, l)
	if k.linkOf == nil {
		k.linkOf = map[string]link.Link{}
	}
	k.linkOf[h.pin] = l
}
