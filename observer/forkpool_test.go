package observer

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A tiny pre-fork pool for the privileged tests: the test binary re-executes
// itself as a master that listens and forks workers sharing the listener.
//
// Protocol, one request per line on a kept-alive connection:
//   "SIZE SLEEP_MS OUTBOUND\n" -> "PID SIZE\n" followed by SIZE bytes
// With OUTBOUND=1 the worker first opens its own connection to
// $POOL_OUTBOUND and exchanges bytes on it. SIGUSR1 to the master forks one
// more worker.

const poolRoleEnv = "WORKERSTATS_TEST_POOL_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(poolRoleEnv) {
	case "master":
		poolMaster()
		return
	case "worker":
		poolWorker()
		return
	}
	os.Exit(m.Run())
}

func poolMaster() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	f, _ := ln.(*net.TCPListener).File()
	n, _ := strconv.Atoi(os.Getenv("POOL_WORKERS"))
	spawn := func() {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), poolRoleEnv+"=worker")
		cmd.ExtraFiles = []*os.File{f}
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, "spawn worker:", err)
			os.Exit(1)
		}
		go cmd.Wait()
	}
	for range n {
		spawn()
	}
	fmt.Println(ln.Addr().String())
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	for range usr1 {
		spawn()
	}
}

func poolWorker() {
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "worker listener:", err)
		os.Exit(1)
	}
	pid := os.Getpid()
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return
				}
				var size, sleepMS, out int
				fmt.Sscan(line, &size, &sleepMS, &out)
				if out == 1 {
					if o, err := net.Dial("tcp", os.Getenv("POOL_OUTBOUND")); err == nil {
						o.Write(make([]byte, 100))
						io.ReadFull(o, make([]byte, 1000))
						o.Close()
					}
				}
				time.Sleep(time.Duration(sleepMS) * time.Millisecond)
				resp := append([]byte(fmt.Sprintf("%d %d\n", pid, size)), make([]byte, size)...)
				if _, err := c.Write(resp); err != nil {
					return
				}
			}
		}()
	}
}

// forkPool is a running test pool.
type forkPool struct {
	master int
	addr   string
}

// startForkPool starts a master with n workers and waits for them.
func startForkPool(t testing.TB, n int, outbound string) *forkPool {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), poolRoleEnv+"=master", fmt.Sprintf("POOL_WORKERS=%d", n), "POOL_OUTBOUND="+outbound)
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
	p := &forkPool{master: cmd.Process.Pid, addr: strings.TrimSpace(line)}
	p.waitWorkers(t, n)
	return p
}

func (p *forkPool) waitWorkers(t testing.TB, n int) []Proc {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		kids, err := (Procfs{Root: "/proc"}).Children(p.master)
		if err == nil && len(kids) == n {
			return kids
		}
		if time.Now().After(deadline) {
			t.Fatalf("test pool: %d workers after 10s (want %d): %v", len(kids), n, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tally is what the clients saw, per worker pid.
type tally struct {
	requests, tx, rx uint64
}

type tallies struct {
	mu    sync.Mutex
	byPID map[int]*tally
}

func (ts *tallies) add(pid int, sent, received int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.byPID == nil {
		ts.byPID = map[int]*tally{}
	}
	x := ts.byPID[pid]
	if x == nil {
		x = &tally{}
		ts.byPID[pid] = x
	}
	x.requests++
	x.rx += uint64(sent)
	x.tx += uint64(received)
}

// session opens one kept-alive connection and sends reqs requests on it.
func (p *forkPool) session(ts *tallies, reqs int, size func(i int) int, sleepMS, outbound int) error {
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for i := range reqs {
		req := fmt.Sprintf("%d %d %d\n", size(i), sleepMS, outbound)
		if _, err := io.WriteString(c, req); err != nil {
			return err
		}
		head, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		var pid, n int
		if _, err := fmt.Sscan(head, &pid, &n); err != nil {
			return fmt.Errorf("bad response head %q", head)
		}
		if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
			return err
		}
		ts.add(pid, len(req), len(head)+n)
	}
	return nil
}
