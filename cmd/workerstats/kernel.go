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
const defaultMaxConns = 1 << 17

// untrackedConns is the dump's count of connections the full tables
// could not take.
const untrackedConns = "connections_untracked"

var defaultPinPath = ebpfkernel.DefaultPinPath

// loadedKernel is the eBPF observer as the daemon's steps use it: the pools
// count through it, unwatched masters are pruned from it, dropPrivileges
// probes it, the run step sweeps it, and it is closed last.
type loadedKernel interface {
	observer.Kernel
	Prune(watched map[int]bool) (int, error)
	CheckAccess() error
	FixHooks(everyPoolFound bool) error
	Sweep() error
	Close() error
}

// loadKernel loads the eBPF observer, or says why procfs mode serves
// instead (a nil observer and the reason).
func loadKernel(o daemonOptions, log *slog.Logger) (loadedKernel, string, error) {
	if o.mode == modeProcfs {
		return nil, "--mode procfs", nil
	}
	k, err := ebpfkernel.Load(ebpfkernel.Options{Hooks: o.hooks, BPFStats: o.bpfStats, PinPath: o.pinPath,
		MaxConnections: o.maxConns, CaptureHeads: o.requests, Log: log.With("component", "ebpf")})
	if err == nil && o.requests {
		if err := k.Follow(o.requestVars); err != nil {
			k.Close()
			return nil, "", fmt.Errorf("follow the captured requests: %w", err)
		}
	}
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
	case errors.Is(err, ebpfkernel.ErrNoBTF):
		return false, fmt.Errorf("%w: or serve what procfs shows with --mode procfs", err)
	}
	return false, err
}

// checkMaxConns is --max-connections' one validator.
func checkMaxConns(n int) error {
	if n < 1 || n > ebpfkernel.MaxConnectionsLimit {
		return fmt.Errorf("--max-connections %d: give 1 to %d", n, ebpfkernel.MaxConnectionsLimit)
	}
	return nil
}

// warnUntracked says, once per sweep in which it grew, that the
// connection tables were full: which limit to raise. It returns the count
// now.
func warnUntracked(info observer.ObserverInfo, before uint64, log *slog.Logger) uint64 {
	now := info.Dropped[untrackedConns]
	if now > before {
		log.Warn("the kernel's connection tables are full: connections accepted since are not counted; raise --max-connections", "untracked", now-before, "untracked_total", now)
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
