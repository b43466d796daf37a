package observer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests load and attach the real programs (root and BTF needed) and
// check the kernel's counts against what the test's own clients did, per
// worker pid.

func requireEBPF(t testing.TB) {
	t.Helper()
	var reason string
	switch {
	case os.Geteuid() != 0:
		reason = "needs root to load and attach eBPF programs (run: sudo make test)"
	default:
		if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
			reason = fmt.Sprintf("kernel has no BTF: %v", err)
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("WORKERSTATS_REQUIRE_PRIVILEGED") != "" {
		t.Fatalf("WORKERSTATS_REQUIRE_PRIVILEGED is set but: %s", reason)
	}
	t.Skip(reason)
}

// hookSets returns every hook set this kernel can run.
func hookSets(t testing.TB) []string {
	t.Helper()
	sock, err := SockTracepoints()
	if err != nil {
		t.Fatal(err)
	}
	if sock {
		return []string{HooksSock, HooksSyscall}
	}
	t.Logf("no sock:sock_send_length here: only the syscall hooks run")
	return []string{HooksSyscall}
}

// echoServer answers 100 bytes with 1,000: the workers' outbound peer.
func echoServer(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.ReadFull(c, make([]byte, 100)); err == nil {
					c.Write(make([]byte, 1000))
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func loadFor(t testing.TB, hooks string, pool *forkPool) (*EBPF, *Pool) {
	t.Helper()
	k, err := LoadEBPF(EBPFOptions{Hooks: hooks})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Unwatch(pool.master); err != nil {
			t.Errorf("unwatch: %v", err)
		}
		if err := k.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	p := &Pool{Target: Target{PID: pool.master}, Proc: Procfs{Root: "/proc"}, Kernel: k}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return k, p
}

// agree returns nil when the dump shows, for every pid the clients reached,
// exactly the requests and bytes they counted.
func agree(st *Stats, ts *tallies) error {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	byPID := map[int]Worker{}
	for _, w := range st.Workers {
		byPID[w.PID] = w
	}
	var diffs []string
	for pid, want := range ts.byPID {
		w, ok := byPID[pid]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("pid %d missing", pid))
			continue
		}
		if w.Requests != want.requests || w.TX != want.tx || w.RX != want.rx {
			diffs = append(diffs, fmt.Sprintf("pid %d: requests %d/%d tx %d/%d rx %d/%d (kernel/clients)",
				pid, w.Requests, want.requests, w.TX, want.tx, w.RX, want.rx))
		}
		if w.Accepted != w.Closed {
			diffs = append(diffs, fmt.Sprintf("pid %d: %d accepted, %d closed", pid, w.Accepted, w.Closed))
		}
	}
	if len(diffs) > 0 {
		return errors.New(strings.Join(diffs, "; "))
	}
	return nil
}

func settleOn(t testing.TB, p *Pool, ts *tallies) *Stats {
	t.Helper()
	var st *Stats
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		st, err = p.Snapshot(context.Background())
		if err == nil {
			err = agree(st, ts)
		}
		if err == nil {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel counts never matched the clients': %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestKernelCountsMatchClients drives kept-alive sessions, idle connections,
// requests with outbound connections and slow requests into a pool, forks a
// worker mid-run, and requires the kernel's per-pid counts to equal the
// clients' own.
func TestKernelCountsMatchClients(t *testing.T) {
	requireEBPF(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) {
			pool := startForkPool(t, 2, echoServer(t))
			_, p := loadFor(t, hooks, pool)
			var ts tallies
			size := func(i int) int { return (i * 4099) % 70000 }

			// Kept-alive sessions: every request on a connection counts.
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for s := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- pool.session(&ts, 25, func(i int) int { return size(s*25 + i) }, 0, s%4/3)
				}()
			}
			// Connections that close without a byte are not requests.
			for range 10 {
				c, err := net.Dial("tcp", pool.addr)
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			st := settleOn(t, p, &ts)
			var accepted, requests uint64
			for _, w := range st.Workers {
				accepted += w.Accepted
				requests += w.Requests
			}
			if requests != 400 || accepted != 26 {
				t.Errorf("400 requests on 16 sessions and 10 idle connections: kernel saw %d requests on %d connections", requests, accepted)
			}

			// A slow request shows its worker busy while it runs and adds
			// its time to running_time once answered.
			done := make(chan error, 1)
			go func() { done <- pool.session(&ts, 1, func(int) int { return 10 }, 300, 0) }()
			busy := false
			for range 100 {
				st, err := p.Snapshot(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				if st.Load == 1 {
					busy = true
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if !busy {
				t.Error("no worker showed busy during a 300 ms request")
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			st = settleOn(t, p, &ts)
			var rt uint64
			for _, w := range st.Workers {
				rt += w.RunningTime
				if w.Status != "idle" {
					t.Errorf("worker %d is %s after every request ended", w.ID, w.Status)
				}
			}
			if rt < 300000 || rt > 2000000 {
				t.Errorf("running_time sums to %d us, want about 300000 from the slow request", rt)
			}

			// A kept-alive connection waiting for its next request is not
			// a request in progress: its worker is idle once the answer
			// has gone out, busy while it computes the next.
			c, err := net.Dial("tcp", pool.addr)
			if err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(c)
			answer := func(req string) {
				head, err := r.ReadString('\n')
				var pid, n int
				if _, serr := fmt.Sscan(head, &pid, &n); err != nil || serr != nil {
					t.Fatalf("kept-alive request %q: %q %v", req, head, err)
				}
				if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
					t.Fatal(err)
				}
				ts.add(pid, len(req), len(head)+n)
			}
			load := func() uint64 {
				p.mu.Lock()
				p.last = nil // a fresh read, not a shared snapshot
				p.mu.Unlock()
				st, err := p.Snapshot(context.Background())
				if err != nil {
					t.Fatal(err)
				}
				return st.Load
			}
			io.WriteString(c, "100 0 0\n")
			answer("100 0 0\n")
			time.Sleep(ResponseIdle + 50*time.Millisecond)
			if l := load(); l != 0 {
				t.Errorf("with a kept-alive connection waiting for its next request: load %d, want 0", l)
			}
			io.WriteString(c, "10 300 0\n")
			time.Sleep(100 * time.Millisecond)
			if l := load(); l != 1 {
				t.Errorf("while the kept-alive connection's second request runs: load %d, want 1", l)
			}
			answer("10 300 0\n")
			c.Close()

			// A worker forked after the observer started is followed from
			// its first request.
			syscall.Kill(pool.master, syscall.SIGUSR1)
			kids := pool.waitWorkers(t, 3)
			newPID := kids[2].PID
			for i := 0; ; i++ {
				if err := pool.session(&ts, 3, size, 0, 0); err != nil {
					t.Fatal(err)
				}
				ts.mu.Lock()
				served := ts.byPID[newPID] != nil
				ts.mu.Unlock()
				if served {
					break
				}
				if i > 2000 {
					t.Fatalf("the new worker %d never accepted a connection", newPID)
				}
			}
			st = settleOn(t, p, &ts)
			if w := st.Workers[len(st.Workers)-1]; w.PID != newPID || w.ID != 3 || w.RespawnCount != 1 {
				t.Errorf("new worker: got slot %d pid %d respawn_count %d, want slot 3 pid %d respawn_count 1", w.ID, w.PID, w.RespawnCount, newPID)
			}
			for name, n := range st.Observer.Dropped {
				if n != 0 {
					t.Errorf("dropped %s = %d", name, n)
				}
			}
		})
	}
}

// TestHooksUnavailableIsOneClearError: asking for hooks the kernel lacks, or
// for an unknown set, fails with a message that says what to do.
func TestHooksUnavailableIsOneClearError(t *testing.T) {
	if _, err := chooseHooks(HooksSock, false, false); err == nil || !strings.Contains(err.Error(), "--hooks syscall") {
		t.Errorf("sock hooks on a kernel without them: %v", err)
	}
	if _, err := chooseHooks("kprobe", true, true); err == nil || !strings.Contains(err.Error(), "auto, sock, syscall") {
		t.Errorf("unknown hooks: %v", err)
	}
	for _, c := range []struct {
		want           string
		sock, sendfile bool
		got            string
	}{
		{HooksAuto, true, true, HooksSock},
		{HooksAuto, true, false, HooksSyscall}, // 6.3-6.4: sendfile would be missed
		{HooksAuto, false, false, HooksSyscall},
		{"", false, false, HooksSyscall},
		{HooksSock, true, false, HooksSock}, // asked for: warned, not refused
		{HooksSyscall, true, true, HooksSyscall},
	} {
		if got, err := chooseHooks(c.want, c.sock, c.sendfile); err != nil || got != c.got {
			t.Errorf("chooseHooks(%q, sock=%v, sendfile=%v) = %q, %v; want %q", c.want, c.sock, c.sendfile, got, err, c.got)
		}
	}
	if !sendfileReachesSendmsg() {
		t.Logf("this kernel's sendfile bypasses sock_sendmsg: auto picks the syscall hooks")
	}
}

// TestPruneDropsUnwatchedMasters: entries an earlier run left in pinned
// maps for masters no pool watches now go; the watched master's stay.
func TestPruneDropsUnwatchedMasters(t *testing.T) {
	requireEBPF(t)
	k, err := LoadEBPF(EBPFOptions{Hooks: HooksSyscall})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	// Pids above the kernel's pid_max: no process can have them.
	old, cur := Proc{PID: 1 << 23, StartTicks: 1}, Proc{PID: 1<<23 + 10, StartTicks: 2}
	if err := k.Watch(old, []Proc{{PID: old.PID + 1, StartTicks: 3}, {PID: old.PID + 2, StartTicks: 4}}); err != nil {
		t.Fatal(err)
	}
	if err := k.Watch(cur, []Proc{{PID: cur.PID + 1, StartTicks: 5}}); err != nil {
		t.Fatal(err)
	}
	defer k.Unwatch(cur.PID)
	n, err := k.Prune(map[int]bool{cur.PID: true})
	if err != nil || n != 3 {
		t.Fatalf("Prune = %d, %v; want the old master and its 2 workers", n, err)
	}
	ws, err := k.Workers()
	if err != nil {
		t.Fatal(err)
	}
	if len(ws) != 1 || ws[0].PID != cur.PID+1 || ws[0].Master != cur.PID {
		t.Errorf("workers left: %+v, want only %d of master %d", ws, cur.PID+1, cur.PID)
	}
}
