package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
)

const (
	modeAuto   = "auto"
	modeEBPF   = "ebpf"
	modeProcfs = "procfs"
)

type serveOptions struct {
	mode     string
	pid      int
	stats    string
	hooks    string
	bpfStats bool
	procRoot string

	statsHTTP     bool
	statsMinified bool
	statsChmod    string
	statsChown    string
	statsMaxConns int
	statsTimeout  time.Duration
	statsMaxAge   time.Duration
}

func newServeCmd() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve --pid MASTER_PID --stats ADDR",
		Short: "Watch a pool's workers and serve their stats",
		Long: `serve watches the direct children of the master process --pid as its workers,
counts their requests in the kernel, and serves uWSGI stats JSON on --stats
in uWSGI's address forms: host:port, :port, [ipv6]:port, /path.sock, @abstract.
It needs root.`,
		Example: `  workerstats serve --pid $(cat /run/uwsgi/app.pid) --stats 127.0.0.1:1717
  workerstats serve --pid 1234 --stats /run/workerstats/app.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.pid, "pid", 0, "PID of the pool's master process (required)")
	f.StringVar(&o.stats, "stats", "127.0.0.1:1717", "stats socket: host:port, :port (all interfaces), [ipv6]:port, /path.sock or @abstract")
	f.BoolVar(&o.statsHTTP, "stats-http", false, "speak HTTP on the stats socket: GET / for the JSON, GET /metrics for Prometheus")
	f.BoolVar(&o.statsMinified, "stats-minified", false, "compact JSON instead of uWSGI's tab-indented layout")
	f.StringVar(&o.statsChmod, "stats-chmod", "600", "mode of a Unix stats socket, in octal")
	f.StringVar(&o.statsChown, "stats-chown", "", "owner of a Unix stats socket: user, user:group or :group")
	f.IntVar(&o.statsMaxConns, "stats-max-conns", statsock.DefaultMaxConns, "stats connections served at once; more are closed at once")
	f.DurationVar(&o.statsTimeout, "stats-timeout", statsock.DefaultTimeout, "longest a stats client may take to send its request and read the answer")
	f.DurationVar(&o.statsMaxAge, "stats-max-age", 100*time.Millisecond, "readers within this interval share one snapshot of the kernel counters")
	f.StringVar(&o.mode, "mode", modeAuto, "auto (eBPF, else procfs), ebpf, or procfs (no request counters; no eBPF needed)")
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
	switch o.mode {
	case modeAuto, modeEBPF, modeProcfs:
	default:
		return fmt.Errorf("--mode %q is not one of auto, ebpf, procfs", o.mode)
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
	addr, err := statsock.ParseAddr(o.stats)
	if err != nil {
		return err
	}
	mode, err := strconv.ParseUint(o.statsChmod, 8, 32)
	if err != nil || mode > 0o777 {
		return fmt.Errorf("--stats-chmod %q is not an octal file mode such as 600 or 660", o.statsChmod)
	}
	if o.statsMaxConns <= 0 || o.statsTimeout <= 0 || o.statsMaxAge < 0 {
		return errors.New("--stats-max-conns and --stats-timeout must be positive, --stats-max-age not negative")
	}
	ln, err := statsock.Listen(addr, statsock.ListenOptions{Mode: os.FileMode(mode), Owner: o.statsChown})
	if err != nil {
		return err
	}
	defer ln.Close()
	if addr.Wildcard {
		log.Warn("the stats socket listens on all interfaces: anyone who can reach this host can read the pool's stats", "addr", o.stats)
	}

	var (
		kernel observer.Kernel
		ebpfK  *observer.EBPF
	)
	if o.mode != modeProcfs {
		ebpfK, err = observer.LoadEBPF(observer.EBPFOptions{Hooks: o.hooks, BPFStats: o.bpfStats, Log: log.With("component", "ebpf")})
		if err != nil {
			if errors.Is(err, unix.EPERM) && os.Geteuid() != 0 {
				err = fmt.Errorf("%w: run workerstats as root", err)
			}
			if o.mode == modeEBPF {
				return err
			}
			log.Warn("eBPF cannot load: serving what procfs shows (pids, memory, status, sockets; request counters stay 0)", "reason", err)
			kernel = &observer.ProcfsKernel{Proc: proc, Reason: err.Error()}
		} else {
			defer ebpfK.Close()
			kernel = ebpfK
		}
	} else {
		kernel = &observer.ProcfsKernel{Proc: proc, Reason: "--mode procfs"}
	}

	pool := &observer.Pool{Master: o.pid, Proc: proc, Kernel: kernel, Log: log.With("component", "pool"), MaxAge: o.statsMaxAge}
	if err := pool.Start(ctx); err != nil {
		return err
	}
	go maintain(ctx, pool, ebpfK, log)

	srv := &statsock.Server{
		Source:   &observer.JSONSource{Pool: pool, Minified: o.statsMinified},
		HTTP:     o.statsHTTP,
		MaxConns: o.statsMaxConns,
		Timeout:  o.statsTimeout,
		Log:      log.With("component", "statsock"),
	}
	if o.statsHTTP {
		reg := prometheus.NewRegistry()
		reg.MustRegister(&observer.Collector{Snapshot: pool.Snapshot, Log: log.With("component", "metrics")})
		srv.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	}
	info := kernel.Info()
	log.Info("serving stats", "addr", o.stats, "http", o.statsHTTP, "master", o.pid, "mode", info.Mode, "hooks", info.Hooks)
	err = srv.Serve(ctx, ln)
	log.Info("stopped")
	return err
}

// maintain folds exited workers into their slots and, with eBPF (k not
// nil), sweeps the kernel's connection table, so both stay true without
// readers.
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
			if k == nil {
				continue
			}
			if err := k.Sweep(); err != nil {
				log.Warn("sweep failed", "error", err)
			}
		}
	}
}
