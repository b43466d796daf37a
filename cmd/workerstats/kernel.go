package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/observer"
)

// This file holds serve's and demo's every use of the eBPF observer's own
// names (hook sets, pin path, loading): the rest of the command sees the
// kernel side through loadedKernel.

const defaultHooks = observer.HooksAuto

var defaultPinPath = observer.DefaultPinPath

// checkHooks is --hooks' one validator.
func checkHooks(hooks string) error {
	switch hooks {
	case observer.HooksAuto, observer.HooksSock, observer.HooksSyscall:
		return nil
	}
	return fmt.Errorf("--hooks %q is not one of auto, sock, syscall", hooks)
}

// loadedKernel is the eBPF observer as the daemon's steps use it: the pools
// count through it, unwatched masters are pruned from it, dropPrivileges
// probes it, the run step sweeps it, and it is closed last.
type loadedKernel interface {
	observer.Kernel
	Prune(watched map[int]bool) (int, error)
	CheckAccess() error
	Sweep() error
	Close() error
}

// loadKernel loads the eBPF observer, or says why procfs mode serves
// instead (a nil observer and the reason).
func loadKernel(o daemonOptions, log *slog.Logger) (loadedKernel, string, error) {
	if o.mode == modeProcfs {
		return nil, "--mode procfs", nil
	}
	k, err := observer.LoadEBPF(observer.EBPFOptions{Hooks: o.hooks, BPFStats: o.bpfStats, PinPath: o.pinPath, Log: log.With("component", "ebpf")})
	if err == nil {
		return k, "", nil
	}
	if errors.Is(err, unix.EPERM) && os.Geteuid() != 0 {
		err = fmt.Errorf("%w: run workerstats as root", err)
	}
	var pinErr *observer.PinPathError
	if o.mode == modeEBPF || errors.As(err, &pinErr) {
		return nil, "", err
	}
	log.Warn("eBPF cannot load: serving what procfs shows (pids, memory, status, sockets; request counters stay 0)", "reason", err)
	return nil, err.Error(), nil
}
