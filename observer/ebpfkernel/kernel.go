// Package ebpfkernel is the eBPF implementation of observer.Kernel: it loads
// bpf/'s programs, attaches them to the hook set the kernel carries, pins
// them so counting outlives the daemon, and reads the per-worker counters
// back for the aggregator.
//
// The package names no command-line flag: its errors say what is wrong in
// the kernel's or the host's terms, and the command adds which flag to
// change.
package ebpfkernel

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
)

// Options configure the eBPF observer.
type Options struct {
	Hooks string // HooksAuto, HooksSock, HooksSyscall or HooksRaw
	// BPFStats turns on the kernel's per-program run-time statistics
	// (kernel.bpf_stats_enabled) while the observer runs, and reports them.
	BPFStats bool
	// PinPath, when set, is the bpffs directory where the maps and links
	// are pinned, so the programs go on counting while the daemon is
	// stopped and a restart carries on from the same maps (see bpffs.go).
	// Empty: nothing is pinned and Close detaches everything.
	PinPath string
	// MaxConnections sizes the tables of tracked connections (0:
	// DefaultMaxConnections). A connection accepted while they are full
	// is not counted, and Info says how many were not.
	MaxConnections int
	// MaxWorkers sizes the table of processes (0: DefaultMaxWorkers):
	// every watched master, its live workers, and each slot's last exited
	// process. A worker that finds it full is not counted, and Info says
	// how many were not.
	MaxWorkers int
	// MaxTransfers sizes the syscall hooks' table of sends and receives
	// in progress, one per thread inside one (0: DefaultMaxTransfers). A
	// transfer that finds it full is not counted, and Info says how many
	// were not. The raw and sock hooks keep no such table.
	MaxTransfers int
	// CaptureHeads has the programs keep the first bytes of each request
	// of a watched worker, for InFlight and Latest to read. Without it the
	// capture code is left out at load.
	CaptureHeads bool
	// NoStatus leaves out what the programs count by default: each
	// response's status class, read from its first bytes, and per worker
	// the requests answered by class and their durations (Workers'
	// Counters.Followed). Its code is left out at load.
	NoStatus bool
	Log      *slog.Logger
}

// Kernel counts per worker in the kernel. It implements observer.Kernel.
type Kernel struct {
	objs bpf.ObserverObjects
	// maps are the objects' maps by their names in the C file, so that
	// what lists every map (pins, compatibility) follows the C file.
	maps map[string]*ebpf.Map
	// consts are the programs' constants as loaded (.rodata): a pinned
	// program with others is not the one we would run.
	consts []byte
	links  []link.Link
	// took is how long each step of Load took, for its log.
	took startup
	// linkOf is each hook's link by its pin name, for the hooks attached
	// and detached while running (listen.go).
	linkOf map[string]link.Link
	hooks  string
	// oomVictimTask is the C file's oom_victim_task, as probed.
	oomVictimTask bool
	// regsHelper is the C file's regs_helper, as probed.
	regsHelper bool
	// countStatus is the C file's count_status: not Options.NoStatus.
	countStatus bool
	// absent are the fentry set's optional kernel functions this kernel
	// lacks, whose programs are left out.
	absent map[string]bool
	// listenerDrops says on_listener_drop runs (refused.go), with rcv the
	// C file's tcp_v4_rcv_at and friends.
	listenerDrops bool
	// noRefusals says the fentry set's refusal programs are left out: a
	// verifier refused one of them (refused.go).
	noRefusals bool
	rcv        receivers
	stats      io.Closer
	log        *slog.Logger
	pins       *pinDir // nil when not pinning

	bitsMu sync.Mutex // userspace's writes to the watched bitmap
	// unfit are the workers userspace found no room for in the workers
	// table, by pid (the kernel counts those it saw fork).
	unfitMu sync.Mutex
	unfit   map[int]bool

	listenMu sync.Mutex
	scanMu   sync.Mutex   // listener_scans and scans_asked
	unheard  map[int]bool // masters watched whose listeners are not said yet
	// listening is each watched pool's listeners as Listening last said,
	// by master; connHooksOff says the sock set's accept and close
	// tracepoints are detached, TCP connections adopted instead.
	listening    map[int]listeners
	connHooksOff bool
	hooksFixed   bool // FixHooks was called: attachments no longer change
	warnedFixed  bool

	queueMu sync.Mutex
	// queueKeys are each watched pool's TCP listeners, by master, whose
	// accept queues the kernel times (queue.go).
	queueKeys map[int][]listenKey
	// refusedSeen is the most each listener's refusals were (refused.go).
	refusedSeen map[listenKey]uint64

	// netns is the daemon's network namespace, which a Socket's NetNS 0
	// stands for (ports.go).
	netns     uint32
	portsMu   sync.Mutex
	portWords []uint64 // watched_ports as last written; nil before

	readMu sync.Mutex // read_listeners' runs, one at a time (readlisteners.go)
	// readErr says why this kernel cannot run read_listeners, probed at
	// load; nil when it can.
	readErr error
}

