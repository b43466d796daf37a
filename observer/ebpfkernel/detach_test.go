package ebpfkernel

import (
	"net"
	"runtime"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
)

// TestDetachWhileTasksSleepInside: threads asleep inside the functions
// the fentry set's fexit programs hook (a blocking read on a Unix
// socket, on a TCP one, and an accept on a Unix listener) when the
// daemon attaches and then detaches them, twice, wake afterwards and
// return what they were sent. A kernel that frees an fexit trampoline
// while a task still has to return through it crashes here, the guest
// with it: the daemon stops, restarts and changes hook sets on hosts
// where every process may be asleep in recvmsg.
func TestDetachWhileTasksSleepInside(t *testing.T) {
	testutil.RequireEBPF(t)
	if !carries(t, HooksFentry) {
		t.Skip("this kernel refuses fentry programs: nothing to detach")
	}
	unixPair := socketpair(t)
	tcpPair := tcpSockets(t)
	listener, path := unixListener(t)
	got := make(chan string, 3)
	go blockedRead(t, unixPair[0], got)
	go blockedRead(t, tcpPair[0], got)
	go blockedAccept(t, listener, got)
	time.Sleep(200 * time.Millisecond) // all three asleep in the kernel

	for range 2 {
		k, err := Load(Options{Hooks: HooksFentry, Log: testutil.NewLog(t).Logger})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if err := k.Close(); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // the kernel's grace periods for freeing trampolines

	if _, err := unix.Write(unixPair[1], []byte("unix")); err != nil {
		t.Fatal(err)
	}
	if _, err := unix.Write(tcpPair[1], []byte("tcp")); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var woke []string
	for range 3 {
		select {
		case s := <-got:
			woke = append(woke, s)
		case <-time.After(10 * time.Second):
			t.Fatalf("woken so far: %v; the others never returned", woke)
		}
	}
	slices.Sort(woke)
	if want := []string{"accepted", "tcp", "unix"}; !slices.Equal(woke, want) {
		t.Errorf("woke with %v, want %v", woke, want)
	}
}

// blockedRead reads fd, a blocking socket, on a thread of its own, and
// sends what it read.
func blockedRead(t *testing.T, fd int, got chan<- string) {
	runtime.LockOSThread()
	buf := make([]byte, 16)
	n, err := unix.Read(fd, buf)
	if err != nil {
		t.Errorf("read: %v", err)
		got <- ""
		return
	}
	got <- string(buf[:n])
}

func blockedAccept(t *testing.T, fd int, got chan<- string) {
	runtime.LockOSThread()
	nfd, _, err := unix.Accept(fd)
	if err != nil {
		t.Errorf("accept: %v", err)
		got <- ""
		return
	}
	unix.Close(nfd)
	got <- "accepted"
}

// tcpSockets is a connected pair of blocking TCP sockets on loopback.
func tcpSockets(t *testing.T) [2]int {
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(l)
	lo := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if err := unix.Bind(l, lo); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 1); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(l)
	if err != nil {
		t.Fatal(err)
	}
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(c, sa); err != nil {
		t.Fatal(err)
	}
	s, _, err := unix.Accept(l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s); unix.Close(c) })
	return [2]int{s, c}
}

// unixListener is a blocking Unix stream listener, and its path.
func unixListener(t *testing.T) (int, string) {
	path := t.TempDir() + "/l.sock"
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	return fd, path
}
