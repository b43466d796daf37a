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
--stats with a trickle of traffic until Ctrl-C. It needs nothing but this
binary; as root it counts with eBPF, otherwise it shows procfs mode.`,
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
	f.StringVar(&o.hooks, "hooks", defaultHooks, "auto, sock or syscall, as serve takes it")
	f.BoolVar(&o.exit, "exit", false, "stop once the stats are shown")
	return cmd
}

// daemon returns the options demo runs the daemon with: serve's defaults
// with demo's --stats, --mode and --hooks, checked by serve's validators.
// The pool's target is left for the demo pool's master, once it runs.
func (o demoOptions) daemon() (daemonOptions, error) {
	p := poolOptions{Stats: o.stats}
	addr, mode, err := p.socket()
	if err != nil {
		return daemonOptions{}, err
	}
	d := daemonOptions{
		mode: o.mode, hooks: o.hooks, proc: observer.Procfs{Root: defaultProcRoot},
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

func demo(ctx context.Context, o demoOptions) error {
	if o.requests < 0 {
		return fmt.Errorf("--requests %d must not be negative", o.requests)
	}
	if o.workers < 1 || o.workers > demoMaxWorkers {
		return fmt.Errorf("--workers %d: want 1 to %d", o.workers, demoMaxWorkers)
	}
	d, err := o.daemon()
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	master := exec.Command(self, "demo-pool", "--workers", strconv.Itoa(o.workers), "--listen", o.listen)
	master.Stderr = os.Stderr
	master.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	out, err := master.StdoutPipe()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := master.Start(); err != nil {
		return fmt.Errorf("demo: start the pool: %w", err)
	}
	masterDone := make(chan error, 1)
	defer func() {
		master.Process.Signal(syscall.SIGTERM)
		select {
		case <-masterDone:
		case <-time.After(5 * time.Second):
			master.Process.Kill()
		}
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	go func() { masterDone <- master.Wait() }()
	if err != nil {
		return errors.New("demo: the pool did not start (see the lines above)")
	}
	poolAddr := strings.TrimSpace(line)
	proc := d.proc
	if err := waitUntil(ctx, 10*time.Second, func() bool {
		kids, err := proc.Children(master.Process.Pid)
		return err == nil && len(kids) == o.workers
	}); err != nil {
		return fmt.Errorf("demo: the pool's %d workers did not start: %w", o.workers, err)
	}

	d.pools[0].target = observer.Target{PID: master.Process.Pid}
	serveCtx, stopServe := context.WithCancel(ctx)
	defer stopServe()
	served := make(chan error, 1)
	go func() {
		served <- serveDaemon(serveCtx, d)
	}()
	var serveErr error
	if err := waitUntil(ctx, 30*time.Second, func() bool {
		select {
		case serveErr = <-served:
			return true
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		_, err := statsock.Read(rctx, o.stats)
		return err == nil
	}); err != nil {
		return fmt.Errorf("demo: the stats socket did not answer: %w", err)
	}
	if serveErr != nil {
		return serveErr
	}

	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	if err := demoTraffic(ctx, client, poolAddr, o.requests, 8); err != nil {
		return err
	}
	time.Sleep(2 * defaultStatsMaxAge) // past --stats-max-age: a fresh snapshot
	if err := readStatsTo(ctx, os.Stdout, o.stats, readOptions{timeout: 10 * time.Second}); err != nil {
		return err
	}
	var pids []string
	if kids, err := proc.Children(master.Process.Pid); err == nil {
		for _, k := range kids {
			pids = append(pids, strconv.Itoa(k.PID))
		}
	}
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
`, o.requests, o.workers, strings.Join(pids, ", "), master.Process.Pid, poolAddr, o.stats, o.stats,
		nc, poolAddr, cmp.Or(strings.Join(pids[:min(1, len(pids))], ""), "WORKER_PID"))
	if o.exit {
		stopServe()
		return <-served
	}
	fmt.Fprintln(os.Stderr, "Ctrl-C stops the demo; meanwhile it sends a few requests a second.")
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-served:
			return err
		case <-ctx.Done():
			stopServe()
			return <-served
		case <-tick.C:
			if err := demoTraffic(ctx, client, poolAddr, 2, 2); err != nil && ctx.Err() == nil {
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
