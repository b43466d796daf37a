package observer

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
)

// Hook sets: where the kernel side learns of bytes moved.
const (
	HooksAuto    = "auto"
	HooksSock    = "sock"    // sock:sock_{send,recv}_length, Linux >= 6.3
	HooksSyscall = "syscall" // syscall enter/exit tracepoints, any kernel with BTF
)

// TracefsDir is where workerstats expects (and, as root, mounts) tracefs.
const TracefsDir = "/sys/kernel/tracing"

// EBPFOptions configure the eBPF observer.
type EBPFOptions struct {
	Hooks string // HooksAuto, HooksSock or HooksSyscall
	// BPFStats turns on the kernel's per-program run-time statistics
	// (kernel.bpf_stats_enabled) while the observer runs, and reports them.
	BPFStats bool
	// PinPath, when set, is the bpffs directory where the maps and links
	// are pinned, so the programs go on counting while the daemon is
	// stopped and a restart carries on from the same maps (see pin.go).
	// Empty: nothing is pinned and Close detaches everything.
	PinPath string
	Log     *slog.Logger
}

// EBPF counts per worker in the kernel. It implements Kernel.
type EBPF struct {
	objs  bpf.ObserverObjects
	links []link.Link
	hooks string
	stats io.Closer
	log   *slog.Logger
	pins  *pinDir // nil when not pinning
	// sweptMap keeps swept across restarts when pinning.
	sweptMap *ebpf.Map

	mu      sync.Mutex
	swept   uint64 // connections of exited owners removed by Sweep
	evicted uint64 // connections the LRU dropped while open, as of the last Sweep
}

var (
	recvSyscalls = []string{"read", "readv", "recvfrom", "recvmsg"}
	sendSyscalls = []string{"write", "writev", "sendto", "sendmsg", "sendfile64"}
)

// LoadEBPF checks the kernel, loads the programs and attaches them.
func LoadEBPF(opts EBPFOptions) (*EBPF, error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	if _, err := btf.LoadKernelSpec(); err != nil {
		return nil, fmt.Errorf("kernel BTF is not available (%w): workerstats needs a kernel built with CONFIG_DEBUG_INFO_BTF=y, or use --mode procfs", err)
	}
	sock, err := SockTracepoints()
	if err != nil {
		return nil, err
	}
	sendfileSeen := sendfileReachesSendmsg()
	hooks, err := chooseHooks(opts.Hooks, sock, sendfileSeen)
	if err != nil {
		return nil, err
	}
	if hooks == HooksSock && !sendfileSeen {
		log.Warn("on this kernel sendfile(2) bypasses sock_sendmsg, so the sock hooks miss bytes a server sends with it (nginx's static files): use --hooks syscall or auto")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK for eBPF maps: %w", err)
	}

	e := &EBPF{hooks: hooks, log: log}
	if opts.PinPath != "" {
		if e.pins, err = openPinDir(opts.PinPath); err != nil {
			return nil, err
		}
	}
	if opts.BPFStats {
		if e.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
			e.Close()
			return nil, fmt.Errorf("enable eBPF run-time statistics: %w", err)
		}
	}
	if err := e.load(); err != nil {
		e.Close()
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			log.Error("the kernel's verifier refused a program", "log", fmt.Sprintf("%+v", ve))
		}
		return nil, fmt.Errorf("load eBPF programs: %w", err)
	}
	if err := e.attach(); err != nil {
		e.Close()
		return nil, err
	}
	log.Info("eBPF programs attached", "hooks", hooks, "links", len(e.links))
	return e, nil
}

