package observer

import "github.com/workerstats/workerstats/observer/requests"

// Counters are one worker process's totals as the kernel counted them since
// the process was first watched.
type Counters struct {
	PID    int
	Master int
	// NSPID is the process's pid in its own (innermost) PID namespace,
	// the one the server itself reports (a pool in a container numbers
	// its processes from 1); PID where it has none of its own, 0 when
	// unknown.
	NSPID int
	// Start is the process's start time in nanoseconds since boot (the
	// kernel's start_boottime). (PID, Start) identifies a process; a PID
	// alone does not, since PIDs are reused.
	Start  uint64
	Exited bool
	// ExitNs is when an exited process ended, on Start's clock (0 when
	// unknown).
	ExitNs uint64
	// Spawns is set on a history entry (see Kernel.Remember): the counters
	// are then its slot's sums, and Spawns the processes the slot had.
	Spawns uint64

	Accepts  uint64 // connections accepted
	Requests uint64 // requests answered (whose response started)
	// Unanswered are requests received and never answered: the
	// connection closed, or the worker died, before any response byte.
	// uWSGI counts each as a request and an exception.
	Unanswered uint64
	Closes     uint64 // accepted connections closed
	RX         uint64 // bytes received on accepted connections
	TX         uint64 // bytes sent on accepted connections
	// RunNs is the summed duration of finished requests, AvgRTNs uWSGI's
	// running average of it (avg = (avg + rt) / 2), both in nanoseconds.
	RunNs      uint64
	AvgRTNs    uint64
	InProgress int64 // requests in progress: received and not answered, or being answered (see ResponseIdle in observer/ebpfkernel)
	// How an exited process ended: its wait status (ExitStatus>>8 the
	// exit code, or the low 7 bits the signal that killed it); the last
	// fatal signal sent to it (0 if none), by Killer (a pid; 0 for the
	// kernel, KillerOOM for its OOM killer) at KillNs on ExitNs's clock; and whether it was in a
	// request when it exited, and when that signal came.
	ExitStatus         uint32
	KillSig            int
	Killer             int
	KillNs             uint64
	ExitedInRequest    bool
	SignalledInRequest bool
	// Followed is how the process's requests ended, by status class, and
	// how long they took, as the kernel counts them (nil where it does
	// not: procfs mode).
	Followed *requests.Summary
}

// Proc is a process as procfs shows it.
type Proc struct {
	PID int
	// StartTicks is the start time in clock ticks since boot (field 22 of
	// /proc/PID/stat).
	StartTicks uint64
}

// Kernel is what the aggregator needs from the in-kernel counters. The eBPF
// observer (observer/ebpfkernel) and ProcfsKernel implement it; tests use a
// fake.
type Kernel interface {
	// Watch starts counting for master and its current workers. Workers the
	// master forks later are added by the kernel itself.
	Watch(master Proc, workers []Proc) error
	// Workers returns every process the kernel counts for, live or exited.
	Workers() ([]Counters, error)
	// Forget drops an exited worker once its counts have been folded into
	// its slot.
	Forget(pid int) error
	// Remember rewrites the exited worker h.PID's entry to hold its slot's
	// history (h.Spawns set, the counters the slot's sums), under master,
	// so that a daemon restarted on pinned maps finds the slots as they
	// were. A slot keeps one such entry: its last exited process.
	Remember(master int, h Counters) error
	// Info describes the observer: mode, hooks, what was dropped, and the
	// programs' own run-time statistics when enabled.
	Info() ObserverInfo
}

// SlotKeeper is a Kernel that keeps which slot each worker holds where a
// restarted daemon finds it (the eBPF kernel's pinned maps): without it a
// replay puts processes in the lowest free slot in the order they started,
// which after a reload need not be the slots they had.
type SlotKeeper interface {
	KeepSlot(p Proc, slot int) error
	KeptSlots() (map[Proc]int, error)
}

// KillerOOM is Counters.Killer when the kernel's OOM killer chose the
// process.
const KillerOOM = -1

// QueueAware is a Kernel that times connections in their listener's
// accept queue: QueueWait is the waits of those s's workers took, nil
// when s's are not timed.
type QueueAware interface {
	QueueWait(s Socket) *Durations
}

// RefusalCounter is a Kernel that counts the connection attempts a
// listener's full accept queue refused: ListenErrors is s's, false when it
// cannot tell them from s's other dropped packets (s.Drops then stands
// for them).
type RefusalCounter interface {
	ListenErrors(s Socket) (uint64, bool)
}

// ListenerAware is a Kernel that wants to know each pool's listening
// sockets (the eBPF observer's sock hooks follow a TCP-only pool's
// connections without syscall tracepoints). The pool says them when it
// finds its master, and again when they change; none known is an empty
// slice.
type ListenerAware interface {
	Listening(master int, sockets []Socket) error
}

// ticksPerSecond is USER_HZ, the unit of /proc/PID/stat start times. It is
// 100 on every Linux architecture workerstats targets.
const ticksPerSecond = 100

// NsToTicks converts a kernel start_boottime to /proc's clock ticks.
func NsToTicks(ns uint64) uint64 { return ns / (1e9 / ticksPerSecond) }

// TicksToNs converts /proc's clock ticks to nanoseconds since boot.
func TicksToNs(t uint64) uint64 { return t * (1e9 / ticksPerSecond) }
