package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
)

// binPath is the workerstats binary built once for the tests that run it.
var binPath string

func TestMain(m *testing.M) {
	// make vm-test hands the guest a binary built on the host, where a
	// build inside an emulated guest would take minutes.
	if bin := os.Getenv(testutil.BinaryEnv); bin != "" {
		binPath = bin
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "workerstats-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "workerstats")
	out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build workerstats: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freePort(t testing.TB) int {
	t.Helper()
	given.mu.Lock()
	defer given.mu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		// The kernel may hand a port it just freed out again: two calls
		// for one server (its app and its stats socket) must differ.
		if !given.ports[port] {
			given.ports[port] = true
			return port
		}
	}
}

// given is every port freePort has returned in this test binary.
var given = struct {
	mu    sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// readStats reads and decodes a stats dump from addr.
func readStats(addr string) (*observer.Stats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := statsock.Read(ctx, addr)
	if err != nil {
		return nil, err
	}
	var st observer.Stats
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("decode %q: %w", truncate(b), err)
	}
	return &st, nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// daemon is a running `workerstats serve`.
type daemon struct {
	cmd    *exec.Cmd
	addr   string
	log    *bytes.Buffer
	exited chan error
}

// startDaemon runs `workerstats serve` with args and waits until its stats
// socket answers.
func startDaemon(t testing.TB, args ...string) *daemon {
	t.Helper()
	addr, http := "", false
	for i, a := range args {
		if a == "--stats" && i+1 < len(args) {
			addr = args[i+1]
		}
		http = http || a == "--stats-http"
	}
	if http { // read as http://ADDR/, which statsock.Read speaks
		addr = "http://" + addr + "/"
	}
	return startDaemonAt(t, addr, args...)
}

// startDaemonAt is startDaemon for a daemon whose stats socket addr is not
// in args (it is in a --config file).
func startDaemonAt(t testing.TB, addr string, args ...string) *daemon {
	t.Helper()
	// Daemons run at once must not share the default pins: a test that
	// pins gives its own --pin-path.
	pins := false
	for _, a := range args {
		pins = pins || a == "--no-pin" || a == "--pin-path" || strings.HasPrefix(a, "--pin-path=")
	}
	if !pins {
		args = append(args[:len(args):len(args)], "--no-pin")
	}
	// A failed test prints the daemon's log: at debug, it says which
	// worker took which slot and when.
	args = append(args[:len(args):len(args)], "--log-level", "debug")
	return runDaemon(t, addr, exec.Command(binPath, append([]string{"serve"}, args...)...))
}

// runDaemon starts cmd, a `workerstats serve` (possibly under a wrapper
// such as setpriv), stops it with SIGTERM at cleanup, and waits until its
// stats socket addr answers.
func runDaemon(t testing.TB, addr string, cmd *exec.Cmd) *daemon {
	t.Helper()
	d := &daemon{log: &bytes.Buffer{}, exited: make(chan error, 1), addr: addr, cmd: cmd}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.exited <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			d.cmd.Process.Kill()
			<-d.exited
		}
		if t.Failed() {
			t.Logf("workerstats (%s) log:\n%s", strings.Join(d.cmd.Args, " "), d.log.String())
		}
	})
	waitFor(t, 30*time.Second, "workerstats to serve stats", func() error {
		select {
		case err := <-d.exited:
			d.exited <- err
			t.Fatalf("workerstats exited early (%v):\n%s", err, d.log.String())
		default:
		}
		_, err := readStats(d.addr)
		return err
	})
	return d
}

// runCommand runs the workerstats binary to completion.
func runCommand(args ...string) (string, error) {
	cmd := exec.Command(binPath, args...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// parallel runs job(0) .. job(n-1) from conc goroutines, each taking the
// next index, and fails t with the first error (no new jobs start after it).
func parallel(t testing.TB, n, conc int, job func(i int) error) {
	t.Helper()
	var (
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
		errs   = make(chan error, conc)
	)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := job(int(i)); err != nil {
					failed.Store(true)
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// startGroup starts a server as the leader of its own process group and,
// when t ends, stops the group with stop (its clean fast shutdown), then
// SIGKILL if it is not gone within 10 s; if t failed it logs describe().
// The channel closes when the server has exited.
func startGroup(t testing.TB, cmd *exec.Cmd, stop syscall.Signal, describe func() string) <-chan struct{} {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-pid, stop)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Log(describe())
		}
	})
	return exited
}
