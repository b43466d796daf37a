package observer

import (
	"reflect"
	"testing"

	"golang.org/x/sys/unix"
)

// /proc/net/tcp and tcp6 as a 6.x kernel writes them: a listener on
// 127.0.0.1:8000 with 3 connections waiting, one on all addresses, an
// established connection, and IPv6 listeners on [::1]:9090 and [::]:80.
const (
	procNetTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 429916 1 0000000008bf1a90 100 0 0 10 0
   1: 00000000:1F41 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 429917 1 0000000008bf1a91 100 0 0 10 0
   2: 0100007F:1F40 0100007F:A8F8 01 00000000:00000000 00:00000000 00000000     0        0 429918 1 0000000008bf1a92 20 4 30 10 -1
`
	procNetTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 500001 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 500002 1 0000000000000000 100 0 0 10 0
`
	procNetUnix = `Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 600001 /run/app/uwsgi.sock
0000000000000000: 00000002 00000000 00010000 0001 01    12 @workerstats-app
0000000000000000: 00000002 00000000 00010000 0001 01 600003 /run/with space.sock
0000000000000000: 00000003 00000000 00000000 0001 03 600004 /run/app/uwsgi.sock
0000000000000000: 00000002 00000000 00010000 0002 01 600005 /run/dgram.sock
0000000000000000: 00000002 00000000 00010000 0001 01 600006
`
)

func TestParseProcNetTCP(t *testing.T) {
	all := map[uint64]bool{429916: true, 429917: true, 429918: true, 500001: true, 500002: true}
	got := append(parseProcNetTCP([]byte(procNetTCP), unix.AF_INET, all), parseProcNetTCP([]byte(procNetTCP6), unix.AF_INET6, all)...)
	want := []Socket{
		{Name: "127.0.0.1:8000", Proto: "tcp", Queue: 3},
		{Name: ":8001", Proto: "tcp"},
		{Name: "[::1]:9090", Proto: "tcp", Queue: 1},
		{Name: "[::]:80", Proto: "tcp"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
	// Only the inodes asked for: the pool's, not the namespace's others.
	if got := parseProcNetTCP([]byte(procNetTCP), unix.AF_INET, map[uint64]bool{429917: true}); len(got) != 1 || got[0].Name != ":8001" {
		t.Errorf("one inode: %+v", got)
	}
}

func TestParseProcNetUnix(t *testing.T) {
	all := map[uint64]bool{600001: true, 12: true, 600003: true, 600004: true, 600005: true, 600006: true}
	got := parseProcNetUnix([]byte(procNetUnix), all)
	want := []Socket{
		{Name: "/run/app/uwsgi.sock", Proto: "unix"},
		{Name: "@workerstats-app", Proto: "unix"},
		{Name: "/run/with space.sock", Proto: "unix"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

// The tables are the kernel's, but a Unix socket's path is anyone's:
// whatever the bytes, parsing neither panics nor invents a socket that
// is not among the inodes asked for.
func FuzzParseProcNet(f *testing.F) {
	for _, s := range []string{procNetTCP, procNetTCP6, procNetUnix, "", "0: 0A\n", "x x x 00010000 0001 01 1 /a\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in := map[uint64]bool{1: true, 429916: true, 600001: true}
		for _, s := range append(append(parseProcNetTCP(b, unix.AF_INET, in), parseProcNetTCP(b, unix.AF_INET6, in)...), parseProcNetUnix(b, in)...) {
			if s.Proto != "tcp" && s.Proto != "unix" {
				t.Errorf("socket %+v", s)
			}
		}
	})
}
