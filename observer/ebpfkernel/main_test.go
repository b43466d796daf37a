package ebpfkernel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer"
)

// These tests load and attach the real programs (root and BTF needed) and
// check the kernel's counts against what the test's own clients did, per
// worker pid.

func TestMain(m *testing.M) {
	// The main thread stays the main goroutine's: a test that moves a
	// thread of its own into another namespace (newNetNS) must not get
	// the main thread, whose namespaces are the process's in /proc/self.
	runtime.LockOSThread()
	runHeld()
	forkpool.Run()
	os.Exit(m.Run())
}

// hookSets returns every hook set this kernel can run.
func hookSets(t testing.TB) []string { return testutil.HookSets(t, AvailableHooks) }

// carries says whether the kernel carries hook set h, for the tests of
// one set: hookSets, under emulation, leaves some sets to other tests.
func carries(t testing.TB, h string) bool {
	t.Helper()
	sets, err := AvailableHooks()
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(sets, h)
}

// pinnable is the hook set auto picks here, whose links can be pinned.
func pinnable(t testing.TB) string { return hookSets(t)[0] }

// testPinPath returns a pin directory of the test's own under /sys/fs/bpf,
// removed with whatever is pinned in it when the test ends.
func testPinPath(t testing.TB) string { return testutil.PinPath(t, removeTestPins) }

func removeTestPins(dir string) error {
	if _, err := RemovePins(dir); err != nil && !errors.Is(err, ErrNothingPinned) {
		return err
	}
	return nil
}

func TestTestPinsOnBPFFS(t *testing.T) {
	if testutil.BPFFSDir != BPFFSDir {
		t.Errorf("testutil.BPFFSDir %s, want BPFFSDir %s", testutil.BPFFSDir, BPFFSDir)
	}
}

// echoServer answers 100 bytes with 1,000: the workers' outbound peer.
func echoServer(t testing.TB) string {
	return testutil.TCPServer(t, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, 100)); err == nil {
			c.Write(make([]byte, 1000))
		}
	})
}

// watch starts an aggregator on pool with the kernel side k.
func watch(t testing.TB, k *Kernel, pool *forkpool.Pool) *observer.Pool {
	t.Helper()
	p := &observer.Pool{Target: observer.Target{PID: pool.Master}, Proc: observer.Procfs{Root: "/proc"}, Kernel: k, Log: testutil.NewLog(t).Logger}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadFor loads and attaches the programs with hooks and watches pool; all
// is undone when t ends.
func loadFor(t testing.TB, hooks string, pool *forkpool.Pool) (*Kernel, *observer.Pool) {
	t.Helper()
	k, err := Load(Options{Hooks: hooks, Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Unwatch(pool.Master); err != nil {
			t.Errorf("unwatch: %v", err)
		}
		if err := k.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return k, watch(t, k, pool)
}

// agree returns nil when the dump shows, for every pid the clients reached,
// exactly the requests and bytes they counted.
func agree(st *observer.Stats, ts *forkpool.Tallies) error {
	byPID := map[int]observer.Worker{}
	for _, w := range st.Workers {
		byPID[w.PID] = w
	}
	var diffs []string
	for pid, want := range ts.ByPID() {
		w, ok := byPID[pid]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("pid %d missing", pid))
			continue
		}
		if w.Requests != want.Requests || w.TX != want.TX || w.RX != want.RX {
			diffs = append(diffs, fmt.Sprintf("pid %d: requests %d/%d tx %d/%d rx %d/%d (kernel/clients)",
				pid, w.Requests, want.Requests, w.TX, want.TX, w.RX, want.RX))
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

// settleOn waits until the pool's dump agrees with the clients, and
// returns it.
func settleOn(t testing.TB, p *observer.Pool, ts *forkpool.Tallies) *observer.Stats {
	t.Helper()
	var st *observer.Stats
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

// noDrops fails t for anything the kernel side lost.
func noDrops(t testing.TB, st *observer.Stats) {
	t.Helper()
	for name, n := range st.Observer.Dropped {
		if n != 0 {
			t.Errorf("dropped %s = %d", name, n)
		}
	}
}
