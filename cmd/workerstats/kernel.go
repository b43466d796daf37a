package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
)

// This file holds serve's and demo's every use of the eBPF observer's own
// names (hook sets, pin path, loading): the rest of the command sees the
// kernel side through loadedKernel.

const defaultHooks = ebpfkernel.HooksAuto

// defaultMaxConns is --max-connections' default: 131,072 connections,
// 22 MiB of kernel memory for the two tables (make bench).
const defaultMaxConns = ebpfkernel.DefaultMaxConnections

// defaultMaxWorkers is --max-workers' default: the programs' table size.
const defaultMaxWorkers = ebpfkernel.DefaultMaxWorkers

// defaultMaxTransfers is --max-transfers' default: the programs' size of
// the syscall hooks' in-flight table.
const defaultMaxTransfers = ebpfkernel.DefaultMaxTransfers

// limits are the tables the kernel side can fill: the dump's count of
// what a full one left untracked, what that costs, and the flag that
// sizes it.
var limits = []struct{ dropped, what, lost, flag string }{
	{"connections_untracked", "connection tables", "what it could not hold since is not counted", "--max-connections"},
	{"workers_untracked", "workers table", "what it could not hold since is not counted", "--max-workers"},
	{"transfers_untracked", "in-flight transfers table", "the sends and receives it could not hold since are not counted", "--max-transfers"},
}

var defaultPinPath = ebpfkernel.DefaultPinPath

// loadedKernel is the eBPF observer as the daemon's steps use it: the pools
// count through it, the heads it keeps are read, unwatched masters are
// pruned from it, dropPrivileges probes it, the run step sweeps it, and it
// is closed last.
type loadedKernel interface {
	observer.Kernel
	observer.HeadSource
	MaxConnections() int
	Prune(watched map[int]bool) (int, error)
	CheckAccess() error
	FixHooks(everyPoolFound bool) error
	Sweep() error
	Close() error
}

// Discovery drops a pool's kernel entries, and its listeners', through
// the kernel's Unwatch.
var _ observer.Unwatcher = (*ebpfkernel.Kernel)(nil)

// loadKernel loads the eBPF observer, or says why procfs mode serves
// instead (a nil observer and the reason).
func loadKernel(o daemonOptions, log *slog.Logger) (loadedKernel, string, error) {
	if o.mode == modeProcfs {
		return nil, "--mode procfs", nil
	}
	k, err := ebpfkernel.Load(ebpfkernel.Options{Hooks: o.hooks, BPFStats: o.bpfStats, PinPath: o.pinPath,
		MaxConnections: o.maxConns, MaxWorkers: o.maxWorkers, MaxTransfers: o.maxXfers, CaptureHeads: o.requests, NoStatus: !o.requests, Log: log.With("component", "ebpf")})
	if err == nil {
		return k, "", nil
	}
	if errors.Is(err, unix.EPERM) && os.Geteuid() != 0 {
		err = fmt.Errorf("%w: run workerstats as root", err)
	}
	setting, err := settingError(err)
	if o.mode == modeEBPF || setting {
		return nil, "", err
	}
	msg := "eBPF cannot load: serving what procfs shows (pids, memory, status, sockets; request counters stay 0)"
	if o.requests {
		msg = "eBPF cannot load: serving what procfs shows (pids, memory, status, sockets; request counters stay 0, and --requests shows nothing)"
	}
	log.Warn(msg, "reason", err)
	return nil, err.Error(), nil
}

// newFollower is the daemon's one request follower (--requests), which
// reads the heads k keeps when a dump asks. Nil without --requests or
// without eBPF.
func newFollower(k loadedKernel, o daemonOptions, log *slog.Logger) *observer.Follower {
	if k == nil || !o.requests {
		return nil
	}
	return observer.NewFollower(k, o.requestVars, log.With("component", "requests"))
}

// settingError says which flag to change for an error of the kernel side,
// whose messages name none, and reports whether the error is a setting to
// fix (fatal in every mode) rather than a kernel that cannot load the
// programs (a reason to serve from procfs).
func settingError(err error) (setting bool, _ error) {
	var pe *ebpfkernel.PinPathError
	switch {
	case errors.As(err, &pe):
		return true, fmt.Errorf("--pin-path %s: %w; or pass --no-pin", pe.Path, pe.Err)
	case errors.Is(err, ebpfkernel.ErrNoSockTracepoints):
		return true, fmt.Errorf("--hooks sock: %w: use --hooks raw or auto", err)
	case errors.Is(err, ebpfkernel.ErrNoFentry):
		return true, fmt.Errorf("--hooks fentry: %w: use --hooks auto, which picks what this kernel carries", err)
	case errors.Is(err, ebpfkernel.ErrNoBTF):
		return false, fmt.Errorf("%w: or serve what procfs shows with --mode procfs", err)
	}
	return false, err
}

// checkLimits is the one validator of the flags that size the kernel's
// tables.
func checkLimits(d daemonOptions) error {
	ranges := []struct {
		flag      string
		n, lo, hi int
	}{
		{"--max-connections", d.maxConns, 1, ebpfkernel.MaxConnectionsLimit},
		{"--max-workers", d.maxWorkers, 2, ebpfkernel.MaxWorkersLimit},
		{"--max-transfers", d.maxXfers, 1, ebpfkernel.MaxTransfersLimit},
	}
	for _, r := range ranges {
		if r.n < r.lo || r.n > r.hi {
			return fmt.Errorf("%s %d: give %d to %d", r.flag, r.n, r.lo, r.hi)
		}
	}
	return nil
}

// warnUntracked says, once per sweep in which it grew, that a kernel
// table was full, and which limit to raise. It returns the counts now.
func warnUntracked(info observer.ObserverInfo, before map[string]uint64, log *slog.Logger) map[string]uint64 {
	now := map[string]uint64{}
	for _, l := range limits {
		now[l.dropped] = info.Dropped[l.dropped]
		if before != nil && now[l.dropped] > before[l.dropped] {
			log.Warn("the kernel's "+l.what+" is full: "+l.lost+"; raise "+l.flag,
				"untracked", now[l.dropped]-before[l.dropped], "untracked_total", now[l.dropped])
		}
	}
	return now
}

// checkHooks is --hooks' one validator.
func checkHooks(hooks string) error {
	if err := ebpfkernel.CheckHooks(hooks); err != nil {
		return fmt.Errorf("--hooks %w", err)
	}
	return nil
}