// load loads the programs and creates the maps, or with pinning reuses the
// pinned maps (replacing those whose layout changed) and pins new ones.
func (e *EBPF) load() error {
	if e.pins == nil {
		return bpf.LoadObserverObjects(&e.objs, nil)
	}
	spec, err := bpf.LoadObserver()
	if err != nil {
		return err
	}
	for _, ms := range spec.Maps {
		ms.Pinning = ebpf.PinByName
	}
	if err := e.pins.dropIncompatibleMaps(spec, e.log); err != nil {
		return err
	}
	if err := spec.LoadAndAssign(&e.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: e.pins.path}}); err != nil {
		return err
	}
	e.sweptMap, err = ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: sweptMapName, Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1, Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: e.pins.path})
	if err != nil {
		return fmt.Errorf("pinned map %s: %w", sweptMapName, err)
	}
	if err := e.sweptMap.Lookup(uint32(0), &e.swept); err != nil {
		return fmt.Errorf("read pinned map %s: %w", sweptMapName, err)
	}
	return nil
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
func sendfileReachesSendmsg() bool {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false
	}
	var fn *btf.Func
	return spec.TypeByName("splice_to_socket", &fn) == nil
}

// chooseHooks resolves HooksAuto against what this kernel has: the sock
// tracepoints, and whether sendfile's bytes pass them.
func chooseHooks(want string, sock, sendfileSeen bool) (string, error) {
	switch want {
	case "", HooksAuto:
		if sock && sendfileSeen {
			return HooksSock, nil
		}
		return HooksSyscall, nil
	case HooksSock:
		if !sock {
			return "", fmt.Errorf("--hooks sock needs the sock:sock_send_length and sock:sock_recv_length tracepoints (Linux 6.3 or newer), which this kernel lacks: use --hooks syscall or auto")
		}
		return HooksSock, nil
	case HooksSyscall:
		return HooksSyscall, nil
	}
	return "", fmt.Errorf("--hooks %q is not one of auto, sock, syscall", want)
}

// rawTracepointHook attaches prog, named progName, to a raw tracepoint.
func rawTracepointHook(name, progName string, prog **ebpf.Program) hook {
	return hook{pin: linkPinPrefix + progName + "_" + name, prog: prog, attach: func(p *ebpf.Program) (link.Link, error) {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: name, Program: p})
		if err != nil {
			return nil, fmt.Errorf("attach to raw tracepoint %s: %w", name, err)
		}
		return l, nil
	}}
}

// tracepointHook attaches prog, named progName, to a tracepoint.
func tracepointHook(group, name, progName string, prog **ebpf.Program) hook {
	return hook{pin: linkPinPrefix + progName + "_" + name, prog: prog, attach: func(p *ebpf.Program) (link.Link, error) {
		l, err := link.Tracepoint(group, name, p, nil)
		if err != nil {
			return nil, fmt.Errorf("attach to tracepoint %s:%s: %w", group, name, err)
		}
		return l, nil
	}}
}

// hookList is every attachment of the hook set in use.
func (e *EBPF) hookList() []hook {
	p := &e.objs.ObserverPrograms
	hooks := []hook{
		rawTracepointHook("sched_process_fork", "on_fork", &p.OnFork),
		rawTracepointHook("sched_process_exit", "on_exit", &p.OnExit),
	}
	for _, sc := range []string{"accept4", "accept"} {
		hooks = append(hooks, tracepointHook("syscalls", "sys_exit_"+sc, "on_accept_exit", &p.OnAcceptExit))
	}
	hooks = append(hooks, tracepointHook("syscalls", "sys_enter_close", "on_close_enter", &p.OnCloseEnter))
	if e.hooks == HooksSock {
		return append(hooks,
			tracepointHook("sock", "sock_recv_length", "on_sock_recv", &p.OnSockRecv),
			tracepointHook("sock", "sock_send_length", "on_sock_send", &p.OnSockSend))
	}
	for _, sc := range recvSyscalls {
		hooks = append(hooks, tracepointHook("syscalls", "sys_enter_"+sc, "on_recv_enter", &p.OnRecvEnter))
	}
	for _, sc := range sendSyscalls {
		hooks = append(hooks, tracepointHook("syscalls", "sys_enter_"+sc, "on_send_enter", &p.OnSendEnter))
	}
	for _, sc := range append(append([]string{}, recvSyscalls...), sendSyscalls...) {
		hooks = append(hooks, tracepointHook("syscalls", "sys_exit_"+sc, "on_data_exit", &p.OnDataExit))
	}
	return hooks
}

