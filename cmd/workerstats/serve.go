package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
)

type serveOptions struct {
	pid      int
	stats    string
	hooks    string
	bpfStats bool
	procRoot string
}

func newServeCmd() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve --pid MASTER_PID --stats ADDR",
		Short: "Watch a pool's workers and serve their stats",
		Long: `serve watches the direct children of the master process --pid as its workers,
counts their requests in the kernel, and serves uWSGI stats JSON on --stats
(host:port, or a Unix socket path). It needs root.`,
		Example: `  workerstats serve --pid $(cat /run/uwsgi/app.pid) --stats 127.0.0.1:1717
  workerstats serve --pid 1234 --stats /run/workerstats/app.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.pid, "pid", 0, "PID of the pool's master process (required)")
	f.StringVar(&o.stats, "stats", "127.0.0.1:1717", "stats socket: host:port or a Unix socket path")
	f.StringVar(&o.hooks, "hooks", observer.HooksAuto, "where the kernel counts bytes: auto, sock (Linux >= 6.3) or syscall")
	f.BoolVar(&o.bpfStats, "bpf-stats", false, "enable kernel.bpf_stats_enabled and report each program's ns per run in the dump")
	f.StringVar(&o.procRoot, "proc", "/proc", "procfs mount to read processes from")
	return cmd
}

func serve(ctx context.Context, o serveOptions) error {
	log := slog.Default()
	observer.Version = "workerstats-" + version
	if o.pid <= 0 {
		return errors.New("--pid is required: give the PID of the pool's master process")
	}
	switch o.hooks {
	case observer.HooksAuto, observer.HooksSock, observer.HooksSyscall:
	default:
		return fmt.Errorf("--hooks %q is not one of auto, sock, syscall", o.hooks)
	}
	proc := observer.Procfs{Root: o.procRoot}
	if _, _, err := proc.Stat(o.pid); err != nil {
		if errors.Is(err, observer.ErrNoProcess) {
			return fmt.Errorf("no process with pid %d: start the pool first, or check --pid", o.pid)
		}
		return err
	}
	ln, err := statsock.Listen(o.stats)
	if err != nil {
		return err
	}
	defer ln.Close()

	k, err := observer.LoadEBPF(observer.EBPFOptions{Hooks: o.hooks, BPFStats: o.bpfStats, Log: log.With("component", "ebpf")})
	if err != nil {
		if errors.Is(err, unix.EPERM) && os.Geteuid() != 0 {
			return fmt.Errorf("%w: run workerstats as root", err)
		}
		return err
	}
	defer k.Close()

	pool := &observer.Pool{Master: o.pid, Proc: proc, Kernel: k, Log: log.With("component", "pool")}
	if err := pool.Start(ctx); err != nil {
		return err
	}
	go maintain(ctx, pool, k, log)

	log.Info("serving stats", "addr", o.stats, "master", o.pid, "hooks", k.Hooks())
	src := statsock.SourceFunc(func(ctx context.Context) ([]byte, error) {
		st, err := pool.Snapshot(ctx)
		if err != nil {
			return nil, err
		}
		return json.MarshalIndent(st, "", "\t")
	})
	err = statsock.Serve(ctx, ln, src, log.With("component", "statsock"))
	log.Info("stopped")
	return err
}

// maintain folds exited workers into their slots and sweeps the kernel's
// connection table, so both stay true without readers.
func maintain(ctx context.Context, pool *observer.Pool, k *observer.EBPF, log *slog.Logger) {
	refresh := time.NewTicker(time.Second)
	defer refresh.Stop()
	sweep := time.NewTicker(10 * time.Second)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			if err := pool.Refresh(); err != nil {
				log.Warn("refresh failed", "error", err)
			}
		case <-sweep.C:
			if err := k.Sweep(); err != nil {
				log.Warn("sweep failed", "error", err)
			}
		}
	}
}
