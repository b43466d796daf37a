package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/observer/metrics"
	"github.com/workerstats/workerstats/statsock"
)

const (
	modeAuto   = "auto"
	modeEBPF   = "ebpf"
	modeProcfs = "procfs"

	defaultStatsChmod = "600"
)

type serveOptions struct {
	mode     string
	hooks    string
	bpfStats bool
	procRoot string
	config   string
	host     hostOptions // --pin-path, --no-pin, --user: privileges.go

	pool poolOptions // the pool given by flags, when there is no --config

	statsMaxConns int
	statsTimeout  time.Duration
	statsMaxAge   time.Duration
}

// poolFlags are serve's flags that name one pool: they and --config exclude
// each other.
var poolFlags = []string{"pid", "pidfile", "name", "stats", "stats-http", "stats-minified", "stats-chmod", "stats-chown"}

func newServeCmd() *cobra.Command {
	var o serveOptions
	cmd := &cobra.Command{
		Use:   "serve (--pid PID | --pidfile FILE | --name NAME) [--stats ADDR] | --config FILE",
		Short: "Watch a pool's workers and serve their stats",
		Long: `serve watches the direct children of a pool's master process as its workers,
counts their requests in the kernel, and serves uWSGI stats JSON on --stats
in uWSGI's address forms: host:port, :port, [ipv6]:port, /path.sock, @abstract.

The master is --pid PID, the process named in --pidfile FILE (read again when
the master restarts and rewrites it), or the one master called --name NAME
(uwsgi, gunicorn, php-fpm, nginx...). With --config FILE, one daemon watches
several pools, each with its own stats socket. It needs root.`,
		Example: `  workerstats serve --pidfile /run/uwsgi/app.pid --stats 127.0.0.1:1717
  workerstats serve --name php-fpm --stats /run/workerstats/fpm.sock
  workerstats serve --config /etc/workerstats/workerstats.toml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return serve(cmd.Context(), cmd, o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.pool.PID, "pid", 0, "PID of the pool's master process")
	f.StringVar(&o.pool.PIDFile, "pidfile", "", "the master's pidfile, followed when the master restarts")
	f.StringVar(&o.pool.Name, "name", "", "the master's process name: uwsgi, gunicorn, php-fpm, nginx...")
	f.StringVar(&o.pool.Stats, "stats", "127.0.0.1:1717", "stats socket: host:port, :port (all interfaces), [ipv6]:port, /path.sock or @abstract")
	f.BoolVar(&o.pool.StatsHTTP, "stats-http", false, "speak HTTP on the stats socket: GET / for the JSON, GET /metrics for Prometheus")
	f.BoolVar(&o.pool.StatsMinified, "stats-minified", false, "compact JSON instead of uWSGI's tab-indented layout")
	f.StringVar(&o.pool.StatsChmod, "stats-chmod", defaultStatsChmod, "mode of a Unix stats socket, in octal")
	f.StringVar(&o.pool.StatsChown, "stats-chown", "", "owner of a Unix stats socket: user, user:group or :group")
	f.StringVar(&o.config, "config", "", "TOML file with one [[pool]] per pool to watch (keys as these flags' names)")
	f.IntVar(&o.statsMaxConns, "stats-max-conns", statsock.DefaultMaxConns, "stats connections served at once; more are closed at once")
	f.DurationVar(&o.statsTimeout, "stats-timeout", statsock.DefaultTimeout, "longest a stats client may take to send its request and read the answer")
	f.DurationVar(&o.statsMaxAge, "stats-max-age", 100*time.Millisecond, "readers within this interval share one snapshot of the kernel counters")
	f.StringVar(&o.mode, "mode", modeAuto, "auto (eBPF, else procfs), ebpf, or procfs (no request counters; no eBPF needed)")
	f.StringVar(&o.hooks, "hooks", ebpfkernel.HooksAuto, "where the kernel counts bytes: auto, sock (Linux >= 6.5) or syscall")
	f.BoolVar(&o.bpfStats, "bpf-stats", false, "enable kernel.bpf_stats_enabled and report each program's ns per run in the dump")
	f.StringVar(&o.procRoot, "proc", "/proc", "procfs mount to read processes from")
	o.host.addFlags(f)
	return cmd
}

// poolSpecs returns the pools to watch: --config's, or the one the flags
// name. With neither, it says what could be watched.
func poolSpecs(cmd *cobra.Command, o *serveOptions, proc observer.Procfs) ([]poolSpec, error) {
	if o.config == "" {
		if o.pool.target() == (observer.Target{}) {
			cands, err := observer.Candidates(proc, os.Getpid())
			if err != nil {
				return nil, err
			}
			return nil, errors.New(observer.NoTargetMessage(cands))
		}
		if err := o.pool.target().Valid(); err != nil {
			return nil, fmt.Errorf("--pid, --pidfile, --name: %w", err)
		}
		return checkPools([]poolOptions{o.pool}, "")
	}
	for _, name := range poolFlags {
		if cmd.Flags().Changed(name) {
			return nil, fmt.Errorf("--%s and --config exclude each other: put the pool in the config file", name)
		}
	}
	c, err := loadConfig(o.config)
	if err != nil {
		return nil, err
	}
	// The config's daemon-wide settings, unless the command line set them.
	set := func(flag string, apply func()) {
		if !cmd.Flags().Changed(flag) {
			apply()
		}
	}
	if c.Mode != "" {
		set("mode", func() { o.mode = c.Mode })
	}
	if c.Hooks != "" {
		set("hooks", func() { o.hooks = c.Hooks })
	}
	if c.BPFStats {
		set("bpf-stats", func() { o.bpfStats = true })
	}
	if c.StatsMaxConns != 0 {
		set("stats-max-conns", func() { o.statsMaxConns = c.StatsMaxConns })
	}
	if c.StatsTimeout.set {
		set("stats-timeout", func() { o.statsTimeout = c.StatsTimeout.Duration })
	}
	if c.StatsMaxAge.set {
		set("stats-max-age", func() { o.statsMaxAge = c.StatsMaxAge.Duration })
	}
	return checkPools(c.Pools, "config "+o.config+": ")
}

// servedPool is a pool with its stats socket.
type servedPool struct {
	spec poolSpec
	pool *observer.Pool
	ln   net.Listener
	srv  *statsock.Server
}

func serve(ctx context.Context, cmd *cobra.Command, o serveOptions) error {
	log := slog.Default()
	observer.Version = "workerstats-" + version
	proc := observer.Procfs{Root: o.procRoot}
	specs, err := poolSpecs(cmd, &o, proc)
	if err != nil {
		return err
	}
	switch o.mode {
	case modeAuto, modeEBPF, modeProcfs:
	default:
		return fmt.Errorf("--mode %q is not one of auto, ebpf, procfs", o.mode)
	}
	if err := checkHooks(o.hooks); err != nil {
		return err
	}
	if o.statsMaxConns <= 0 || o.statsTimeout <= 0 || o.statsMaxAge < 0 {
		return errors.New("--stats-max-conns and --stats-timeout must be positive, --stats-max-age not negative")
	}
	// A --pid given on the command line that names no process is a
	// mistake to say at once; pidfiles and names may be waited for.
	if o.config == "" && specs[0].target.PID != 0 {
		if _, err := specs[0].target.Find(proc); err != nil {
			if errors.Is(err, observer.ErrNoTarget) {
				return fmt.Errorf("%w: start the pool first, or check --pid (--pidfile or --name wait for the master)", err)
			}
			return err
		}
	}

	if err := o.host.prepare(specs); err != nil {
		return err
	}
	// Bind every stats socket before loading anything: an address in use
	// is found out first.
	pools := make([]*servedPool, len(specs))
	for i, s := range specs {
		ln, err := statsock.Listen(s.addr, statsock.ListenOptions{Mode: s.mode, Owner: s.opts.StatsChown})
		if err != nil {
			return err
		}
		defer ln.Close()
		if s.addr.Wildcard {
			log.Warn("a stats socket listens on all interfaces: anyone who can reach this host can read the pool's stats", "addr", s.opts.Stats)
		}
		pools[i] = &servedPool{spec: s, ln: ln}
	}

	ebpfK, procfsReason, err := loadKernel(o, log)
	if err != nil {
		return err
	}
	if ebpfK != nil {
		defer ebpfK.Close()
	}
	for _, sp := range pools {
		var kernel observer.Kernel = ebpfK
		if ebpfK == nil {
			// Procfs mode follows one master per observer.
			kernel = &observer.ProcfsKernel{Proc: proc, Reason: procfsReason}
		}
		plog := log.With("pool", sp.spec.opts.Stats)
		sp.pool = &observer.Pool{Target: sp.spec.target, Proc: proc, Kernel: kernel, Log: plog.With("component", "pool"), MaxAge: o.statsMaxAge}
		if err := sp.pool.Start(ctx); err != nil && !errors.Is(err, observer.ErrNoTarget) {
			// Two masters of one --name, say: a mistake in a command
			// line ends it; a config's other pools go on.
			if o.config == "" {
				return err
			}
			plog.Warn("pool not watched yet", "error", err)
		}
		sp.srv = &statsock.Server{
			Source:   &observer.JSONSource{Pool: sp.pool, Minified: sp.spec.opts.StatsMinified},
			HTTP:     sp.spec.opts.StatsHTTP,
			MaxConns: o.statsMaxConns,
			Timeout:  o.statsTimeout,
			Log:      plog.With("component", "statsock"),
		}
		if sp.spec.opts.StatsHTTP {
			reg := prometheus.NewRegistry()
			reg.MustRegister(&metrics.Collector{Snapshot: sp.pool.Snapshot, Log: plog.With("component", "metrics")})
			sp.srv.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
		}
	}
	if ebpfK != nil {
		watched := map[int]bool{}
		for _, sp := range pools {
			for _, m := range sp.pool.Masters() {
				watched[m] = true
			}
		}
		if n, err := ebpfK.Prune(watched); err != nil {
			log.Warn("cannot drop unwatched masters from the pinned maps", "error", err)
		} else if n > 0 {
			log.Info("dropped kernel entries of masters no pool watches (left by an earlier run)", "entries", n)
		}
	}
	// Attached and bound: keep only what the running daemon needs.
	if err := o.host.dropPrivileges(ebpfK, log); err != nil {
		return err
	}
	go maintain(ctx, pools, ebpfK, log)

	g, gctx := errgroup.WithContext(ctx)
	for _, sp := range pools {
		var info observer.ObserverInfo
		if ebpfK != nil {
			info = ebpfK.Info()
		} else {
			info = observer.ObserverInfo{Mode: modeProcfs}
		}
		log.Info("serving stats", "addr", sp.spec.opts.Stats, "http", sp.spec.opts.StatsHTTP, "target", sp.spec.target.String(), "mode", info.Mode, "hooks", info.Hooks)
		g.Go(func() error { return sp.srv.Serve(gctx, sp.ln) })
	}
	err = g.Wait()
	log.Info("stopped")
	return err
}

// loadKernel loads the eBPF observer, or says why procfs mode serves
// instead (nil observer, the reason).
func loadKernel(o serveOptions, log *slog.Logger) (*ebpfkernel.Kernel, string, error) {
	if o.mode == modeProcfs {
		return nil, "--mode procfs", nil
	}
	k, err := ebpfkernel.Load(ebpfkernel.Options{Hooks: o.hooks, BPFStats: o.bpfStats, PinPath: o.host.pin(), Log: log.With("component", "ebpf")})
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
	log.Warn("eBPF cannot load: serving what procfs shows (pids, memory, status, sockets; request counters stay 0)", "reason", err)
	return nil, err.Error(), nil
}

// maintain follows each pool's master and folds exited workers into their
// slots every second and, with eBPF (k not nil), sweeps the kernel's
// connection table, so both stay true without readers.
func maintain(ctx context.Context, pools []*servedPool, k *ebpfkernel.Kernel, log *slog.Logger) {
	refresh := time.NewTicker(time.Second)
	defer refresh.Stop()
	sweep := time.NewTicker(10 * time.Second)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			for _, sp := range pools {
				if err := sp.pool.Refresh(); err != nil {
					log.Warn("refresh failed", "pool", sp.spec.opts.Stats, "error", err)
				}
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