// attach attaches every hook; with pinning, keeps or replaces the pinned
// links (keepOrReplace).
func (e *EBPF) attach() error {
	hooks := e.hookList()
	if e.pins != nil {
		return e.keepOrReplace(hooks)
	}
	for _, h := range hooks {
		l, err := h.attach(*h.prog)
		if err != nil {
			return err
		}
		e.links = append(e.links, l)
	}
	return nil
}

// Hooks reports the hook set in use: HooksSock or HooksSyscall.
func (e *EBPF) Hooks() string { return e.hooks }

const (
	roleMaster = 1
	roleWorker = 2
)

// Watch implements Kernel.
func (e *EBPF) Watch(master Proc, workers []Proc) error {
	// The master's entry holds no counts, so it is always written: over a
	// pinned map's entry for the same master (a restart) it changes
	// nothing, and over a dead process's entry under a reused pid it
	// makes the pid this master's.
	m := bpf.ObserverWorker{Role: roleMaster, StartNs: ticksToNs(master.StartTicks)}
	if err := e.objs.Workers.Put(uint32(master.PID), &m); err != nil {
		return fmt.Errorf("add master %d to the kernel map: %w", master.PID, err)
	}
	for _, w := range workers {
		v := bpf.ObserverWorker{Role: roleWorker, Master: uint32(master.PID), StartNs: ticksToNs(w.StartTicks)}
		// NoExist: a worker the kernel saw fork meanwhile keeps its counts.
		err := e.objs.Workers.Update(uint32(w.PID), &v, ebpf.UpdateNoExist)
		if errors.Is(err, ebpf.ErrKeyExist) {
			// Kept from before a restart (pinned maps) when it is this
			// process; another process's under a reused pid is replaced.
			var old bpf.ObserverWorker
			if e.objs.Workers.Lookup(uint32(w.PID), &old) == nil && nsToTicks(old.StartNs) != w.StartTicks {
				err = e.objs.Workers.Put(uint32(w.PID), &v)
			} else {
				err = nil
			}
		}
		if err != nil {
			return fmt.Errorf("add worker %d to the kernel map: %w", w.PID, err)
		}
	}
	return nil
}

// Workers implements Kernel.
func (e *EBPF) Workers() ([]Counters, error) {
	var (
		pid uint32
		v   bpf.ObserverWorker
		out []Counters
	)
	var mono, boot unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		return nil, fmt.Errorf("read the monotonic clock: %w", err)
	}
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &boot); err != nil {
		return nil, fmt.Errorf("read the boot-time clock: %w", err)
	}
	now := uint64(mono.Nano()) // bpf_ktime_get_ns()'s clock
	// Exit times are on bpf_ktime_get_ns()'s clock, start times on
	// start_boottime's: they differ by the time the host was suspended.
	suspended := uint64(boot.Nano() - mono.Nano())
	it := e.objs.Workers.Iterate()
	for it.Next(&pid, &v) {
		if v.Role != roleWorker {
			continue
		}
		out = append(out, Counters{
			PID:        int(pid),
			Master:     int(v.Master),
			Start:      v.StartNs,
			Exited:     v.ExitNs != 0,
			ExitNs:     exitBoot(v.ExitNs, suspended),
			Spawns:     v.Spawns,
			Accepts:    v.Accepts,
			Requests:   v.Requests,
			Closes:     v.Closes,
			RX:         v.Rx,
			TX:         v.Tx,
			RunNs:      v.RtNs,
			AvgRTNs:    v.AvgRtNs,
			InProgress: inRequest(v, now),
		})
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("iterate workers map: %w", err)
	}
	return out, nil
}

// ResponseIdle is how long after its last response byte a connection whose
// next request has not come is taken as idle: the kernel cannot see where a
// response ends, and a keep-alive connection waits in that state.
const ResponseIdle = 100 * time.Millisecond

