package ebpfkernel

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer"
)

// TestListenerScanAnswersFromTheKernel: for a pool whose fd tables the
// daemon does not read (watched without its listeners said), the kernel's
// answer to ScanListeners, given at the first connection a worker takes,
// names exactly the sockets its fd tables show (read here as root); and
// every request is counted, the first included. With sock hooks, accept
// unhooked, the pool's port is adopted by the kernel itself, whether
// another master held it (a restarted pool) or none did (a new pool).
func TestListenerScanAnswersFromTheKernel(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range hookSets(t) {
		for _, portHeld := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/port held by another master %v", hooks, portHeld), func(t *testing.T) {
				pool := forkpool.Start(t, 2, "")
				k, err := Load(Options{Hooks: hooks, Log: testutil.NewLog(t).Logger})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { k.Unwatch(pool.Master); k.Close() })
				// A TCP-only pool watched before: the sock set unhooks accept.
				old := pool.Addr
				if !portHeld {
					old = "127.0.0.1:1"
				}
				if err := k.Listening(4242, []observer.Socket{{Proto: "tcp", Name: old}}); err != nil {
					t.Fatal(err)
				}
				if err := k.FixHooks(true); err != nil {
					t.Fatal(err)
				}
				watchUnread(t, k, pool)
				if err := k.ScanListeners(pool.Master); err != nil {
					t.Fatal(err)
				}
				if _, ok, err := k.ScannedListeners(pool.Master); ok || err != nil {
					t.Fatalf("answered before any connection (%v)", err)
				}

				var ts forkpool.Tallies
				if err := pool.Session(&ts, 20, func(int) int { return 300 }, 0, 0); err != nil {
					t.Fatal(err)
				}
				got, ok, err := k.ScannedListeners(pool.Master)
				if !ok || err != nil {
					t.Fatalf("no answer after 20 requests (%v)", err)
				}
				want := sharedInodes(t, pool)
				if !slices.Equal(sorted(got), want) {
					t.Errorf("the kernel found listeners %v, the fd tables hold %v", sorted(got), want)
				}
				kernelAgrees(t, k, &ts)
				if hooks == HooksFentry || hooks == HooksSock && !connHooked(k) {
					var master uint32
					port := portOf(t, pool.Addr)
					if err := k.objs.ListenPorts.Lookup(ownKey(k, port), &master); err != nil || master != uint32(pool.Master) {
						t.Errorf("port %d is master %d's (%v), want the pool's %d", port, master, err, pool.Master)
					}
				}
			})
		}
	}
}

// watchUnread puts pool's master and workers in the kernel maps the way
// the daemon does for a pool whose fd tables it may not read: nothing
// said of their listeners.
func watchUnread(t testing.TB, k *Kernel, pool *forkpool.Pool) {
	t.Helper()
	watchMaster(t, k, pool.Master)
}

// watchMaster puts master and its workers in the kernel maps, nothing
// said of their listeners.
func watchMaster(t testing.TB, k *Kernel, master int) {
	t.Helper()
	proc := observer.Procfs{Root: "/proc"}
	_, m, err := proc.Stat(master)
	if err != nil {
		t.Fatal(err)
	}
	kids, err := proc.Children(master)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Watch(m, kids); err != nil {
		t.Fatal(err)
	}
}

// sharedInodes are the sockets pool's master holds with a worker, from
// their fd tables.
func sharedInodes(t testing.TB, pool *forkpool.Pool) []uint64 {
	t.Helper()
	kids := pool.WaitWorkers(t, 2)
	inodes, err := observer.Procfs{Root: "/proc"}.SharedSocketInodes(pool.Master, kids[0])
	if err != nil {
		t.Fatal(err)
	}
	return slices.Sorted(maps.Keys(inodes))
}

func sorted(s []uint64) []uint64 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// kernelAgrees waits until the kernel's counts of each pid the clients
// reached equal theirs.
func kernelAgrees(t testing.TB, k *Kernel, ts *forkpool.Tallies) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		counts, err := k.Workers()
		if err != nil {
			t.Fatal(err)
		}
		byPID := map[int]observer.Counters{}
		for _, c := range counts {
			byPID[c.PID] = c
		}
		var diffs []string
		for pid, want := range ts.ByPID() {
			c := byPID[pid]
			if c.Requests != want.Requests || c.TX != want.TX || c.RX != want.RX {
				diffs = append(diffs, fmt.Sprintf("pid %d: requests %d/%d tx %d/%d rx %d/%d (kernel/clients)",
					pid, c.Requests, want.Requests, c.TX, want.TX, c.RX, want.RX))
			}
		}
		if len(diffs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel counts never matched the clients': %s", strings.Join(diffs, "; "))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ownKey is port's key in listen_ports and queue_waits, in the test's
// network namespace.
func ownKey(k *Kernel, port uint32) listenKey { return listenKey{Netns: k.netns, Port: port} }

func portOf(t testing.TB, addr string) uint32 {
	t.Helper()
	port, ok := tcpPort(observer.Socket{Proto: "tcp", Name: addr})
	if !ok {
		t.Fatalf("no port in %q", addr)
	}
	return port
}

// TestUnreadPoolUnhooksAcceptOnceAnswered: sock hooks, a pool found at
// start-up whose fd tables the daemon could not read keeps accept and
// close hooked past the moment attachments are fixed (its listeners
// unknown), every request counted; once the kernel's answer says it
// listens on TCP only, they are detached (which needs no privilege) and
// its connections are adopted from its port, every request still counted.
func TestUnreadPoolUnhooksAcceptOnceAnswered(t *testing.T) {
	testutil.RequireEBPF(t)
	if !carries(t, HooksSock) {
		t.Skip("this kernel has no sock hooks")
	}
	pool := forkpool.Start(t, 2, "")
	k, err := Load(Options{Hooks: HooksSock, Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Unwatch(pool.Master); k.Close() })
	watchUnread(t, k, pool)
	if err := k.FixHooks(true); err != nil {
		t.Fatal(err)
	}
	if !connHooked(k) {
		t.Fatal("a pool whose listeners are unknown left accept and close unhooked")
	}
	if err := k.ScanListeners(pool.Master); err != nil {
		t.Fatal(err)
	}
	var ts forkpool.Tallies
	if err := pool.Session(&ts, 10, func(int) int { return 300 }, 0, 0); err != nil {
		t.Fatal(err)
	}
	kernelAgrees(t, k, &ts)
	inodes, ok, err := k.ScannedListeners(pool.Master)
	if !ok || err != nil {
		t.Fatalf("no answer after 10 requests (%v)", err)
	}
	set := map[uint64]bool{}
	for _, ino := range inodes {
		set[ino] = true
	}
	socks, err := observer.Procfs{Root: "/proc"}.ListeningByInode(set)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Listening(pool.Master, socks); err != nil {
		t.Fatal(err)
	}
	if connHooked(k) {
		t.Errorf("listeners %v answered, TCP only: accept and close still hooked", socks)
	}
	if err := pool.Session(&ts, 10, func(int) int { return 300 }, 0, 0); err != nil {
		t.Fatal(err)
	}
	kernelAgrees(t, k, &ts)
}
