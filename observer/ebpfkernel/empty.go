package ebpfkernel

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/workerstats/workerstats/bpf"
)

// EmptyHooks are programs that return at once, attached where a hook set's
// programs attach: what the attachment points cost by themselves, which
// make bench measures ours against. Nothing of the daemon uses them.
type EmptyHooks struct {
	progs []*ebpf.Program
	links []link.Link
}

// AttachEmpty attaches an empty program to every attachment point of hooks
// (fentry, sock, syscall or raw); for the sock set, with accept's and close's
// syscall tracepoints only when unixPool says a watched pool listens on a
// Unix socket (listen.go).
func AttachEmpty(hooks string, unixPool bool) (*EmptyHooks, error) {
	if err := CheckHooks(hooks); err != nil || hooks == "" || hooks == HooksAuto {
		return nil, fmt.Errorf("empty programs need a hook set by name, not %q", hooks)
	}
	if err := ensureTracefs(); err != nil {
		return nil, err
	}
	spec, err := bpf.LoadObserver()
	if err != nil {
		return nil, fmt.Errorf("read the programs' spec: %w", err)
	}
	k := &Kernel{hooks: hooks}
	if hooks == HooksFentry {
		kspec, err := kernelBTF()
		if err != nil {
			return nil, err
		}
		k.absent = absentFunctions(kspec)
	}
	list := k.hookList()
	if hooks == HooksSock && !unixPool {
		list = k.tcpOnly(list)
	}
	e := &EmptyHooks{}
	for _, h := range list {
		if err := e.attach(h, spec.Programs[h.name]); err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

// attach attaches an empty program of ours' type (and kernel function,
// for fentry and fexit) to h: one of its own, for a tracepoint takes a
// program once (several of ours share inet_sock_set_state).
func (e *EmptyHooks) attach(h hook, ours *ebpf.ProgramSpec) error {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "empty", Type: ours.Type, AttachType: ours.AttachType, AttachTo: ours.AttachTo, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load an empty %s program: %w", ours.Type, err)
	}
	e.progs = append(e.progs, p)
	l, err := h.attach(p)
	if err != nil {
		return err
	}
	e.links = append(e.links, l)
	return nil
}

// NsPerRun is the empty programs' average run time from bpf_stats (0
// without runs, or while kernel.bpf_stats_enabled is off).
func (e *EmptyHooks) NsPerRun() (float64, error) {
	var runs, ns uint64
	for _, p := range e.progs {
		s, err := p.Stats()
		if err != nil {
			return 0, fmt.Errorf("empty program statistics: %w", err)
		}
		runs += s.RunCount
		ns += uint64(s.Runtime.Nanoseconds())
	}
	if runs == 0 {
		return 0, nil
	}
	return float64(ns) / float64(runs), nil
}

// Close detaches and unloads the programs.
func (e *EmptyHooks) Close() error {
	var errs []error
	for _, l := range e.links {
		errs = append(errs, l.Close())
	}
	for _, p := range e.progs {
		errs = append(errs, p.Close())
	}
	e.links, e.progs = nil, nil
	return errors.Join(errs...)
}