// inRequest is how many requests a worker is in: those received and not
// answered yet, plus one being answered when a response byte went out
// within ResponseIdle.
func inRequest(v bpf.ObserverWorker, now uint64) int64 {
	n := max(v.Awaiting, 0)
	if v.InProgress > n && now-v.LastTxNs < uint64(ResponseIdle) {
		n++
	}
	return n
}

func exitBoot(exitNs, suspended uint64) uint64 {
	if exitNs == 0 {
		return 0
	}
	return exitNs + suspended
}

// Remember implements Kernel.
func (e *EBPF) Remember(master int, h Counters) error {
	var v bpf.ObserverWorker
	if err := e.objs.Workers.Lookup(uint32(h.PID), &v); err != nil {
		return fmt.Errorf("worker %d's entry: %w", h.PID, err)
	}
	if v.Role != roleWorker || v.ExitNs == 0 {
		return fmt.Errorf("worker %d has not exited", h.PID)
	}
	v.Master = uint32(master)
	v.Accepts, v.Requests, v.Closes = h.Accepts, h.Requests, h.Closes
	v.Rx, v.Tx, v.RtNs, v.AvgRtNs = h.RX, h.TX, h.RunNs, h.AvgRTNs
	v.InProgress, v.Awaiting, v.Spawns = 0, 0, h.Spawns
	if err := e.objs.Workers.Update(uint32(h.PID), &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("write worker %d's slot history: %w", h.PID, err)
	}
	return nil
}