// Load checks the kernel, loads the programs and attaches them.
func Load(opts Options) (*Kernel, error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	// Before 5.11 programs and maps are charged to the locked memory
	// limit, which those already pinned share: lifted before the probes
	// load theirs.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("raise RLIMIT_MEMLOCK for eBPF maps: %w", err)
	}
	start := time.Now()
	hooks, probed, err := resolveHooks(opts.Hooks, log)
	if err != nil {
		return nil, err
	}
	netns, err := ownNetNS()
	if err != nil {
		return nil, err
	}
	k := &Kernel{hooks: hooks, log: log, oomVictimTask: probed.oomVictimTask, regsHelper: probed.regsHelper,
		absent: probed.absent, netns: netns, countStatus: !opts.NoStatus}
	k.probeRefusals()
	k.took.probe = time.Since(start)
	if err := k.open(opts); err != nil {
		k.Close()
		return nil, err
	}
	log.Info("eBPF programs attached", "hooks", hooks, "links", len(k.links), "took", time.Since(start).Round(time.Millisecond))
	log.Debug("eBPF start-up steps", "probe", k.took.probe.Round(time.Millisecond),
		"load", k.took.load.Round(time.Millisecond), "attach", k.took.attach.Round(time.Millisecond))
	return k, nil
}

// startup is how long Load's steps took: probing the kernel (BTF, the
// hook set, the listeners' drops), loading (the verifier), attaching.
type startup struct{ probe, load, attach time.Duration }

// open takes the pin directory, enables statistics, loads and attaches.
func (k *Kernel) open(opts Options) error {
	var err error
	if opts.PinPath != "" {
		if k.pins, err = openPinDir(opts.PinPath); err != nil {
			return err
		}
	}
	if opts.BPFStats {
		if k.stats, err = ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err != nil {
			return fmt.Errorf("enable eBPF run-time statistics: %w", err)
		}
	}
	loadAt := time.Now()
	err = k.load(opts, captureMode(opts.CaptureHeads, k.hooks))
	for err != nil && k.leaveOut(err) {
		err = k.load(opts, captureMode(opts.CaptureHeads, k.hooks))
	}
	k.took.load = time.Since(loadAt)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			k.log.Error("the kernel's verifier refused a program", "log", fmt.Sprintf("%+v", ve))
		}
		return fmt.Errorf("load eBPF programs: %w", err)
	}
	if err := k.markPorts(); err != nil {
		return err
	}
	k.probeListenerReads()
	attachAt := time.Now()
	defer func() { k.took.attach = time.Since(attachAt) }()
	return k.attach()
}

