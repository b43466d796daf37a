package ebpfkernel

import (
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
)

// TestListenerSockets: what read_listeners answers becomes the sockets a
// dump shows: named as uWSGI names them, TCP ones first, then Unix ones,
// each by name (then namespace); a socket found under two fds once; one
// gone left out.
func TestListenerSockets(t *testing.T) {
	tcp := func(inode uint64, family uint32, addr []byte, port uint32, netns uint32) bpf.ObserverListenerRead {
		r := bpf.ObserverListenerRead{Inode: inode, Netns: netns, Kind: uint32(bpf.ObserverListenerKindLISTENER_TCP),
			Family: family, Port: port, Queue: 2, MaxQueue: 100, Drops: 7}
		copy(r.Addr[:], addr)
		return r
	}
	named := func(inode uint64, name string) bpf.ObserverListenerRead {
		r := bpf.ObserverListenerRead{Inode: inode, Netns: 1, Kind: uint32(bpf.ObserverListenerKindLISTENER_UNIX),
			Family: unix.AF_UNIX, Queue: 1, MaxQueue: 5, NameLen: uint32(len(name))}
		copy(r.Name[:], name)
		return r
	}
	gone := bpf.ObserverListenerRead{Inode: 9, Kind: uint32(bpf.ObserverListenerKindLISTENER_GONE)}
	read := []bpf.ObserverListenerRead{
		named(1, "/run/app.sock\x00"),
		tcp(2, unix.AF_INET6, []byte{15: 1}, 9090, 1),
		tcp(3, unix.AF_INET, []byte{127, 0, 0, 1, 0xff, 0xff}, 9090, 2),
		gone,
		named(4, "\x00app"),
		tcp(5, unix.AF_INET, nil, 8080, 1),
		tcp(6, unix.AF_INET, []byte{127, 0, 0, 1}, 9090, 1),
		tcp(5, unix.AF_INET, nil, 8080, 1), // the same socket under another fd
	}
	at := func(name, proto string, netns uint32) observer.Socket {
		if proto == "unix" {
			return observer.Socket{Name: name, Proto: proto, Queue: 1, MaxQueue: 5, NetNS: netns}
		}
		return observer.Socket{Name: name, Proto: proto, Queue: 2, MaxQueue: 100, Drops: 7, NetNS: netns}
	}
	want := []observer.Socket{
		at("127.0.0.1:9090", "tcp", 1), at("127.0.0.1:9090", "tcp", 2), at(":8080", "tcp", 1), at("[::1]:9090", "tcp", 1),
		at("/run/app.sock", "unix", 1), at("@app", "unix", 1),
	}
	if got := listenerSockets(read); !slices.Equal(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	if got := listenerSockets(nil); got == nil || len(got) != 0 {
		t.Errorf("none read: %#v, want an empty list", got)
	}
}

// TestOwnPIDOfAHostProcess: a process of the namespace /proc shows has
// its pid as its own.
func TestOwnPIDOfAHostProcess(t *testing.T) {
	if got := nsPID(os.Getpid()); got != uint32(os.Getpid()) {
		t.Errorf("own pid of pid %d: %d", os.Getpid(), got)
	}
	if got := nsPID(-1); got != 0 {
		t.Errorf("own pid of no process: %d, want 0", got)
	}
}
