package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/workerstats/workerstats/cmd/workerstats/top"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
)

type demoOptions struct {
	workers  int
	requests int
	listen   string
	stats    string
	mode     string
	hooks    string
	exit     bool
}

func newDemoCmd() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start a small pre-fork HTTP pool, watch it, drive traffic and show its stats",
		Long: `demo starts a pre-fork HTTP pool of workerstats' own (a master and --workers
worker processes accepting on one socket), watches it as serve would, sends it
--requests requests, prints the stats JSON, and goes on serving the stats on
--stats with a trickle of traffic until Ctrl-C. In a terminal, instead of the
JSON it shows 'workerstats top' on its own pool, with the trickle going on,
until q. It needs nothing but this binary, and root to count with eBPF;
--mode procfs shows the pool without root, uncounted.`,
		Example: `  sudo workerstats demo
  workerstats read 127.0.0.1:1717     # from another terminal, while the demo runs`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return demo(cmd.Context(), o)
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.workers, "workers", 4, "worker processes in the demo pool")
	f.IntVar(&o.requests, "requests", 400, "requests to send before showing the stats")
	f.StringVar(&o.listen, "listen", "127.0.0.1:0", "address the demo pool serves HTTP on (port 0: any free port)")
	f.StringVar(&o.stats, "stats", defaultStatsAddr, "stats socket, in any form serve takes")
	f.StringVar(&o.mode, "mode", modeAuto, "auto, ebpf or procfs, as serve takes it")
	f.StringVar(&o.hooks, "hooks", defaultHooks, "auto, fentry, sock, syscall or raw, as serve takes it")
	f.BoolVar(&o.exit, "exit", false, "stop once the stats are shown")
	return cmd
}

// daemon returns the options demo runs the daemon with: serve's defaults
// with demo's --stats, --mode and --hooks, and --requests unless in procfs
// mode (so top shows what each worker serves, its 5xx and p99), checked by
// serve's validators.
// The pool's target is left for the demo pool's master, once it runs.
func (o demoOptions) daemon() (daemonOptions, error) {
	p := poolOptions{Stats: o.stats}
	addr, mode, err := p.socket()
	if err != nil {
		return daemonOptions{}, err
	}
	d := daemonOptions{
		mode: o.mode, hooks: o.hooks, requests: o.mode != modeProcfs, maxConns: defaultMaxConns, maxWorkers: defaultMaxWorkers, maxXfers: defaultMaxTransfers,
		proc:          observer.Procfs{Root: defaultProcRoot},
		pools:         []poolSpec{{addr: addr, opts: p, mode: mode}},
		statsMaxConns: statsock.DefaultMaxConns, statsTimeout: statsock.DefaultTimeout, statsMaxAge: defaultStatsMaxAge,
	}
	if err := d.check(); err != nil {
		return daemonOptions{}, err
	}
	if err := checkRemovable(d.pools, nil); err != nil {
		return daemonOptions{}, err
	}
	return d, nil
}

// demo runs the demo: it starts the demo pool, serves its stats in the
// background, drives requests to it, and then, in a terminal without
// --exit, shows top on its stats with a trickle of traffic until top quits;
// otherwise it prints the stats JSON and some hints, and, without --exit,
// goes on serving with a trickle of traffic until ctx ends. The pool is
// stopped whichever way it returns.
func demo(ctx context.Context, o demoOptions) error {
	if err := o.check(); err != nil {
		return err
	}
	d, err := o.daemon()
	if err != nil {
		return err
	}
	pool, err := startDemoPool(ctx, o, d.proc)
	if err != nil {
		return err
	}
	defer pool.stop()

	d.pools[0].target = observer.Target{PID: pool.pid()}
	srv, err := startDemoServer(ctx, d, o.stats)
	if err != nil {
		return err
	}
	defer srv.stop()

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	if err := demoSend(ctx, client, pool.addr, o.requests); err != nil {
		return err
	}
	if !o.exit && isTerminal(os.Stdout) && isTerminal(os.Stdin) {
		return demoTop(ctx, client, pool, srv, o)
	}
	if err := readStatsTo(ctx, os.Stdout, o.stats, readOptions{timeout: 10 * time.Second}); err != nil {
		return err
	}
	printDemoHints(o, pool, pool.workerPIDs(d.proc))
	if o.exit {
		return srv.shutdown()
	}
	fmt.Fprintln(os.Stderr, "Ctrl-C stops the demo; meanwhile it sends a few requests a second.")
	return demoTrickle(ctx, client, pool.addr, srv)
}

