package ebpfkernel

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer"
)

// Pools in other PID and network namespaces (containers), read from the
// kernel: each worker's own pid, listeners read in the kernel whatever
// their namespace, and queue waits kept apart per namespace.

var loopback = netip.MustParseAddr("127.0.0.1")

// TestReadListenersFromTheKernel: once a scan has answered, the kernel
// reads the pool's listeners as a dump shows them: those in the daemon's
// network namespace exactly as ListeningByInode reads them from sock_diag
// (the accept queue filled by connections nobody accepts, a wildcard and
// an IPv6 address, a Unix path and an abstract name), one in another
// namespace with that namespace's inode, and with no capability. A
// listener closed after the scan is left out, and once the pool is gone
// so is every one.
func TestReadListenersFromTheKernel(t *testing.T) {
	testutil.RequireEBPF(t)
	ns := newNetNS(t)
	door, doorPort := listenTCP(t, nil, netip.AddrPortFrom(loopback, 0), 16)
	queued, queuedPort := listenTCP(t, nil, netip.AddrPortFrom(loopback, 0), 8)
	wildcard, _ := listenTCP(t, nil, netip.AddrPortFrom(netip.IPv4Unspecified(), 0), 16)
	v6, _ := listenTCP(t, nil, netip.AddrPortFrom(netip.IPv6Loopback(), 0), 16)
	path := filepath.Join(t.TempDir(), "sock")
	abstract := fmt.Sprintf("@workerstats-test-%d", os.Getpid())
	other, otherPort := listenTCP(t, ns, netip.AddrPortFrom(loopback, 0), 4)
	closing, closingPort := listenTCP(t, nil, netip.AddrPortFrom(loopback, 0), 16)
	files := []*os.File{door, queued, wildcard, v6, listenUnix(t, path, 5), listenUnix(t, abstract, 6), other, closing}
	const closingAt = 7

	k, err := Load(Options{Hooks: pinnable(t), Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	pool := startHeld(t, files, []int{0}, []int{closingAt})
	closing.Close() // the pool's now
	worker := pool.fork(t, false)
	watchMaster(t, k, pool.Master)
	t.Cleanup(func() { k.Unwatch(pool.Master) })
	if _, ok, err := k.ReadListeners(pool.Master); ok || err != nil {
		t.Fatalf("read before any scan: ok %v, %v", ok, err)
	}
	if err := k.ScanListeners(pool.Master); err != nil {
		t.Fatal(err)
	}
	connect(t, nil, netip.AddrPortFrom(loopback, doorPort), 1) // the worker's accept answers
	connect(t, nil, netip.AddrPortFrom(loopback, queuedPort), 3)
	connect(t, ns, netip.AddrPortFrom(loopback, otherPort), 2)

	socks := readUntil(t, k, pool.Master, "the daemon's namespace's as sock_diag reads them", func(socks []observer.Socket) error {
		return sameAsSockDiag(k, pool.Master, socks)
	})
	name := func(port uint16) string { return "127.0.0.1:" + strconv.Itoa(int(port)) }
	for _, want := range []observer.Socket{
		{Name: name(queuedPort), Proto: "tcp", Queue: 3, MaxQueue: 8, NetNS: k.netns},
		{Name: name(otherPort), Proto: "tcp", Queue: 2, MaxQueue: 4, NetNS: ns.inode},
		{Name: path, Proto: "unix", MaxQueue: 5, NetNS: k.netns},
		{Name: abstract, Proto: "unix", MaxQueue: 6, NetNS: k.netns},
	} {
		if !slices.Contains(socks, want) {
			t.Errorf("no %+v among %+v", want, socks)
		}
	}
	var dropped []observer.Socket
	if err := withoutCapabilities(t, func() (err error) {
		dropped, _, err = k.ReadListeners(pool.Master)
		return err
	}); err != nil {
		t.Errorf("read with no capability: %v", err)
	} else if !slices.Equal(dropped, socks) {
		t.Errorf("read with no capability: %+v, with them %+v", dropped, socks)
	}

	pool.closeListener(t, worker, closingAt)
	readUntil(t, k, pool.Master, "the closed listener left out", func(after []observer.Socket) error {
		want := slices.DeleteFunc(slices.Clone(socks), func(s observer.Socket) bool { return s.Name == name(closingPort) })
		if len(want) != len(socks)-1 || !slices.Equal(after, want) {
			return fmt.Errorf("read %+v, want %+v", after, want)
		}
		return nil
	})

	pool.kill(t, worker)
	for _, f := range files {
		f.Close()
	}
	readUntil(t, k, pool.Master, "none once the pool is gone", func(after []observer.Socket) error {
		if len(after) != 0 {
			return fmt.Errorf("read %+v", after)
		}
		return nil
	})
}

// readUntil reads master's listeners until check passes, and returns them.
func readUntil(t testing.TB, k *Kernel, master int, what string, check func([]observer.Socket) error) []observer.Socket {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		socks, ok, err := k.ReadListeners(master)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if err = check(socks); err == nil {
				return socks
			}
		} else {
			err = errors.New("no answer yet")
		}
		if time.Now().After(deadline) {
			t.Fatalf("listeners read in the kernel, %s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sameAsSockDiag says whether socks, but for those of other network
// namespaces, are what ListeningByInode reads of the scan's answer.
func sameAsSockDiag(k *Kernel, master int, socks []observer.Socket) error {
	inodes, ok, err := k.ScannedListeners(master)
	if err != nil || !ok {
		return fmt.Errorf("scanned listeners: %v %v", ok, err)
	}
	set := map[uint64]bool{}
	for _, ino := range inodes {
		set[ino] = true
	}
	diag, err := observer.Procfs{Root: "/proc"}.ListeningByInode(set)
	if err != nil {
		return err
	}
	var own []observer.Socket
	for _, s := range socks {
		if s.NetNS == k.netns {
			s.NetNS = 0
			own = append(own, s)
		}
	}
	if !slices.Equal(own, diag) {
		return fmt.Errorf("read %+v, sock_diag %+v", own, diag)
	}
	return nil
}

// withoutCapabilities runs f on a thread of its own with no effective
// capability; where the kernel wants CAP_BPF for bpf(2) on descriptors
// already held (before 5.19, with unprivileged eBPF disabled: the daemon
// keeps it there, see CheckAccess), with that one alone.
func withoutCapabilities(t testing.TB, f func() error) error {
	t.Helper()
	err := onThreadWith(false, f)
	if errors.Is(err, unix.EPERM) {
		t.Logf("with no capability: %v; again with CAP_BPF, as the daemon keeps it on this kernel", err)
		err = onThreadWith(true, f)
	}
	return err
}

// onThreadWith runs f on a locked thread whose effective capabilities
// are none, or CAP_BPF alone; the thread ends with it.
func onThreadWith(capBPF bool, f func() error) error {
	errc := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- err
			return
		}
		data[0].Effective, data[1].Effective = 0, 0
		if capBPF {
			data[unix.CAP_BPF/32].Effective = 1 << (unix.CAP_BPF % 32)
		}
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("drop capabilities: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// kill kills the master and worker, and waits until the worker is gone.
func (p *heldPool) kill(t testing.TB, worker int) {
	t.Helper()
	syscall.Kill(worker, syscall.SIGKILL)
	syscall.Kill(p.Master, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(worker)); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still there", worker)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestQueueWaitsApartPerNetworkNamespace: two listeners on the same port
// in two network namespaces, each said with its namespace, have their
// accept queue waits timed apart, under every hook set (the sock set
// adopting the connections by namespace and port).
func TestQueueWaitsApartPerNetworkNamespace(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) {
			ns := newNetNS(t)
			host, port := listenTCP(t, nil, netip.AddrPortFrom(loopback, 0), 64)
			inNS, _ := listenTCP(t, ns, netip.AddrPortFrom(loopback, port), 64)
			k, err := Load(Options{Hooks: hooks, Log: testutil.NewLog(t).Logger})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { k.Close() })
			pool := startHeld(t, []*os.File{host, inNS}, []int{0, 1}, nil)
			pool.fork(t, false)
			watchMaster(t, k, pool.Master)
			t.Cleanup(func() { k.Unwatch(pool.Master) })
			name := "127.0.0.1:" + strconv.Itoa(int(port))
			socks := []observer.Socket{{Name: name, Proto: "tcp"}, {Name: name, Proto: "tcp", NetNS: ns.inode}}
			if err := k.Listening(pool.Master, socks); err != nil {
				t.Fatal(err)
			}
			connect(t, nil, netip.AddrPortFrom(loopback, port), 3)
			connect(t, ns, netip.AddrPortFrom(loopback, port), 5)
			want := []uint64{3, 5}
			deadline := time.Now().Add(10 * time.Second)
			for {
				var got []uint64
				for _, s := range socks {
					var n uint64
					if d := k.QueueWait(s); d != nil {
						n = d.Count
					}
					got = append(got, n)
				}
				if slices.Equal(got, want) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("queue waits timed %v (this namespace's, the other's), want %v", got, want)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestWorkersOwnPIDs: each worker's pid in its own PID namespace is
// counted with it: a host worker's is its pid, whether the daemon added
// it or the kernel saw it forked; a worker forked into a new PID
// namespace has 1 there, whether added or forked.
func TestWorkersOwnPIDs(t *testing.T) {
	testutil.RequireEBPF(t)
	pool := forkpool.Start(t, 2, "")
	k, _ := loadFor(t, pinnable(t), pool)
	if err := syscall.Kill(pool.Master, syscall.SIGUSR1); err != nil { // one more, forked while watched
		t.Fatal(err)
	}
	want := map[int]int{}
	for _, pid := range pool.WaitWorkers(t, 3) {
		want[pid] = pid
	}
	held := startHeld(t, nil, nil, nil)
	want[held.fork(t, true)] = 1 // added by Watch
	watchMaster(t, k, held.Master)
	t.Cleanup(func() { k.Unwatch(held.Master) })
	want[held.fork(t, true)] = 1 // forked while watched

	deadline := time.Now().Add(10 * time.Second)
	for {
		counts, err := k.Workers()
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]int{}
		for _, c := range counts {
			if _, ok := want[c.PID]; ok && !c.Exited {
				got[c.PID] = c.NSPID
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("own pids by pid %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWatchedPortsFollowTheKeys: a port's bit is set while a key of
// queue_waits or listen_ports (sock hooks) has it, in any namespace, and
// cleared once none has.
func TestWatchedPortsFollowTheKeys(t *testing.T) {
	testutil.RequireEBPF(t)
	k, err := Load(Options{Hooks: pinnable(t), Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	bit := func(port uint32) bool {
		var w uint64
		if err := k.objs.WatchedPorts.Lookup(port/64, &w); err != nil {
			t.Fatal(err)
		}
		return w&(1<<(port%64)) != 0
	}
	const other = 4026531999 // a namespace's inode, as the kernel numbers them
	if err := k.Listening(1, []observer.Socket{{Proto: "tcp", Name: ":8000"}, {Proto: "tcp", Name: "127.0.0.1:8001", NetNS: other}}); err != nil {
		t.Fatal(err)
	}
	if err := k.Listening(2, []observer.Socket{{Proto: "tcp", Name: ":8000", NetNS: other}}); err != nil {
		t.Fatal(err)
	}
	if !bit(8000) || !bit(8001) || bit(8002) {
		t.Errorf("ports 8000, 8001, 8002 watched: %v %v %v, want true true false", bit(8000), bit(8001), bit(8002))
	}
	if err := k.Unwatch(1); err != nil {
		t.Fatal(err)
	}
	if !bit(8000) || bit(8001) {
		t.Errorf("pool 1 gone: ports 8000, 8001 watched %v %v, want true false (8000 is pool 2's)", bit(8000), bit(8001))
	}
	if err := k.Unwatch(2); err != nil {
		t.Fatal(err)
	}
	if bit(8000) {
		t.Error("both pools gone: port 8000 still watched")
	}
}
