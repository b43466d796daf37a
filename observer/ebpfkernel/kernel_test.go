package ebpfkernel

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer"
)

// TestKernelCountsMatchClients drives kept-alive sessions, idle connections,
// requests with outbound connections and slow requests into a pool, forks a
// worker mid-run, and requires the kernel's per-pid counts to equal the
// clients' own.
func TestKernelCountsMatchClients(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) {
			pool := forkpool.Start(t, 2, echoServer(t))
			k, p := loadFor(t, hooks, pool)
			var ts forkpool.Tallies
			size := func(i int) int { return (i * 4099) % 70000 }

			// Kept-alive sessions: every request on a connection counts.
			var wg sync.WaitGroup
			errs := make(chan error, 64)
			for s := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- pool.Session(&ts, 25, func(i int) int { return size(s*25 + i) }, 0, s%4/3)
				}()
			}
			// Connections that close without a byte are not requests.
			for range 10 {
				c, err := net.Dial("tcp", pool.Addr)
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
			var accepted, requests, rtBefore uint64
			for _, w := range st.Workers {
				accepted += w.Accepted
				requests += w.Requests
				rtBefore += w.RunningTime
			}
			if requests != 400 || accepted != 26 {
				t.Errorf("400 requests on 16 sessions and 10 idle connections: kernel saw %d requests on %d connections", requests, accepted)
			}

			// A slow request shows its worker busy while it runs and adds
			// its time to running_time once answered.
			done := make(chan error, 1)
			go func() { done <- pool.Session(&ts, 1, func(int) int { return 10 }, 300, 0) }()
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
			// Its time alone: the 400 before it are in rtBefore, whatever
			// they took on this machine.
			if slow := rt - rtBefore; slow < 300000 || slow > 1000000 {
				t.Errorf("running_time grew by %d us with the slow request, want about 300000", slow)
			}

			// A kept-alive connection waiting for its next request is not
			// a request in progress: its worker is idle once the answer
			// has gone out, busy while it computes the next.
			c, err := net.Dial("tcp", pool.Addr)
			if err != nil {
				t.Fatal(err)
			}
			r := bufio.NewReader(c)
			answer := func(req string) {
				if err := forkpool.ReadAnswer(r, &ts, len(req)); err != nil {
					t.Fatalf("kept-alive request %q: %v", req, err)
				}
			}
			load := func() uint64 {
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
			syscall.Kill(pool.Master, syscall.SIGUSR1)
			newPID := pool.WaitWorkers(t, 3)[2]
			for i := 0; ; i++ {
				if err := pool.Session(&ts, 3, size, 0, 0); err != nil {
					t.Fatal(err)
				}
				if _, served := ts.ByPID()[newPID]; served {
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
			noDrops(t, st)
			// Recursion misses need no bpf_stats: one entry per program
			// whose misses can lose anything.
			for name := range k.attached() {
				if _, ok := st.Observer.Dropped[recursionPrefix+name]; !ok && !missesHarmless(name) {
					t.Errorf("dropped has no %s%s: %v", recursionPrefix, name, st.Observer.Dropped)
				}
			}
		})
	}
}

// TestHooksUnavailableIsOneClearError: asking for hooks the kernel lacks, or
// for an unknown set, fails with an error the command can say what to do
// about; auto picks what the kernel carries.
func TestHooksUnavailableIsOneClearError(t *testing.T) {
	if _, err := chooseHooks(HooksSock, features{}); !errors.Is(err, ErrNoSockTracepoints) {
		t.Errorf("sock hooks on a kernel without them: %v, want ErrNoSockTracepoints", err)
	}
	refused := errors.New("load an fexit program: operation not permitted")
	if _, err := chooseHooks(HooksFentry, features{fentry: refused}); !errors.Is(err, ErrNoFentry) || !errors.Is(err, refused) {
		t.Errorf("fentry hooks where trampolines are refused: %v, want ErrNoFentry saying why", err)
	}
	if err := CheckHooks("kprobe"); err == nil || err.Error() != `"kprobe" is not one of auto, fentry, sock, syscall, raw` {
		t.Errorf("unknown hooks: %v", err)
	}
	// Where trampolines work, auto takes them on every kernel; the rest
	// is what a kernel that refuses them (this machine's 6.18) gets.
	v66 := features{fentry: refused, sock: true, sendfileSeen: true, tracepointLinks: true}
	v63 := features{fentry: refused, sock: true, tracepointLinks: true}
	v61 := features{fentry: refused, tracepointLinks: true}
	v510 := features{fentry: refused}
	for _, c := range []struct {
		want   string
		kernel features
		got    string
	}{
		{HooksAuto, features{sock: true, sendfileSeen: true, tracepointLinks: true}, HooksFentry},
		{HooksAuto, features{tracepointLinks: true}, HooksFentry},
		{HooksAuto, features{}, HooksFentry}, // 5.10
		{HooksFentry, features{}, HooksFentry},
		{HooksAuto, v66, HooksSock},
		{HooksAuto, v63, HooksRaw}, // 6.3-6.4: sendfile would be missed
		{HooksAuto, v61, HooksRaw}, // cheaper than syscall
		{HooksAuto, v510, HooksRaw},
		{"", v61, HooksRaw},
		{HooksSock, v63, HooksSock}, // asked for: warned, not refused
		{HooksSyscall, v510, HooksSyscall},
		{HooksRaw, v66, HooksRaw},
	} {
		if got, err := chooseHooks(c.want, c.kernel); err != nil || got != c.got {
			t.Errorf("chooseHooks(%q, %+v) = %q, %v; want %q", c.want, c.kernel, got, err, c.got)
		}
	}
	if sets, err := AvailableHooks(); err == nil {
		t.Logf("this kernel carries the hook sets %v", sets)
	}
}

// TestPruneDropsUnwatchedMasters: entries an earlier run left in pinned
// maps for masters no pool watches now go; the watched master's stay.
func TestPruneDropsUnwatchedMasters(t *testing.T) {
	testutil.RequireEBPF(t)
	k, err := Load(Options{Hooks: HooksSyscall})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	// Pids at the top of the range, whose processes (if any) are not
	// children of these fake masters.
	old, cur := observer.Proc{PID: pidLimit - 20, StartTicks: 1}, observer.Proc{PID: pidLimit - 10, StartTicks: 2}
	if err := k.Watch(old, []observer.Proc{{PID: old.PID + 1, StartTicks: 3}, {PID: old.PID + 2, StartTicks: 4}}); err != nil {
		t.Fatal(err)
	}
	if err := k.Watch(cur, []observer.Proc{{PID: cur.PID + 1, StartTicks: 5}}); err != nil {
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
