// Package forkpool is a tiny pre-fork pool for the privileged tests: the
// test binary re-executes itself as a master that listens and forks workers
// sharing the listener, so a test has a real pool with no server installed.
//
// Protocol, one request per line on a kept-alive connection:
//
//	"SIZE SLEEP_MS OUTBOUND\n" -> "PID SIZE\n" followed by SIZE bytes
//
// With OUTBOUND=1 the worker first opens its own connection to the pool's
// outbound address and exchanges bytes on it (100 out, 1,000 back). SIGUSR1
// to the master forks one more worker.
//
// A test package using it calls Run first in its TestMain.
package forkpool

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	roleEnv     = "WORKERSTATS_TEST_POOL_ROLE"
	workersEnv  = "WORKERSTATS_TEST_POOL_WORKERS"
	outboundEnv = "WORKERSTATS_TEST_POOL_OUTBOUND"
)

// Run runs the pool's master or worker when the test binary was started
// as one, and exits; in the test process itself it returns at once.
func Run() {
	switch os.Getenv(roleEnv) {
	case "master":
		master()
	case "worker":
		worker()
	case "holder":
		holder()
	default:
		return
	}
	os.Exit(0)
}

func master() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	f, _ := ln.(*net.TCPListener).File()
	n, _ := strconv.Atoi(os.Getenv(workersEnv))
	for range n {
		spawn(f)
	}
	fmt.Println(ln.Addr().String())
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	for range usr1 {
		spawn(f)
	}
}

// spawn forks one worker on the listener f.
func spawn(f *os.File) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), roleEnv+"=worker")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "spawn worker:", err)
		os.Exit(1)
	}
	go cmd.Wait()
}

func worker() {
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker listener:", err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go serve(c)
	}
}

// serve answers the requests of one connection until it closes. It first
// peeks at what came (recvfrom with MSG_PEEK), as a server sniffing the
// protocol does: those bytes are read again, and count once.
func serve(c net.Conn) {
	defer c.Close()
	pid := os.Getpid()
	if err := peek(c); err != nil {
		return
	}
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		var size, sleepMS, out int
		fmt.Sscan(line, &size, &sleepMS, &out)
		if out == 1 {
			outbound()
		}
		time.Sleep(time.Duration(sleepMS) * time.Millisecond)
		resp := append([]byte(fmt.Sprintf("%d %d\n", pid, size)), make([]byte, size)...)
		if _, err := c.Write(resp); err != nil {
			return
		}
	}
}

// outbound exchanges bytes on a connection of the worker's own.
func outbound() {
	o, err := net.Dial("tcp", os.Getenv(outboundEnv))
	if err != nil {
		return
	}
	defer o.Close()
	o.Write(make([]byte, 100))
	io.ReadFull(o, make([]byte, 1000))
}

// Pool is a running test pool.
type Pool struct {
	Master int
	Addr   string
}

// Start starts a master with n workers and waits for them; outbound is
// the address workers talk to for OUTBOUND=1 requests. The pool is killed
// when t ends.
func Start(t testing.TB, n int, outbound string) *Pool {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), roleEnv+"=master", fmt.Sprintf("%s=%d", workersEnv, n), outboundEnv+"="+outbound)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.HasPrefix(line, "ERR") {
		t.Fatalf("test pool master: %q %v", line, err)
	}
	p := &Pool{Master: cmd.Process.Pid, Addr: strings.TrimSpace(line)}
	p.WaitWorkers(t, n)
	return p
}

// WaitWorkers waits until the master has n workers and returns their pids
// in the order the master forked them.
func (p *Pool) WaitWorkers(t testing.TB, n int) []int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		kids, err := children(p.Master)
		if err == nil && len(kids) == n {
			return kids
		}
		if time.Now().After(deadline) {
			t.Fatalf("test pool: %d workers after 10s (want %d): %v", len(kids), n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill kills the workers and the master at once (their cleanup only reaps
// them), so the pool's side of each connection closes first: the
// TIME_WAITs stay on its port, not on the clients' ephemeral ones.
func (p *Pool) Kill() {
	kids, _ := children(p.Master)
	for _, pid := range kids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	syscall.Kill(p.Master, syscall.SIGKILL)
}

// children lists pid's children, lowest pid first: the order of forking
// in a test, where pids do not wrap.
func children(pid int) ([]int, error) {
	files, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("no /proc/%d/task/*/children: %v", pid, err)
	}
	var kids []int
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			if k, err := strconv.Atoi(s); err == nil {
				kids = append(kids, k)
			}
		}
	}
	slices.Sort(kids)
	return kids, nil
}

// peek waits for c's first bytes and looks at them without taking them.
func peek(c net.Conn) error {
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return err
	}
	buf := make([]byte, 16)
	var perr error
	err = raw.Read(func(fd uintptr) bool {
		_, _, perr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK)
		return perr != unix.EAGAIN
	})
	return errors.Join(err, perr)
}
