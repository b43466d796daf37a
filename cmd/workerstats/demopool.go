package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
)

// The demo's pool is a pre-fork HTTP server of workerstats' own: a master
// binds the listening socket and starts N worker processes that inherit it
// and accept on it, replacing any that dies, as uWSGI and gunicorn do. It
// is `workerstats demo-pool` (hidden), started by `workerstats demo`.

const (
	demoRoleEnv    = "WORKERSTATS_DEMO_ROLE" // "worker" in a worker process
	demoListenFD   = 3                       // the inherited socket (ExtraFiles[0])
	demoMaxWorkers = 64
)

func newDemoPoolCmd() *cobra.Command {
	var (
		listen  string
		workers int
	)
	cmd := &cobra.Command{
		Use:    "demo-pool",
		Short:  "The demo's pre-fork HTTP pool (master, or worker when " + demoRoleEnv + "=worker)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Getenv(demoRoleEnv) == "worker" {
				return demoWorker(cmd.Context())
			}
			return demoMaster(cmd.Context(), listen, workers)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:0", "address the pool serves HTTP on")
	cmd.Flags().IntVar(&workers, "workers", 4, "worker processes")
	return cmd
}

// demoMaster binds the socket, prints its address on stdout, keeps workers
// running until ctx ends, then stops them.
func demoMaster(ctx context.Context, listen string, workers int) error {
	if workers < 1 || workers > demoMaxWorkers {
		return fmt.Errorf("--workers %d: want 1 to %d", workers, demoMaxWorkers)
	}
	f, addr, err := demoListen(listen)
	if err != nil {
		return err
	}
	defer f.Close()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo pool: %w", err)
	}
	fmt.Println(addr)

	w := &demoWorkers{self: self, ln: f, exited: make(chan int, workers), running: map[int]*exec.Cmd{}}
	for range workers {
		if err := w.start(); err != nil {
			return err
		}
	}
	return w.supervise(ctx)
}

// demoListen binds listen and returns the socket as a file for the workers
// to inherit, and its address.
func demoListen(listen string) (*os.File, string, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, "", fmt.Errorf("demo pool: %w", err)
	}
	f, err := ln.(*net.TCPListener).File()
	ln.Close()
	if err != nil {
		return nil, "", fmt.Errorf("demo pool: %w", err)
	}
	return f, ln.Addr().String(), nil
}

// demoWorkers are the master's worker processes: self is the binary they
// run, ln the socket they inherit; each one's pid comes on exited when it
// exits.
type demoWorkers struct {
	self    string
	ln      *os.File
	exited  chan int
	running map[int]*exec.Cmd
}

// start starts a worker.
func (w *demoWorkers) start() error {
	c := exec.Command(w.self, "demo-pool")
	c.Env = append(os.Environ(), demoRoleEnv+"=worker")
	c.ExtraFiles = []*os.File{w.ln}
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	// A worker outlives no master.
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := c.Start(); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	w.running[c.Process.Pid] = c
	go func() {
		c.Wait()
		w.exited <- c.Process.Pid
	}()
	return nil
}

// supervise replaces every worker that exits until ctx ends, then sends
// each SIGTERM and waits for them all.
func (w *demoWorkers) supervise(ctx context.Context) error {
	for {
		select {
		case pid := <-w.exited:
			delete(w.running, pid)
			slog.Info("demo worker exited; starting another in its place", "pid", pid)
			time.Sleep(100 * time.Millisecond)
			if err := w.start(); err != nil {
				return err
			}
		case <-ctx.Done():
			for _, c := range w.running {
				c.Process.Signal(syscall.SIGTERM)
			}
			for range w.running {
				<-w.exited
			}
			return nil
		}
	}
}

// demoWorker serves HTTP on the inherited socket: /N answers N bytes after
// a short think time (N% of a millisecond... up to 20 ms), so a reader sees
// busy workers.
func demoWorker(ctx context.Context) error {
	f := os.NewFile(demoListenFD, "listener")
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("demo worker: inherited socket: %w", err)
	}
	pid := strconv.Itoa(os.Getpid())
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n, _ := strconv.Atoi(r.URL.Path[1:])
			n = min(max(n, 0), 1<<20)
			time.Sleep(time.Duration(n%20) * time.Millisecond)
			w.Header().Set("X-Worker", pid)
			w.Header().Set("Content-Length", strconv.Itoa(n))
			buf := make([]byte, min(n, 32<<10))
			for i := range buf {
				buf[i] = 'w'
			}
			for left := n; left > 0; left -= len(buf) {
				w.Write(buf[:min(left, len(buf))])
			}
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       30 * time.Second,
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("demo worker: %w", err)
	}
	return nil
}
