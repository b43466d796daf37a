package ebpfkernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// What the kernel offers is probed here, never inferred from its version
// string: distributions backport features, and configurations differ.

// TracefsDir is where workerstats expects (and, as root, mounts) tracefs.
const TracefsDir = "/sys/kernel/tracing"

// ErrNoBTF is returned by Load on a kernel without BTF: CO-RE programs
// cannot be relocated there.
var ErrNoBTF = errors.New("kernel BTF is not available: the eBPF programs need a kernel built with CONFIG_DEBUG_INFO_BTF=y")

// kernelBTF returns the running kernel's BTF, or ErrNoBTF.
func kernelBTF() (*btf.Spec, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return nil, fmt.Errorf("%w (%w)", ErrNoBTF, err)
	}
	return spec, nil
}

// ensureTracefs mounts tracefs at TracefsDir when it is not there; attaching
// tracepoints needs it.
func ensureTracefs() error {
	if _, err := os.Stat(filepath.Join(TracefsDir, "events")); err == nil {
		return nil
	}
	if err := unix.Mount("tracefs", TracefsDir, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted and mounting it at %s failed (%w): run as root, or mount it with 'mount -t tracefs tracefs %s'", TracefsDir, err, TracefsDir)
	}
	return nil
}

// SockTracepoints reports whether this kernel has the sock:sock_send_length
// and sock:sock_recv_length tracepoints (Linux >= 6.3), mounting tracefs
// first when needed.
func SockTracepoints() (bool, error) {
	if err := ensureTracefs(); err != nil {
		return false, err
	}
	return tracepointExists("sock", "sock_send_length") && tracepointExists("sock", "sock_recv_length"), nil
}

func tracepointExists(group, name string) bool {
	_, err := os.Stat(filepath.Join(TracefsDir, "events", group, name, "id"))
	return err == nil
}

// sendfileReachesSendmsg reports whether sendfile(2) to a socket goes
// through sock_sendmsg, and so past the sock:sock_send_length tracepoint:
// from Linux 6.5, where splice_to_socket replaced the sendpage path. On 6.3
// and 6.4 the tracepoints exist but sendfile's bytes never reach them.
func sendfileReachesSendmsg(spec *btf.Spec) bool {
	var fn *btf.Func
	return spec.TypeByName("splice_to_socket", &fn) == nil
}

// features is what the hook sets depend on, probed once per Load.
type features struct {
	fentry          error           // why fentry/fexit programs do not load or attach; nil when they do
	absent          map[string]bool // the fentry set's optional functions the kernel lacks
	regsHelper      bool            // bpf_task_pt_regs (5.15+)
	sock            bool            // the sock:sock_{send,recv}_length tracepoints (6.3+)
	sendfileSeen    bool            // sendfile's bytes pass them (6.5+)
	tracepointLinks bool            // tracepoint attachments are links, which can be pinned (5.15+)
	oomVictimTask   bool            // mark_victim's first argument is the task, not its pid
}

// probeKernel probes the features, mounting tracefs first when needed.
// Some probes load a program, which before 5.11 is charged to the locked
// memory limit that the programs and maps already pinned share: it is
// lifted first where it may be (Load says why when it may not).
func probeKernel() (features, error) {
	spec, err := kernelBTF()
	if err != nil {
		return features{}, err
	}
	_ = rlimit.RemoveMemlock()
	sock, err := SockTracepoints()
	if err != nil {
		return features{}, err
	}
	return features{fentry: trampolinesWork(), absent: absentFunctions(spec), regsHelper: hasHelper(spec, "BPF_FUNC_task_pt_regs"),
		sock: sock, sendfileSeen: sendfileReachesSendmsg(spec), tracepointLinks: tracepointLinksPin(),
		oomVictimTask: oomVictimIsTask(spec)}, nil
}

// trampolinesWork says why fentry and fexit programs cannot be used here
// (nil when they can): it loads an fexit program that does nothing for
// inet_recvmsg, one of the fentry set's functions, and attaches it for a
// moment. Some kernels refuse the load (lockdown, or no trampolines on
// the architecture); some the attach (no ftrace).
func trampolinesWork() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "probe_fexit", Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFExit, AttachTo: "inet_recvmsg",
		License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("load an fexit program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attach an fexit program: %w", err)
	}
	return l.Close()
}

// optionalFunctions are the fentry set's kernel functions a kernel may
// lack: the sendpage operations, gone from 6.5, where sendfile and splice
// reach sendmsg instead, and IPv6's, in a module some kernels build it as.
var optionalFunctions = []string{"inet_sendpage", "unix_stream_sendpage", "tcp_v6_syn_recv_sock"}

// absentFunctions is which of optionalFunctions spec, the kernel's BTF,
// lacks.
func absentFunctions(spec *btf.Spec) map[string]bool {
	absent := map[string]bool{}
	for _, name := range optionalFunctions {
		var fn *btf.Func
		if spec.TypeByName(name, &fn) != nil {
			absent[name] = true
		}
	}
	return absent
}

// hasHelper reports whether the kernel knows helper (a name from enum
// bpf_func_id, BPF_FUNC_...), from its BTF.
func hasHelper(spec *btf.Spec, helper string) bool {
	var ids *btf.Enum
	if spec.TypeByName("bpf_func_id", &ids) != nil {
		return false
	}
	for _, v := range ids.Values {
		if v.Name == helper {
			return true
		}
	}
	return false
}

// oomVictimIsTask reports whether the oom:mark_victim tracepoint passes
// the victim's task_struct (as newer kernels do) rather than its pid, from
// the raw tracepoint's prototype: (void *, struct task_struct *, uid_t)
// against (void *, int).
func oomVictimIsTask(spec *btf.Spec) bool {
	var td *btf.Typedef
	if spec.TypeByName("btf_trace_mark_victim", &td) != nil {
		return false
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return false
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok || len(proto.Params) < 2 {
		return false
	}
	_, isPtr := btf.UnderlyingType(proto.Params[1].Type).(*btf.Pointer)
	return isPtr
}

// tracepointLinksPin reports whether attaching a program to a tracepoint
// makes a BPF link, which can be pinned (Linux 5.15 and newer), rather
// than a perf event ioctl, which lasts only as long as its descriptor: it
// attaches a program that does nothing to a rare syscall's tracepoint and
// asks the attachment for its link info.
func tracepointLinksPin() bool {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "probe_tp_link", Type: ebpf.TracePoint, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return false
	}
	defer prog.Close()
	l, err := link.Tracepoint("syscalls", "sys_enter_getppid", prog, nil)
	if err != nil {
		return false
	}
	defer l.Close()
	_, err = l.Info()
	return err == nil
}

// AvailableHooks lists the hook sets that carry everything the daemon does
// on this kernel, pinning included, the one auto picks first.
func AvailableHooks() ([]string, error) {
	k, err := probeKernel()
	if err != nil {
		return nil, err
	}
	first, _ := chooseHooks(HooksAuto, k)
	sets := []string{first}
	for _, h := range []string{HooksFentry, HooksSock, HooksSyscall, HooksRaw} {
		usable := h == HooksRaw || h == HooksFentry && k.fentry == nil || h == HooksSyscall && k.tracepointLinks ||
			h == HooksSock && k.sock && k.tracepointLinks
		if usable && h != first {
			sets = append(sets, h)
		}
	}
	return sets, nil
}
