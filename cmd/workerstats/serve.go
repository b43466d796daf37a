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
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/metrics"
	"github.com/workerstats/workerstats/observer/requests"
	"github.com/workerstats/workerstats/statsock"
)

const (
	modeAuto   = "auto"
	modeEBPF   = "ebpf"
	modeProcfs = "procfs"
)

// Defaults serve's flags and demo share.
const (
	defaultStatsAddr   = "127.0.0.1:1717"
	defaultStatsChmod  = "600"
	defaultStatsMaxAge = 100 * time.Millisecond
	defaultProcRoot    = "/proc"
)

// maintenance is how often maintain refreshes the pools (follows their
// masters, folds exited workers), sweeps the kernel's connection table
// and, with --discover (0 without), looks for pools.
type maintenance struct{ refresh, sweep, discover time.Duration }

var defaultMaintenance = maintenance{refresh: time.Second, sweep: 10 * time.Second}

// serveFlags are serve's command line as cobra parses it; resolve turns
// them, with --config, into daemonOptions.
type serveFlags struct {
	mode     string
	hooks    string
	bpfStats bool
	requests bool
	reqVars  string
	maxConns int
	maxProcs int
	maxXfers int
	procRoot string
	config   string
	host     hostOptions // --pin-path, --no-pin, --user: privileges.go
	kube     kubeFlags   // --kubeconfig, --node-name, --metrics-labels: kube.go

	discover      bool
	discoverEvery time.Duration
	maxPools      int

	pool poolOptions // the pool given by flags, when there is no --config

	statsMaxConns int
	statsTimeout  time.Duration
	statsMaxAge   time.Duration

	ignored []string // the config's keys that are taken and ignored, and why
}

// daemonOptions are the daemon's options resolved: flags, --config and
// defaults merged, each checked once. serveDaemon takes them; serve's RunE
// and demo build them.
type daemonOptions struct {
	mode        string // modeAuto, modeEBPF or modeProcfs
	hooks       string
	bpfStats    bool
	requests    bool          // --requests: capture request heads
	requestVars requests.Vars // --request-vars: which of their vars to show
	maxConns    int           // --max-connections
	maxWorkers  int           // --max-workers
	maxXfers    int           // --max-transfers
	proc        observer.Procfs
	// pools are the pools watched, each with its stats socket; with
	// discover, the one socket that serves every pool found.
	pools    []poolSpec
	discover *discoverOptions // --discover; nil without
	// poolsFromConfig: a pool that cannot start (two masters of one
	// --name, say) is logged and the config's other pools go on; the one
	// pool a command line names ends the daemon.
	poolsFromConfig bool
	pinPath         string   // "" pins nothing
	user            *account // --user; nil keeps the uid

	statsMaxConns int
	statsTimeout  time.Duration
	statsMaxAge   time.Duration
	ignored       []string // config keys taken and ignored: said once at start

	kube kubeOptions
	// pods names each pool's pod on a Kubernetes node: set by serveDaemon
	// (nil: no cluster).
	pods observer.PodNamer
}

// poolFlags are serve's flags that name one pool: they and a config's
// [[pool]]s exclude each other. With discover the socket's go with it,
// and targetFlags exclude it.
var poolFlags = []string{"pid", "pidfile", "name", "stats", "stats-http", "stats-minified", "stats-chmod", "stats-chown"}

// targetFlags are the poolFlags that name a master: --discover finds them.
var targetFlags = []string{"pid", "pidfile", "name"}