// load loads the programs and creates the maps, or with pinning reuses the
// pinned maps (replacing those whose layout changed) and pins new ones.
func (k *Kernel) load(o Options, capture bpf.ObserverCaptureMode) error {
	spec, err := bpf.LoadObserver()
	if err != nil {
		return err
	}
	k.keepHookSet(spec)
	if err := k.setConstants(spec, capture); err != nil {
		return err
	}
	if err := sizeTables(spec, o); err != nil {
		return err
	}
	var opts ebpf.CollectionOptions
	var carry carried
	if k.pins != nil {
		for name, ms := range spec.Maps {
			// Not the constants (.rodata): they are the programs'.
			if !strings.HasPrefix(name, ".") {
				ms.Pinning = ebpf.PinByName
			}
		}
		var err error
		if carry, err = k.pins.dropIncompatibleMaps(spec, k.log); err != nil {
			return err
		}
		opts.Maps.PinPath = k.pins.path
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		return err
	}
	k.maps = make(map[string]*ebpf.Map, len(coll.Maps))
	for name, m := range coll.Maps {
		if !strings.HasPrefix(name, ".") { // the constants are the programs'
			k.maps[name] = m
		}
	}
	if err := carry.restore(k.maps); err != nil {
		coll.Close()
		return err
	}
	if consts := coll.Maps[".rodata"]; consts != nil {
		k.consts = make([]byte, consts.ValueSize())
		if err := consts.Lookup(uint32(0), k.consts); err != nil {
			coll.Close()
			return fmt.Errorf("read the programs' constants: %w", err)
		}
	}
	if err := coll.Assign(&k.objs.ObserverMaps); err != nil {
		coll.Close()
		return err
	}
	takePrograms(coll, &k.objs.ObserverPrograms)
	coll.Close() // what was not taken: the constants, which the programs hold
	return nil
}

// keepHookSet leaves out of spec the programs of the other hook sets,
// which would never run: a kernel that refuses programs on kernel
// functions refuses the whole collection with them, and an older one's
// verifier need not pass the sock set's capture, say. Under the fentry
// set, the programs for functions this kernel lacks go too. What no set
// attaches (read_listeners, run on demand) stays.
func (k *Kernel) keepHookSet(spec *ebpf.CollectionSpec) {
	ours := map[string]bool{}
	for _, h := range append(k.hookList(), k.connHooks()...) {
		ours[h.name] = true
	}
	for _, set := range []string{HooksFentry, HooksSock, HooksSyscall, HooksRaw} {
		other := &Kernel{hooks: set, listenerDrops: true}
		for _, h := range append(other.hookList(), other.connHooks()...) {
			if !ours[h.name] {
				delete(spec.Programs, h.name)
			}
		}
	}
}

// setConstants sets the C file's constants that say what the kernel and
// the hook set are (lib/maps.h).
func (k *Kernel) setConstants(spec *ebpf.CollectionSpec, capture bpf.ObserverCaptureMode) error {
	set := func(name string, on bool, v any) error {
		if !on {
			return nil
		}
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set the programs' constant %s: %w", name, err)
		}
		return nil
	}
	if err := set(bpf.ObserverVarSockHooks, k.hooks == HooksSock || k.hooks == HooksFentry, uint8(1)); err != nil {
		return err
	}
	if err := set(bpf.ObserverVarRegsHelper, k.regsHelper, uint8(1)); err != nil {
		return err
	}
	if err := set(bpf.ObserverVarOomVictimTask, k.oomVictimTask, uint8(1)); err != nil {
		return err
	}
	if err := set(bpf.ObserverVarCountStatus, k.countStatus, uint8(1)); err != nil {
		return err
	}
	for name, v := range map[string]uint64{
		bpf.ObserverVarTcpV4RcvAt: k.rcv[0].at, bpf.ObserverVarTcpV4RcvLen: k.rcv[0].len,
		bpf.ObserverVarTcpV6RcvAt: k.rcv[1].at, bpf.ObserverVarTcpV6RcvLen: k.rcv[1].len,
	} {
		if err := set(name, k.listenerDrops, v); err != nil {
			return err
		}
	}
	if capture == bpf.ObserverCaptureModeCAPTURE_OFF {
		spec.Maps["req_heads"].MaxEntries = 1 // never written
		return nil
	}
	return set(bpf.ObserverVarCaptureHeads, true, capture)
}

// takePrograms moves coll's programs into progs' fields, by their ebpf
// tags; those keepHookSet left out stay nil.
func takePrograms(coll *ebpf.Collection, progs *bpf.ObserverPrograms) {
	v := reflect.ValueOf(progs).Elem()
	for i := range v.NumField() {
		if p := coll.DetachProgram(v.Type().Field(i).Tag.Get("ebpf")); p != nil {
			v.Field(i).Set(reflect.ValueOf(p))
		}
	}
}