// check checks the options: counting needs root unless --mode procfs asks
// for the pool uncounted, and the counts and --stats must be usable.
func (o demoOptions) check() error {
	if os.Geteuid() != 0 && o.mode != modeProcfs {
		return errors.New("demo: counting needs root (eBPF): run sudo workerstats demo, or sudo make demo (--mode procfs shows the pool without root, uncounted)")
	}
	if _, port, err := net.SplitHostPort(o.stats); err == nil && port == "0" {
		return fmt.Errorf("demo --stats %s: port 0 cannot be read back; give a free port, such as 127.0.0.1:1717", o.stats)
	}
	return o.checkCounts()
}

// checkCounts checks --requests and --workers.
func (o demoOptions) checkCounts() error {
	if o.requests < 0 {
		return fmt.Errorf("--requests %d must not be negative", o.requests)
	}
	if o.workers < 1 || o.workers > demoMaxWorkers {
		return fmt.Errorf("--workers %d: want 1 to %d", o.workers, demoMaxWorkers)
	}
	return nil
}

// demoPool is the demo pool as demo runs it: its master, the HTTP address
// it serves on, and the master's exit, reported on done.
type demoPool struct {
	master *exec.Cmd
	addr   string
	done   chan error
}

// startDemoPool starts the demo pool's master and waits until its workers
// run. Once the master is started, any error stops it before returning.
func startDemoPool(ctx context.Context, o demoOptions, proc observer.Procfs) (*demoPool, error) {
	p, err := startDemoMaster(o.workers, o.listen)
	if err != nil {
		return nil, err
	}
	if err := p.waitWorkers(ctx, o.workers, proc); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

// startDemoMaster starts `workerstats demo-pool` and reads the address it
// serves on, the first line of its stdout. The master gets SIGTERM if demo
// dies; if it prints no address, it is stopped.
func startDemoMaster(workers int, listen string) (*demoPool, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	master := exec.Command(self, "demo-pool", "--workers", strconv.Itoa(workers), "--listen", listen)
	master.Stderr = logOutput // held back while top has the terminal
	master.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := master.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if err := master.Start(); err != nil {
		return nil, fmt.Errorf("demo: start the pool: %w", err)
	}
	p := &demoPool{master: master, done: make(chan error, 1)}
	line, err := bufio.NewReader(out).ReadString('\n')
	go func() { p.done <- master.Wait() }()
	if err != nil {
		p.stop()
		return nil, errors.New("demo: the pool did not start (see the lines above)")
	}
	p.addr = strings.TrimSpace(line)
	return p, nil
}

// waitWorkers waits until the master has its workers children.
func (p *demoPool) waitWorkers(ctx context.Context, workers int, proc observer.Procfs) error {
	if err := waitUntil(ctx, 10*time.Second, func() bool {
		kids, err := proc.Children(p.pid())
		return err == nil && len(kids) == workers
	}); err != nil {
		return fmt.Errorf("demo: the pool's %d workers did not start: %w", workers, err)
	}
	return nil
}

// pid is the master's pid.
func (p *demoPool) pid() int { return p.master.Process.Pid }

// workerPIDs returns the pids of the master's children, as they are now.
func (p *demoPool) workerPIDs(proc observer.Procfs) []string {
	var pids []string
	if kids, err := proc.Children(p.pid()); err == nil {
		for _, k := range kids {
			pids = append(pids, strconv.Itoa(k.PID))
		}
	}
	return pids
}

// stop sends the master SIGTERM, on which it stops its workers, and kills
// it if it has not exited within 5 seconds.
func (p *demoPool) stop() {
	p.master.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.master.Process.Kill()
	}
}

// demoServer is the daemon demo runs in the background: serveDaemon's
// result comes on served; stop cancels its context.
type demoServer struct {
	served chan error
	stop   context.CancelFunc
}