func newServeCmd() *cobra.Command {
	var o serveFlags
	cmd := &cobra.Command{
		Use:   "serve (--pid PID | --pidfile FILE | --name NAME) [--stats ADDR] | --discover [--stats ADDR] | --config FILE",
		Short: "Watch a pool's workers and serve their stats",
		Long: `serve watches the direct children of a pool's master process as its workers,
counts their requests in the kernel, and serves uWSGI stats JSON on --stats
in uWSGI's address forms: host:port, :port, [ipv6]:port, /path.sock, @abstract.

The master is --pid PID, the process named in --pidfile FILE (read again when
the master restarts and rewrites it), or the one master called --name NAME
(uwsgi, gunicorn, php-fpm, nginx...). With --config FILE, one daemon watches
several pools, each with its own stats socket. With --discover, it watches
every pre-fork master on the node, in or out of containers, as each starts
and until it exits, and serves them all over HTTP on the one --stats socket:
GET / lists the pools, GET /pools/ID is each one's uWSGI JSON, GET /metrics
all of them. It needs root.`,
		Example: `  workerstats serve --pidfile /run/uwsgi/app.pid --stats 127.0.0.1:1717
  workerstats serve --name php-fpm --stats /run/workerstats/fpm.sock
  workerstats serve --discover --stats 127.0.0.1:1717
  workerstats serve --config /etc/workerstats/workerstats.toml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := o.resolve(cmd.Flags().Changed)
			if err != nil {
				return err
			}
			return serveDaemon(cmd.Context(), d)
		},
	}
	o.addFlags(cmd.Flags())
	return cmd
}

// addFlags defines serve's flags on f.
func (o *serveFlags) addFlags(f *pflag.FlagSet) {
	f.IntVar(&o.pool.PID, "pid", 0, "PID of the pool's master process")
	f.StringVar(&o.pool.PIDFile, "pidfile", "", "the master's pidfile, followed when the master restarts")
	f.StringVar(&o.pool.Name, "name", "", "the master's process name: uwsgi, gunicorn, php-fpm, nginx...")
	f.BoolVar(&o.discover, "discover", false, "watch every pre-fork master on the node (uwsgi, gunicorn, php-fpm, nginx...), in or out of containers, as each starts and until it exits, all served over HTTP on --stats")
	f.DurationVar(&o.discoverEvery, "discover-interval", defaultDiscoverEvery, "with --discover, how often to look for masters started or exited")
	f.IntVar(&o.maxPools, "max-pools", defaultMaxPools, "with --discover, pools watched at once; a master found beyond them is not watched, and the log says so")
	f.StringVar(&o.pool.Stats, "stats", defaultStatsAddr, "stats socket: host:port, :port (all interfaces), [ipv6]:port, /path.sock or @abstract; with --discover it speaks HTTP, --stats-http or not")
	f.BoolVar(&o.pool.StatsHTTP, "stats-http", false, "speak HTTP on the stats socket: GET / for the JSON, GET /metrics for Prometheus (--discover always does)")
	f.BoolVar(&o.pool.StatsMinified, "stats-minified", false, "compact JSON instead of uWSGI's tab-indented layout")
	f.StringVar(&o.pool.StatsChmod, "stats-chmod", defaultStatsChmod, "mode of a Unix stats socket, in octal")
	f.StringVar(&o.pool.StatsChown, "stats-chown", "", "owner of a Unix stats socket: user, user:group or :group")
	f.StringVar(&o.config, "config", "", "TOML file with one [[pool]] per pool to watch (keys as these flags' names), or discover = true")
	f.IntVar(&o.statsMaxConns, "stats-max-conns", statsock.DefaultMaxConns, "stats connections served at once; more are closed at once")
	f.DurationVar(&o.statsTimeout, "stats-timeout", statsock.DefaultTimeout, "longest a stats client may take to send its request and read the answer")
	f.DurationVar(&o.statsMaxAge, "stats-max-age", defaultStatsMaxAge, "readers within this interval share one snapshot of the kernel counters")
	f.StringVar(&o.mode, "mode", modeAuto, "auto (eBPF, else procfs), ebpf, or procfs (no request counters; no eBPF needed)")
	f.StringVar(&o.hooks, "hooks", defaultHooks, "where the kernel counts bytes: auto, fentry (kernel functions, wherever BPF trampolines load; what auto picks there), sock (Linux >= 6.5), syscall, or raw (sys_enter/sys_exit)")
	f.BoolVar(&o.bpfStats, "bpf-stats", false, "enable kernel.bpf_stats_enabled and report each program's ns per run in the dump")
	f.BoolVar(&o.requests, "requests", true, "request detail (eBPF mode): each response's status class and each request's duration, counted in the kernel, and each request's first bytes kept there, read at each dump to show in each worker's cores what it is serving now; --requests=false leaves all of it out")
	f.StringVar(&o.reqVars, "request-vars", requests.AllVars.String(), "with --requests, which vars of a request a core shows: all (as uWSGI, less cookies and authorization), no-query (and no query strings), or none")
	f.IntVar(&o.maxConns, "max-connections", defaultMaxConns, "connections the kernel tracks at once, every pool together; more are not counted, and the dump says how many")
	f.IntVar(&o.maxProcs, "max-workers", defaultMaxWorkers, "processes the kernel tracks, every pool together: masters, workers and each slot's last exited process; more are not counted, and the dump says how many")
	f.IntVar(&o.maxXfers, "max-transfers", defaultMaxTransfers, "with the syscall hooks, sends and receives the kernel follows at once (one per thread inside one), every pool together; more are not counted, and the dump says how many")
	f.Int("capture-ring", 0, "ignored")
	f.MarkDeprecated("capture-ring", "request heads no longer reach the daemon through a ring, and it is ignored")
	f.StringVar(&o.procRoot, "proc", defaultProcRoot, "procfs mount to read processes from")
	o.host.addFlags(f)
	o.kube.addFlags(f)
}

// resolve merges --config into the flags and checks every option once, the
// cheap checks first, into the daemon's options. changed says whether a
// flag was given on the command line: those win over the config.
func (o *serveFlags) resolve(changed func(flag string) bool) (daemonOptions, error) {
	proc := observer.Procfs{Root: o.procRoot}
	specs, err := o.poolSpecs(changed, proc)
	if err != nil {
		return daemonOptions{}, err
	}
	if o.mode == modeProcfs && !changed("requests") {
		o.requests = false // on by default where there is eBPF to keep them
	}
	vars, err := requests.ParseVars(o.reqVars)
	if err != nil {
		return daemonOptions{}, fmt.Errorf("--request-vars %w", err)
	}
	d := daemonOptions{
		mode: o.mode, hooks: o.hooks, bpfStats: o.bpfStats, requests: o.requests, requestVars: vars, maxConns: o.maxConns, maxWorkers: o.maxProcs, maxXfers: o.maxXfers, proc: proc,
		pools: specs, poolsFromConfig: o.config != "", ignored: o.ignored,
		statsMaxConns: o.statsMaxConns, statsTimeout: o.statsTimeout, statsMaxAge: o.statsMaxAge,
	}
	if o.discover {
		d.discover = &discoverOptions{every: o.discoverEvery, maxPools: o.maxPools}
	}
	if err := d.check(); err != nil {
		return daemonOptions{}, err
	}
	if d.kube, err = o.kube.resolve(); err != nil {
		return daemonOptions{}, err
	}
	if !d.poolsFromConfig {
		if err := checkPIDRuns(specs[0].target, proc); err != nil {
			return daemonOptions{}, err
		}
	}
	if d.pinPath, d.user, err = o.host.resolve(changed("pin-path")); err != nil {
		return daemonOptions{}, err
	}
	if err := checkRemovable(d.pools, d.user); err != nil {
		return daemonOptions{}, err
	}
	return d, nil
}

// poolSpecs returns the pools to watch: --config's, the one the flags
// name, or with --discover the one socket that serves them all. With
// none, it says what could be watched.
func (o *serveFlags) poolSpecs(changed func(string) bool, proc observer.Procfs) ([]poolSpec, error) {
	var pools []poolOptions
	if o.config != "" {
		c, err := loadConfig(o.config)
		if err != nil {
			return nil, err
		}
		o.applyConfig(c, changed)
		if err := checkConfig(o.config, c, o.discover); err != nil {
			return nil, err
		}
		for _, name := range poolFlags {
			if changed(name) && !o.discover { // discoverSpecs says which go with discover
				return nil, fmt.Errorf("--%s and --config exclude each other: put the pool in the config file", name)
			}
		}
		pools = c.Pools
	}
	switch {
	case o.discover:
		return o.discoverSpecs(changed)
	case changed("discover-interval") || changed("max-pools"):
		return nil, errors.New("--discover-interval and --max-pools go with --discover: add --discover, or drop them")
	case o.config != "":
		return checkPools(pools, "config "+o.config+": ")
	}
	if o.pool.target() == (observer.Target{}) {
		cands, err := observer.Candidates(proc, os.Getpid())
		if err != nil {
			return nil, err
		}
		return nil, errors.New(noTargetMessage(cands))
	}
	s, err := o.pool.check("serve", "--pid, --pidfile, --name")
	if err != nil {
		return nil, err
	}
	return []poolSpec{s}, nil
}

// applyConfig takes the config's daemon-wide settings, unless the command
// line set them.
func (o *serveFlags) applyConfig(c configFile, changed func(string) bool) {
	set := func(flag string, given bool, apply func()) {
		if given && !changed(flag) {
			apply()
		}
	}
	set("discover", c.Discover, func() { o.discover = true })
	set("discover-interval", c.DiscoverInterval.set, func() { o.discoverEvery = c.DiscoverInterval.Duration })
	set("max-pools", c.MaxPools != 0, func() { o.maxPools = c.MaxPools })
	set("stats", c.Stats != "", func() { o.pool.Stats = c.Stats })
	set("stats-minified", c.StatsMinified, func() { o.pool.StatsMinified = true })
	set("stats-chmod", c.StatsChmod != "", func() { o.pool.StatsChmod = c.StatsChmod })
	set("stats-chown", c.StatsChown != "", func() { o.pool.StatsChown = c.StatsChown })
	set("mode", c.Mode != "", func() { o.mode = c.Mode })
	set("hooks", c.Hooks != "", func() { o.hooks = c.Hooks })
	set("bpf-stats", c.BPFStats, func() { o.bpfStats = true })
	set("requests", c.Requests != nil, func() { o.requests = *c.Requests })
	set("request-vars", c.RequestVars != "", func() { o.reqVars = c.RequestVars })
	set("max-connections", c.MaxConns != 0, func() { o.maxConns = c.MaxConns })
	set("max-workers", c.MaxWorkers != 0, func() { o.maxProcs = c.MaxWorkers })
	set("max-transfers", c.MaxTransfers != 0, func() { o.maxXfers = c.MaxTransfers })
	if c.CaptureRing != 0 {
		o.ignored = append(o.ignored, "capture-ring: request heads no longer reach the daemon through a ring")
	}
	set("stats-max-conns", c.StatsMaxConns != 0, func() { o.statsMaxConns = c.StatsMaxConns })
	set("stats-timeout", c.StatsTimeout.set, func() { o.statsTimeout = c.StatsTimeout.Duration })
	set("stats-max-age", c.StatsMaxAge.set, func() { o.statsMaxAge = c.StatsMaxAge.Duration })
	o.kube.applyConfig(c, changed)
}

// check validates the daemon-wide options, whether from flags, a config or
// demo: each has its one validator here.
func (d *daemonOptions) check() error {
	switch d.mode {
	case modeAuto, modeEBPF, modeProcfs:
	default:
		return fmt.Errorf("--mode %q is not one of auto, ebpf, procfs", d.mode)
	}
	if err := checkHooks(d.hooks); err != nil {
		return err
	}
	if err := checkLimits(*d); err != nil {
		return err
	}
	if d.requestVars != requests.AllVars && !d.requests {
		if d.mode == modeProcfs {
			return errors.New("--request-vars says which vars request detail shows, and procfs mode sees no request: drop --mode procfs or --request-vars")
		}
		return errors.New("--request-vars says which vars --requests shows: drop --requests=false")
	}
	if d.requests && d.mode == modeProcfs {
		return errors.New("--requests needs eBPF: procfs mode sees no request; drop --mode procfs or --requests")
	}
	if d.statsMaxConns <= 0 || d.statsTimeout <= 0 || d.statsMaxAge < 0 {
		return errors.New("--stats-max-conns and --stats-timeout must be positive, --stats-max-age not negative")
	}
	return d.discover.check()
}

// checkPIDRuns says at once that a --pid given on the command line names no
// process: a mistake. Pidfiles and names may be waited for.
func checkPIDRuns(t observer.Target, proc observer.Procfs) error {
	if t.PID == 0 {
		return nil
	}
	if _, err := t.Find(proc); err != nil {
		if errors.Is(err, observer.ErrNoTarget) {
			return fmt.Errorf("%w: start the pool first, or check --pid (--pidfile or --name wait for the master)", err)
		}
		return err
	}
	return nil
}

// servedPool is a pool with its stats socket or, with --discover, the
// one socket that serves every pool found (disc; pool is nil).
type servedPool struct {
	spec poolSpec
	pool *observer.Pool
	disc *discovery
	ln   net.Listener
	srv  *statsock.Server
}

// refresh brings the socket's pools up to date: its pool, or every pool
// discovery found.
func (sp *servedPool) refresh(log *slog.Logger) {
	if sp.disc != nil {
		sp.disc.refresh()
		return
	}
	if err := sp.pool.Refresh(); err != nil {
		log.Warn("refresh failed", "pool", sp.spec.opts.Stats, "error", err)
	}
}

// masters are the masters whose workers the socket's pools count.
func (sp *servedPool) masters() []int {
	if sp.disc != nil {
		return sp.disc.masters()
	}
	return sp.pool.Masters()
}

// watches says what the socket serves, for the log.
func (sp *servedPool) watches() string {
	if sp.disc != nil {
		return "every pre-fork master (--discover)"
	}
	return sp.spec.target.String()
}

// serveDaemon runs the daemon, step by step, until ctx ends or a stats
// server fails. Every stats socket is bound before anything is loaded, so
// an address in use is found out first; the kernel side is closed only
// once the servers and maintain have returned.
func serveDaemon(ctx context.Context, o daemonOptions) error {
	log := slog.Default()
	observer.Version = "workerstats-" + version
	for _, why := range o.ignored {
		log.Warn("a config key is ignored", "key", why)
	}
	if err := narrowBounding(); err != nil {
		return err
	}
	pools, err := bindSockets(o.pools, log)
	if err != nil {
		return err
	}
	defer closeListeners(pools)
	k, procfsReason, err := loadKernel(o, log)
	if err != nil {
		return err
	}
	if k != nil {
		defer k.Close()
	}
	follower := newFollower(k, o, log)
	o.pods = watchPods(ctx, o.kube, log)
	if err := startPools(ctx, pools, k, follower, procfsReason, o, log); err != nil {
		return err
	}
	if k != nil {
		pruneUnwatched(k, pools, log)
		if err := k.FixHooks(everyPoolFound(pools)); err != nil {
			return fmt.Errorf("attach the eBPF programs: %w", err)
		}
	}
	// Attached and bound: keep only what the running daemon needs.
	if err := dropPrivileges(o.user, k, log); err != nil {
		return err
	}
	every := defaultMaintenance
	if o.discover != nil {
		every.discover = o.discover.every
	}
	return serveAndMaintain(ctx, pools, k, every, log)
}

// everyPoolFound says whether every pool has found its master: never
// with --discover, whose pools are yet to come.
func everyPoolFound(pools []*servedPool) bool {
	for _, sp := range pools {
		if sp.disc != nil || sp.pool.Waiting() != "" {
			return false
		}
	}
	return true
}

// bindSockets binds every pool's stats socket, or none.
func bindSockets(specs []poolSpec, log *slog.Logger) ([]*servedPool, error) {
	pools := make([]*servedPool, 0, len(specs))
	for _, s := range specs {
		ln, err := statsock.Listen(s.addr, statsock.ListenOptions{Mode: s.mode, Owner: s.opts.StatsChown})
		if errors.Is(err, statsock.ErrOwner) {
			err = fmt.Errorf("--stats-chown: %w", err)
		}
		if err != nil {
			closeListeners(pools)
			return nil, err
		}
		if s.addr.Wildcard {
			log.Warn("a stats socket listens on all interfaces: anyone who can reach this host can read the pool's stats", "addr", s.opts.Stats)
		}
		pools = append(pools, &servedPool{spec: s, ln: ln})
	}
	return pools, nil
}

// closeListeners closes the stats sockets (a Unix socket's file goes with
// it). Serve closes them too when it stops: closing again is harmless.
func closeListeners(pools []*servedPool) {
	for _, sp := range pools {
		sp.ln.Close()
	}
}

// startPools finds each pool's master (with --discover, every master) and
// builds its stats server. Every pool counts through k, and follows its
// requests through follower when it is not nil (--requests); with k nil
// (procfs mode) each pool gets a procfs kernel of its own, which says
// procfsReason.
func startPools(ctx context.Context, pools []*servedPool, k observer.Kernel, follower *observer.Follower, procfsReason string, o daemonOptions, log *slog.Logger) error {
	for _, sp := range pools {
		plog := log.With("pool", sp.spec.opts.Stats)
		if o.discover != nil {
			sp.disc = newDiscovery(k, follower, procfsReason, o, sp.spec.opts.StatsMinified, log)
			sp.disc.sweep(ctx)
			sp.srv = newStatsServer(sp, o, plog)
			continue
		}
		sp.pool = newPool(sp.spec.target, k, follower, procfsReason, o, plog)
		if err := sp.pool.Start(ctx); err != nil && !errors.Is(err, observer.ErrNoTarget) {
			if errors.Is(err, observer.ErrSeveralMasters) {
				err = fmt.Errorf("%w: choose one with --pid or --pidfile", err)
			}
			// Two masters of one --name, say: a mistake in a command
			// line ends it; a config's other pools go on.
			if !o.poolsFromConfig {
				return err
			}
			plog.Warn("pool not watched yet", "error", err)
		}
		sp.srv = newStatsServer(sp, o, plog)
	}
	return nil
}

// newPool is the pool of target, not started, counting through k or,
// with k nil, a procfs kernel of its own (procfs mode follows one master
// per kernel), following requests through follower when not nil.
func newPool(target observer.Target, k observer.Kernel, follower *observer.Follower, procfsReason string, o daemonOptions, log *slog.Logger) *observer.Pool {
	if k == nil {
		k = &observer.ProcfsKernel{Proc: o.proc, Reason: procfsReason}
	}
	p := &observer.Pool{Target: target, Proc: o.proc, Kernel: k, Log: log.With("component", "pool"), MaxAge: o.statsMaxAge, Pods: o.pods}
	if follower != nil { // a nil *Follower in the field would not be nil: statuses of 0 would show
		p.Follower = follower
	}
	return p
}

// newStatsServer builds the stats server of a started pool, or of
// discovery's pools: the JSON and, with HTTP, the Prometheus metrics.
func newStatsServer(sp *servedPool, o daemonOptions, log *slog.Logger) *statsock.Server {
	srv := &statsock.Server{
		HTTP:     sp.spec.opts.StatsHTTP,
		MaxConns: o.statsMaxConns,
		Timeout:  o.statsTimeout,
		Log:      log.With("component", "statsock"),
	}
	var pools func() []metrics.Pool
	if sp.disc != nil {
		srv.Catalog, pools = catalog{sp.disc.reg}, sp.disc.metricsPools
	} else {
		srv.Source = &observer.JSONSource{Pool: sp.pool, Minified: sp.spec.opts.StatsMinified}
		one := []metrics.Pool{{Snapshot: sp.pool.Snapshot}}
		pools = func() []metrics.Pool { return one }
	}
	if srv.HTTP {
		reg := prometheus.NewRegistry()
		labels := o.kube.labels
		if labels == nil { // demo's options
			labels = metrics.PoolLabels
		}
		reg.MustRegister(metrics.New(labels, pools, log.With("component", "metrics")))
		srv.Metrics = promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true})
	}
	return srv
}

// pruner drops the kernel's entries of masters not in watched.
type pruner interface {
	Prune(watched map[int]bool) (int, error)
}

// pruneUnwatched drops from the pinned maps the entries of masters no pool
// watches, left by an earlier run's pools, so they neither stay counted
// nor fill the map.
func pruneUnwatched(k pruner, pools []*servedPool, log *slog.Logger) {
	watched := map[int]bool{}
	for _, sp := range pools {
		for _, m := range sp.masters() {
			watched[m] = true
		}
	}
	if n, err := k.Prune(watched); err != nil {
		log.Warn("cannot drop unwatched masters from the pinned maps", "error", err)
	} else if n > 0 {
		log.Info("dropped kernel entries of masters no pool watches (left by an earlier run)", "entries", n)
	}
}

// sweeper is the kernel side as the run step sees it: described in the
// log, its connection table swept while the daemon runs. Nil in procfs
// mode.
type sweeper interface {
	Sweep() error
	Info() observer.ObserverInfo
}

// serveAndMaintain serves every pool's stats and runs maintain, all in one
// errgroup, until ctx ends or a server fails (which stops the others and
// maintain). It returns only once every one of them has returned, so the
// caller may close the kernel side: no sweep is in progress then.
func serveAndMaintain(ctx context.Context, pools []*servedPool, k sweeper, every maintenance, log *slog.Logger) error {
	info := observer.ObserverInfo{Mode: modeProcfs}
	if k != nil {
		info = k.Info()
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, sp := range pools {
		log.Info("serving stats", "addr", sp.spec.opts.Stats, "http", sp.spec.opts.StatsHTTP, "target", sp.watches(), "mode", info.Mode, "hooks", info.Hooks)
		g.Go(func() error { return sp.srv.Serve(gctx, sp.ln) })
	}
	g.Go(func() error {
		maintain(gctx, pools, k, every, log)
		return nil
	})
	err := g.Wait()
	log.Info("stopped")
	return err
}

// maintain follows each pool's master and folds exited workers into their
// slots every.refresh, with --discover looks for pools started and
// exited every.discover and, with eBPF (k not nil), sweeps the kernel's
// connection table every.sweep, so all stay true without readers. It
// returns when ctx ends, never in the middle of a sweep.
func maintain(ctx context.Context, pools []*servedPool, k sweeper, every maintenance, log *slog.Logger) {
	refresh := time.NewTicker(every.refresh)
	defer refresh.Stop()
	sweep := time.NewTicker(every.sweep)
	defer sweep.Stop()
	var discover <-chan time.Time // nil without --discover: never ready
	if every.discover > 0 {
		t := time.NewTicker(every.discover)
		defer t.Stop()
		discover = t.C
	}
	var untracked map[string]uint64
	if k != nil {
		untracked = warnUntracked(k.Info(), nil, log)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-refresh.C:
			for _, sp := range pools {
				sp.refresh(log)
			}
		case <-discover:
			for _, sp := range pools {
				if sp.disc != nil {
					sp.disc.sweep(ctx)
				}
			}
		case <-sweep.C:
			if k == nil {
				continue
			}
			if err := k.Sweep(); err != nil {
				log.Warn("sweep failed", "error", err)
			}
			untracked = warnUntracked(k.Info(), untracked, log)
		}
	}
}