// captureMode is the C file's capture_heads for Options.CaptureHeads with
// hooks: the socket-layer programs (the sock and fentry sets) find the
// syscall's buffer in its saved registers, the others in its arguments.
func captureMode(on bool, hooks string) bpf.ObserverCaptureMode {
	switch {
	case !on:
		return bpf.ObserverCaptureModeCAPTURE_OFF
	case hooks == HooksSock || hooks == HooksFentry:
		return bpf.ObserverCaptureModeCAPTURE_SOCK
	}
	return bpf.ObserverCaptureModeCAPTURE_SYSCALLS
}

// The sizes of the tables that Options leave 0: the programs' own (enum
// table_size in bpf/lib/types.h).
const (
	DefaultMaxConnections = int(bpf.ObserverTableSizeCONN_MAX)
	DefaultMaxWorkers     = int(bpf.ObserverTableSizeWORKERS_MAX)
	DefaultMaxTransfers   = int(bpf.ObserverTableSizeINFLIGHT_MAX)
)

// connMaps are the maps sized by Options.MaxConnections.
var connMaps = []string{"conns", "fds"}

// MaxConnectionsLimit is the largest Options.MaxConnections: 16M entries,
// some 2.8 GiB of kernel memory for the two tables.
const MaxConnectionsLimit = 1 << 24

// MaxWorkersLimit is the largest Options.MaxWorkers: 4M processes, as many
// as a pid can number (PID_MAX_LIMIT), some 800 MiB of kernel memory.
const MaxWorkersLimit = 1 << 22

// MaxTransfersLimit is the largest Options.MaxTransfers: 4M threads in a
// send or receive at once, as many as a pid can number.
const MaxTransfersLimit = 1 << 22

// sizeTables sizes the kernel's tables as o says.
func sizeTables(spec *ebpf.CollectionSpec, o Options) error {
	if err := checkSizes(o); err != nil {
		return err
	}
	set := func(n int, names ...string) {
		for _, name := range names {
			if n > 0 {
				spec.Maps[name].MaxEntries = uint32(n)
			}
		}
	}
	set(o.MaxConnections, connMaps...)
	set(o.MaxWorkers, "workers", "slots")
	set(o.MaxTransfers, "inflight")
	return nil
}

// checkSizes says which of o's sizes is out of range, and its range.
func checkSizes(o Options) error {
	switch {
	case o.MaxConnections < 0 || o.MaxConnections > MaxConnectionsLimit:
		return fmt.Errorf("%d connections: the connection tables hold 1 to %d", o.MaxConnections, MaxConnectionsLimit)
	case o.MaxWorkers < 0 || o.MaxWorkers == 1 || o.MaxWorkers > MaxWorkersLimit:
		return fmt.Errorf("%d workers: the workers table holds 2 to %d", o.MaxWorkers, MaxWorkersLimit)
	case o.MaxTransfers < 0 || o.MaxTransfers > MaxTransfersLimit:
		return fmt.Errorf("%d transfers: the in-flight transfers table holds 1 to %d", o.MaxTransfers, MaxTransfersLimit)
	}
	return nil
}

// Hooks reports the hook set in use: HooksSock, HooksSyscall or HooksRaw.
func (k *Kernel) Hooks() string { return k.hooks }

// MaxConnections is how many connections the kernel's tables hold.
func (k *Kernel) MaxConnections() int { return int(k.objs.Conns.MaxEntries()) }

// Pinned reports whether the kernel objects are pinned, and so outlive the
// daemon.
func (k *Kernel) Pinned() bool { return k.pins != nil }

// Close detaches the programs and frees the maps, gathering every error.
// Pinned links and maps stay, and the programs go on counting: only
// RemovePins removes them.
func (k *Kernel) Close() error {
	errs := []error{closeAll(k.links)}
	k.links = nil
	errs = append(errs, k.objs.Close())
	if k.stats != nil {
		errs = append(errs, k.stats.Close())
	}
	errs = append(errs, k.pins.close())
	return errors.Join(errs...)
}