// Forget implements Kernel.
func (e *EBPF) Forget(pid int) error {
	err := e.objs.Workers.Delete(uint32(pid))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

// Unwatch removes a master and its workers from the kernel map.
func (e *EBPF) Unwatch(master int) error {
	cs, err := e.Workers()
	if err != nil {
		return err
	}
	for _, c := range cs {
		if c.Master == master {
			if err := e.Forget(c.PID); err != nil {
				return err
			}
		}
	}
	return e.Forget(master)
}

// Prune removes from the kernel map every master not in watched, and its
// workers: pinned maps outlive the daemon, so a master watched by an
// earlier run (a pool since dropped from the config, or restarted while no
// daemon ran) would otherwise stay counted and fill the map. It returns how
// many entries went.
func (e *EBPF) Prune(watched map[int]bool) (int, error) {
	var (
		pid  uint32
		v    bpf.ObserverWorker
		drop []uint32
	)
	it := e.objs.Workers.Iterate()
	for it.Next(&pid, &v) {
		owner := int(v.Master)
		if v.Role == roleMaster {
			owner = int(pid)
		}
		if !watched[owner] {
			drop = append(drop, pid)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("iterate workers map: %w", err)
	}
	for _, pid := range drop {
		if err := e.Forget(int(pid)); err != nil {
			return 0, fmt.Errorf("drop pid %d from the workers map: %w", pid, err)
		}
	}
	return len(drop), nil
}

// counter sums one per-CPU counter.
func (e *EBPF) counter(c bpf.ObserverCounter) uint64 {
	var per []uint64
	if err := e.objs.Counters.Lookup(uint32(c), &per); err != nil {
		return 0
	}
	var sum uint64
	for _, v := range per {
		sum += v
	}
	return sum
}

// Sweep removes connections, and fd entries, whose owner is no longer a live
// worker (their close was never seen: the process exited with them open),
// and works out
// how many open connections the LRU map evicted, which the kernel cannot
// count itself: evicted = tracked - closed - swept - present.
func (e *EBPF) Sweep() error {
	var (
		pid uint32
		w   bpf.ObserverWorker
	)
	live := map[uint32]bool{}
	it := e.objs.Workers.Iterate()
	for it.Next(&pid, &w) {
		live[pid] = w.Role == roleWorker && w.ExitNs == 0
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate workers map: %w", err)
	}
	var (
		sk    uint64
		c     bpf.ObserverConn
		stale []uint64
	)
	present := uint64(0)
	ci := e.objs.Conns.Iterate()
	for ci.Next(&sk, &c) {
		if live[c.Owner] {
			present++
		} else {
			stale = append(stale, sk)
		}
	}
	if err := ci.Err(); err != nil {
		return fmt.Errorf("iterate connections map: %w", err)
	}
	removed := uint64(0)
	for _, k := range stale {
		if e.objs.Conns.Delete(k) == nil {
			removed++
		} else {
			present++
		}
	}
	// fds entries are keyed tgid<<32|fd: drop those of exited processes.
	var (
		fk     uint64
		fsk    uint64
		staleF []uint64
	)
	fi := e.objs.Fds.Iterate()
	for fi.Next(&fk, &fsk) {
		if !live[uint32(fk>>32)] {
			staleF = append(staleF, fk)
		}
	}
	if err := fi.Err(); err != nil {
		return fmt.Errorf("iterate fds map: %w", err)
	}
	for _, k := range staleF {
		e.objs.Fds.Delete(k)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.swept += removed
	if e.sweptMap != nil && removed > 0 {
		if err := e.sweptMap.Put(uint32(0), e.swept); err != nil {
			e.log.Warn("cannot record swept connections in the pinned map", "error", err)
		}
	}
	tracked := e.counter(bpf.ObserverCounterCNT_CONN_TRACKED)
	closed := e.counter(bpf.ObserverCounterCNT_CONN_CLOSED) + e.counter(bpf.ObserverCounterCNT_CONN_STALE)
	if gone := closed + e.swept + present; tracked > gone {
		e.evicted = tracked - gone
	}
	return nil
}

// Info implements Kernel.
func (e *EBPF) Info() ObserverInfo {
	e.mu.Lock()
	evicted := e.evicted
	e.mu.Unlock()
	info := ObserverInfo{
		Mode:  "ebpf",
		Hooks: e.hooks,
		Dropped: map[string]uint64{
			"connections_untracked": e.counter(bpf.ObserverCounterCNT_CONN_FULL),
			"connections_evicted":   evicted,
			"connections_stale":     e.counter(bpf.ObserverCounterCNT_CONN_STALE),
			"workers_untracked":     e.counter(bpf.ObserverCounterCNT_WORKER_FULL),
			"workers_pid_reused":    e.counter(bpf.ObserverCounterCNT_WORKER_REUSED),
			"transfers_untracked":   e.counter(bpf.ObserverCounterCNT_INFLIGHT_FULL),
		},
	}
	if e.stats != nil {
		info.Programs = e.programStats()
	}
	return info
}

func (e *EBPF) programStats() []ProgramStats {
	p := e.objs.ObserverPrograms
	progs := map[string]*ebpf.Program{
		"on_fork": p.OnFork, "on_exit": p.OnExit,
		"on_accept_exit": p.OnAcceptExit, "on_close_enter": p.OnCloseEnter,
	}
	if e.hooks == HooksSock {
		progs["on_sock_recv"], progs["on_sock_send"] = p.OnSockRecv, p.OnSockSend
	} else {
		progs["on_recv_enter"], progs["on_send_enter"], progs["on_data_exit"] = p.OnRecvEnter, p.OnSendEnter, p.OnDataExit
	}
	var out []ProgramStats
	for name, prog := range progs {
		s, err := prog.Stats()
		if err != nil {
			continue
		}
		ps := ProgramStats{Name: name, RunCount: s.RunCount, RunTimeNs: uint64(s.Runtime.Nanoseconds())}
		if s.RunCount > 0 {
			ps.AvgNs = ps.RunTimeNs / s.RunCount
		}
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Close detaches the programs and frees the maps, gathering every error.
// Pinned links and maps stay, and the programs go on counting: only
// RemovePins removes them.
func (e *EBPF) Close() error {
	var errs []error
	for _, l := range e.links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	e.links = nil
	if err := e.objs.Close(); err != nil {
		errs = append(errs, err)
	}
	if e.stats != nil {
		if err := e.stats.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if e.sweptMap != nil {
		if err := e.sweptMap.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := e.pins.close(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
