package observer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
)

// requireSockDiag skips the test when this machine cannot answer sock_diag
// requests for the test's own sockets, or fails it when
// testutil.RequirePrivilegedEnv is set. sock_diag dumps need no privilege on
// Linux (ss works for any user), so a skip here means a restricted sandbox.
func requireSockDiag(t *testing.T) {
	t.Helper()
	_, err := Procfs{Root: "/proc"}.ListeningSockets(os.Getpid())
	if err == nil {
		return
	}
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) &&
		!errors.Is(err, unix.EPROTONOSUPPORT) && !errors.Is(err, unix.EAFNOSUPPORT) {
		t.Fatalf("ListeningSockets of the test process: %v", err)
	}
	testutil.SkipOrFail(t, "sock_diag is not available to this process: %v", err)
}

// somaxconn returns net.core.somaxconn, which caps every listen backlog.
func somaxconn(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err != nil {
		t.Logf("cannot read somaxconn (%v); assuming 4096", err)
		return 4096
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("parse somaxconn %q: %v", b, err)
	}
	return n
}

// wantBacklog is the backlog the kernel keeps for listen(fd, backlog).
func wantBacklog(t *testing.T, backlog int) uint64 {
	return uint64(min(backlog, somaxconn(t)))
}

// listenRaw opens a stream socket in domain, binds it to sa and listens with
// backlog, which net.Listen cannot choose. It returns the bound address; the
// socket is closed when the test ends.
func listenRaw(t *testing.T, domain int, sa unix.Sockaddr, backlog int) (unix.Sockaddr, error) {
	t.Helper()
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("listen: %w", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return unix.Getsockname(fd)
}

// ownSockets lists the test process's listening sockets.
func ownSockets(t *testing.T) []Socket {
	t.Helper()
	socks, err := Procfs{Root: "/proc"}.ListeningSockets(os.Getpid())
	if err != nil {
		t.Fatalf("ListeningSockets: %v", err)
	}
	return socks
}

// findSocket returns the socket called name among the test process's
// listening sockets.
func findSocket(t *testing.T, name string) (Socket, bool) {
	t.Helper()
	for _, s := range ownSockets(t) {
		if s.Name == name {
			return s, true
		}
	}
	return Socket{}, false
}

// waitQueue waits until the socket called name shows queue connections
// waiting to be accepted (a TCP handshake completes in softirq context, so
// the listener may see it just after the client's connect returned).
func waitQueue(t *testing.T, name string, queue uint64) Socket {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, ok := findSocket(t, name)
		if !ok {
			t.Fatalf("%q is not listed: %+v", name, ownSockets(t))
		}
		if s.Queue == queue {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q: queue %d, want %d", name, s.Queue, queue)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkListener checks a listener's entry before and after a client
// connected without being accepted.
func checkListener(t *testing.T, name, proto string, backlog int, dial func() (net.Conn, error)) {
	t.Helper()
	want := Socket{Name: name, Proto: proto, Queue: 0, MaxQueue: wantBacklog(t, backlog)}
	got, ok := findSocket(t, name)
	if !ok {
		t.Fatalf("%q is not listed: %+v", name, ownSockets(t))
	}
	if got != want {
		t.Errorf("before connecting: got %+v, want %+v", got, want)
	}
	c, err := dial()
	if err != nil {
		t.Fatalf("dial %s: %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	want.Queue = 1
	if got := waitQueue(t, name, 1); got != want {
		t.Errorf("with a client waiting: got %+v, want %+v", got, want)
	}
}

func TestListeningSocketsTCP4(t *testing.T) {
	requireSockDiag(t)
	sa, err := listenRaw(t, unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, 7)
	if err != nil {
		t.Fatal(err)
	}
	name := "127.0.0.1:" + strconv.Itoa(sa.(*unix.SockaddrInet4).Port)
	checkListener(t, name, "tcp", 7, func() (net.Conn, error) { return net.Dial("tcp4", name) })
}

func TestListeningSocketsTCP6(t *testing.T) {
	requireSockDiag(t)
	sa, err := listenRaw(t, unix.AF_INET6, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}, 5)
	if err != nil {
		t.Skipf("IPv6 loopback is unavailable: %v", err)
	}
	name := "[::1]:" + strconv.Itoa(sa.(*unix.SockaddrInet6).Port)
	checkListener(t, name, "tcp", 5, func() (net.Conn, error) { return net.Dial("tcp6", name) })
}

func TestListeningSocketsUnixPath(t *testing.T) {
	requireSockDiag(t)
	path := filepath.Join(t.TempDir(), "app.sock")
	if _, err := listenRaw(t, unix.AF_UNIX, &unix.SockaddrUnix{Name: path}, 6); err != nil {
		t.Fatal(err)
	}
	checkListener(t, path, "unix", 6, func() (net.Conn, error) { return net.Dial("unix", path) })
}

func TestListeningSocketsUnixAbstract(t *testing.T) {
	requireSockDiag(t)
	name := fmt.Sprintf("@workerstats-test-%d", os.Getpid())
	// Go and x/sys/unix bind "@name" as "\x00name", without a terminator.
	if _, err := listenRaw(t, unix.AF_UNIX, &unix.SockaddrUnix{Name: name}, 3); err != nil {
		t.Fatal(err)
	}
	checkListener(t, name, "unix", 3, func() (net.Conn, error) { return net.Dial("unix", name) })
}

// TestListeningSocketsUnixAbstractLengths binds abstract names of every
// length modulo 4, bare (as Go binds them) and NUL-terminated (as uWSGI binds
// "@name"), so the name attribute's padding takes each of its forms.
func TestListeningSocketsUnixAbstractLengths(t *testing.T) {
	requireSockDiag(t)
	var want []string
	for k := 1; k <= 4; k++ {
		for _, style := range []string{"go", "uwsgi"} {
			name := fmt.Sprintf("@wst-%s-%d-%s", style, os.Getpid(), strings.Repeat("x", k))
			bind := name
			if style == "uwsgi" {
				// bind_to_unix: sun_path "\x00name\x00", length strlen("@name")+1.
				bind += "\x00"
			}
			if _, err := listenRaw(t, unix.AF_UNIX, &unix.SockaddrUnix{Name: bind}, 2); err != nil {
				t.Fatalf("%q: %v", bind, err)
			}
			want = append(want, name)
		}
	}
	for _, name := range want {
		s, ok := findSocket(t, name)
		if !ok {
			t.Errorf("%q is not listed: %+v", name, ownSockets(t))
			continue
		}
		if s.Proto != "unix" || s.MaxQueue != wantBacklog(t, 2) {
			t.Errorf("%q: got %+v", name, s)
		}
	}
}

// TestListeningSocketsOnlyListeners opens sockets that are not listening and
// checks none is listed, and that the list is in its stable order.
func TestListeningSocketsOnlyListeners(t *testing.T) {
	requireSockDiag(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lnName := ln.Addr().String()
	// An outbound connection, and its accepted end.
	out, err := net.Dial("tcp4", lnName)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	in, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	// A UDP socket.
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	// A TCP socket bound but not listening.
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	bsa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	bound := "127.0.0.1:" + strconv.Itoa(bsa.(*unix.SockaddrInet4).Port)
	// A connected Unix stream pair, and a Unix datagram socket with a name.
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pair[0])
	defer unix.Close(pair[1])
	dgramPath := filepath.Join(t.TempDir(), "dgram.sock")
	dgram, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: dgramPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer dgram.Close()

	socks := ownSockets(t)
	names := map[string]bool{}
	for _, s := range socks {
		names[s.Name] = true
	}
	if !names[lnName] {
		t.Errorf("listener %q is not listed: %+v", lnName, socks)
	}
	for _, n := range []string{out.LocalAddr().String(), udp.LocalAddr().String(), bound, dgramPath, ""} {
		if names[n] {
			t.Errorf("non-listening socket %q is listed: %+v", n, socks)
		}
	}
	sorted := sort.SliceIsSorted(socks, func(i, j int) bool {
		if socks[i].Proto != socks[j].Proto {
			return socks[i].Proto == "tcp"
		}
		return socks[i].Name < socks[j].Name
	})
	if !sorted {
		t.Errorf("not sorted TCP first, then by name: %+v", socks)
	}
}

// TestListeningSocketsOrder checks the order over both protocols.
func TestListeningSocketsOrder(t *testing.T) {
	requireSockDiag(t)
	dir := t.TempDir()
	for _, n := range []string{"b.sock", "a.sock"} {
		if _, err := listenRaw(t, unix.AF_UNIX, &unix.SockaddrUnix{Name: filepath.Join(dir, n)}, 1); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := listenRaw(t, unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, 1); err != nil {
			t.Fatal(err)
		}
	}
	socks := ownSockets(t)
	var got []string
	for _, s := range socks {
		if s.Proto == "tcp" || strings.HasPrefix(s.Name, dir) {
			got = append(got, s.Proto+" "+s.Name)
		}
	}
	if len(got) < 4 {
		t.Fatalf("got %q, want 2 TCP and 2 Unix listeners", got)
	}
	if !sort.SliceIsSorted(got, func(i, j int) bool {
		pi, ni, _ := strings.Cut(got[i], " ")
		pj, nj, _ := strings.Cut(got[j], " ")
		if pi != pj {
			return pi == "tcp"
		}
		return ni < nj
	}) {
		t.Errorf("order %q, want TCP first, then by name", got)
	}
	if last := got[len(got)-2:]; last[0] != "unix "+filepath.Join(dir, "a.sock") || last[1] != "unix "+filepath.Join(dir, "b.sock") {
		t.Errorf("Unix sockets last and by name: got %q", got)
	}
}

func TestListeningSocketsNoProcess(t *testing.T) {
	// PID_MAX_LIMIT is 1<<22: no process can have a larger pid.
	if _, err := (Procfs{Root: "/proc"}).ListeningSockets(1<<22 + 1); !errors.Is(err, ErrNoProcess) {
		t.Errorf("pid beyond pid_max: got %v, want ErrNoProcess", err)
	}
	if _, err := (Procfs{Root: t.TempDir()}).ListeningSockets(4242); !errors.Is(err, ErrNoProcess) {
		t.Errorf("pid missing from a fixture: got %v, want ErrNoProcess", err)
	}
}

func TestSocketInodesFixture(t *testing.T) {
	root := t.TempDir()
	fd := filepath.Join(root, "4242", "fd")
	if err := os.MkdirAll(fd, 0o755); err != nil {
		t.Fatal(err)
	}
	for n, target := range map[string]string{
		"0": "socket:[123]",
		"1": "pipe:[5]",
		"2": "/dev/null",
		"3": "socket:[12x]",
		"4": "anon_inode:[eventfd]",
		"5": "/tmp/socket:[77]",
	} {
		if err := os.Symlink(target, filepath.Join(fd, n)); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Procfs{Root: root}.socketInodes(4242)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !got[123] {
		t.Errorf("got %v, want only inode 123", got)
	}
	// A fixture process holding no socket lists none, with no netlink call.
	if err := os.MkdirAll(filepath.Join(root, "4243", "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	socks, err := Procfs{Root: root}.ListeningSockets(4243)
	if err != nil || socks == nil || len(socks) != 0 {
		t.Errorf("process without sockets: got %#v, %v; want an empty list", socks, err)
	}
}

func TestSocketNames(t *testing.T) {
	for _, c := range []struct {
		family uint8
		ip     net.IP
		port   uint16
		want   string
	}{
		{unix.AF_INET, net.IPv4(127, 0, 0, 1), 9090, "127.0.0.1:9090"},
		{unix.AF_INET, net.IPv4(127, 0, 0, 1).To4(), 9090, "127.0.0.1:9090"},
		{unix.AF_INET, net.IPv4zero, 9090, ":9090"}, // uWSGI: 0.0.0.0 is ":PORT"
		{unix.AF_INET6, net.IPv6loopback, 9090, "[::1]:9090"},
		{unix.AF_INET6, net.IPv6unspecified, 9090, "[::]:9090"},
		{unix.AF_INET6, net.ParseIP("2001:db8::1"), 443, "[2001:db8::1]:443"},
		{unix.AF_INET6, net.ParseIP("::ffff:10.0.0.1"), 80, "[::ffff:10.0.0.1]:80"},
	} {
		if got := TCPSocketName(c.family, c.ip, c.port); got != c.want {
			t.Errorf("TCPSocketName(%d, %v, %d) = %q, want %q", c.family, c.ip, c.port, got, c.want)
		}
	}

	// hdr is the start of the attribute that follows UNIX_DIAG_NAME in the
	// kernel's reply, UNIX_DIAG_RQLEN: nla_len 12, nla_type 4, host order.
	b := make([]byte, 4)
	binary.NativeEndian.PutUint16(b, 12)
	binary.NativeEndian.PutUint16(b[2:], 4)
	hdr := string(b)
	// overread is what netlink v1.3.1 returns for a name: 4 bytes past it.
	overread := func(name string) string {
		pad := (4 - len(name)%4) % 4
		return (name + strings.Repeat("\x00", pad) + hdr)[:len(name)+4]
	}
	for _, c := range []struct{ raw, want string }{
		{"", ""},
		{"/run/app.sock\x00", "/run/app.sock"},
		{"\x00app", "@app"},
		{"\x00app\x00", "@app"},     // uWSGI binds "@app" with a terminator
		{"\x00a\x00b", "@a@b"},      // inner NULs as ss shows them
		{"\x00abc-123", "@abc-123"}, // ends like no padding and header
	} {
		if got := unixSocketName(c.raw); got != c.want {
			t.Errorf("unixSocketName(%q) = %q, want %q", c.raw, got, c.want)
		}
		if c.raw == "" {
			continue
		}
		if got := unixSocketName(overread(c.raw)); got != c.want {
			t.Errorf("unixSocketName(%q) = %q, want %q", overread(c.raw), got, c.want)
		}
	}
}

// TestParseInetDiagMsg: the fields a listener's dump needs, read where
// linux/inet_diag.h puts them; a short or non-LISTEN message is refused.
func TestParseInetDiagMsg(t *testing.T) {
	b := make([]byte, sizeofInetDiagMsg)
	b[0], b[1] = unix.AF_INET, netlink.TCP_LISTEN
	binary.BigEndian.PutUint16(b[4:6], 8080)
	copy(b[8:12], []byte{127, 0, 0, 1})
	binary.NativeEndian.PutUint32(b[56:60], 3)   // rqueue
	binary.NativeEndian.PutUint32(b[60:64], 128) // wqueue
	binary.NativeEndian.PutUint32(b[68:72], 4242)
	l, err := parseInetDiagMsg(b)
	if err != nil {
		t.Fatal(err)
	}
	if got := TCPSocketName(l.family, l.addr, l.port); got != "127.0.0.1:8080" || l.rqueue != 3 || l.wqueue != 128 || l.inode != 4242 || l.drops != 0 {
		t.Errorf("parsed %s %+v, want 127.0.0.1:8080 with queue 3 of 128, inode 4242, no drops", got, l)
	}
	// The SKMEMINFO attribute, after another one: its SK_MEMINFO_DROPS.
	other := []byte{8, 0, 2, 0, 0, 0, 0, 0} // 8 bytes, type 2
	mem := make([]byte, 4+4*9)
	binary.NativeEndian.PutUint16(mem[0:2], uint16(len(mem)))
	binary.NativeEndian.PutUint16(mem[2:4], inetDiagSKMemInfo)
	binary.NativeEndian.PutUint32(mem[4+4*skMemInfoDrops:], 17)
	withAttrs := append(append(append([]byte(nil), b...), other...), mem...)
	if l, err := parseInetDiagMsg(withAttrs); err != nil || l.drops != 17 {
		t.Errorf("with SKMEMINFO: drops %d, %v; want 17", l.drops, err)
	}
	if l, err := parseInetDiagMsg(append(append([]byte(nil), b...), 40, 0, 4, 0, 1)); err != nil || l.drops != 0 {
		t.Errorf("with an attribute cut short: drops %d, %v; want 0, no error", l.drops, err)
	}
	if _, err := parseInetDiagMsg(b[:40]); err == nil {
		t.Error("a 40-byte message parsed")
	}
	b[1] = 1 // ESTABLISHED
	if _, err := parseInetDiagMsg(b); err == nil {
		t.Error("an established socket parsed as a listener")
	}
}