// startDemoServer runs serveDaemon for d in the background and waits until
// the stats socket at stats answers. If the daemon ends first (its address
// taken, say), its error is returned; on any error the daemon is stopped.
func startDemoServer(ctx context.Context, d daemonOptions, stats string) (*demoServer, error) {
	serveCtx, stopServe := context.WithCancel(ctx)
	s := &demoServer{served: make(chan error, 1), stop: stopServe}
	go func() {
		s.served <- serveDaemon(serveCtx, d)
	}()
	var serveErr error
	if err := waitUntil(ctx, 30*time.Second, func() bool {
		select {
		case serveErr = <-s.served:
			return true
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := statsock.Read(rctx, stats)
		return err == nil
	}); err != nil {
		stopServe()
		return nil, fmt.Errorf("demo: the stats socket did not answer: %w", err)
	}
	if serveErr != nil {
		stopServe()
		return nil, serveErr
	}
	return s, nil
}

// shutdown stops the daemon and returns what serveDaemon returned.
func (s *demoServer) shutdown() error {
	s.stop()
	return <-s.served
}

// demoSend sends n requests to the pool at addr and waits until the
// stats socket's snapshot is fresh.
func demoSend(ctx context.Context, client *http.Client, addr string, n int) error {
	if err := demoTraffic(ctx, client, addr, n, 8); err != nil {
		return err
	}
	time.Sleep(2 * defaultStatsMaxAge) // past --stats-max-age: a fresh snapshot
	return nil
}

// demoTop shows top on the demo's stats socket while a trickle of traffic
// goes on, until top quits (q) or the daemon or ctx ends; then it stops
// the daemon. The logs are held back while top has the terminal.
func demoTop(ctx context.Context, client *http.Client, pool *demoPool, srv *demoServer, o demoOptions) error {
	trickleCtx, stopTrickle := context.WithCancel(ctx)
	defer stopTrickle()
	topCtx, stopTop := context.WithCancel(ctx)
	defer stopTop()
	trickled := make(chan error, 1)
	go func() {
		trickled <- demoTrickle(trickleCtx, client, pool.addr, srv)
		stopTop()
	}()
	logOutput.hold()
	err := top.Run(topCtx, top.Options{Addr: o.stats, Interval: time.Second, Read: statsock.Read})
	logOutput.release()
	stopTrickle()
	if served := <-trickled; served != nil {
		return served
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "workerstats demo: %d requests and a trickle sent to a pool of %d workers (master %d) at http://%s/; pool stopped.\n",
		o.requests, o.workers, pool.pid(), pool.addr)
	return nil
}

// printDemoHints tells, on stderr, what the demo did and what to try next
// from another terminal; pids are the pool's workers.
func printDemoHints(o demoOptions, pool *demoPool, pids []string) {
	nc := "nc -U " + o.stats
	if host, port, err := net.SplitHostPort(o.stats); err == nil {
		nc = "nc " + cmp.Or(strings.Trim(host, "[]"), "127.0.0.1") + " " + port
	}
	fmt.Fprintf(os.Stderr, `
workerstats demo: %d requests sent to a pool of %d workers (pids %s, master %d) at http://%s/.
Its stats, above, are served on %s. Try, from another terminal:
  workerstats read %s
  %s
  curl http://%s/5000
  kill -9 %s        (the master replaces the worker: see its slot's respawn_count)
`, o.requests, o.workers, strings.Join(pids, ", "), pool.pid(), pool.addr, o.stats, o.stats,
		nc, pool.addr, cmp.Or(strings.Join(pids[:min(1, len(pids))], ""), "WORKER_PID"))
}

// demoTrickle sends a few requests a second to the pool at addr until the
// daemon ends or ctx does (then it stops the daemon), and returns what the
// daemon returned.
func demoTrickle(ctx context.Context, client *http.Client, addr string, srv *demoServer) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-srv.served:
			return err
		case <-ctx.Done():
			return srv.shutdown()
		case <-tick.C:
			if err := demoTraffic(ctx, client, addr, 2, 2); err != nil && ctx.Err() == nil {
				slog.Warn("demo traffic", "error", err)
			}
		}
	}
}

// demoTraffic sends n requests for bodies of random sizes from conc
// keep-alive clients.
func demoTraffic(ctx context.Context, client *http.Client, addr string, n, conc int) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		next  = make(chan int)
	)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				err := demoGet(ctx, client, fmt.Sprintf("http://%s/%d", addr, rand.IntN(20000)))
				if err != nil {
					mu.Lock()
					first = cmp.Or(first, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	return first
}

// demoGet gets url and reads its body to the end.
func demoGet(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("demo traffic: %w", err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return fmt.Errorf("demo traffic: %w", err)
	}
	return nil
}

// waitUntil polls ok every 50 ms until it holds, ctx ends or d passes.
func waitUntil(ctx context.Context, d time.Duration, ok func() bool) error {
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not after %v", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}
