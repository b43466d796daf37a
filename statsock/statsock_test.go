package statsock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// deadline bounds every wait in these tests; nothing should come near it.
const deadline = 30 * time.Second

func TestNetwork(t *testing.T) {
	tests := []struct {
		addr, network, address string
		wantErr                bool
	}{
		{addr: "127.0.0.1:9191", network: "tcp", address: "127.0.0.1:9191"},
		{addr: "localhost:9191", network: "tcp", address: "localhost:9191"},
		{addr: ":9191", network: "tcp", address: ":9191"},
		{addr: "[::1]:9191", network: "tcp", address: "[::1]:9191"},
		{addr: "/run/uwsgi/stats.sock", network: "unix", address: "/run/uwsgi/stats.sock"},
		{addr: "./stats.sock", network: "unix", address: "./stats.sock"},
		{addr: "run/stats.sock", network: "unix", address: "run/stats.sock"},
		{addr: "", wantErr: true},
		{addr: "localhost", wantErr: true},
		{addr: "127.0.0.1", wantErr: true},
		{addr: "::1:9191", wantErr: true},
		{addr: "[::1]", wantErr: true},
		{addr: "stats.sock", wantErr: true},
		{addr: "host:9191:1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			network, address, err := Network(tt.addr)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Network(%q) = %q, %q; want an error", tt.addr, network, address)
				}
				return
			}
			if err != nil {
				t.Fatalf("Network(%q): %v", tt.addr, err)
			}
			if network != tt.network || address != tt.address {
				t.Errorf("Network(%q) = %q, %q; want %q, %q", tt.addr, network, address, tt.network, tt.address)
			}
		})
	}
}

// sockPath returns a Unix socket path in a fresh directory, short enough
// for sun_path.
func sockPath(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "stats.sock")
	if len(p) < 100 {
		return p
	}
	dir, err := os.MkdirTemp("", "ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "stats.sock")
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startServe runs Serve on ln and returns a function that cancels it and
// returns Serve's result. The test fails if Serve does not return.
func startServe(t *testing.T, ln net.Listener, src Source) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, src, discardLog()) }()
	var (
		stopped bool
		result  error
	)
	stop = func() error {
		t.Helper()
		if stopped {
			return result
		}
		stopped = true
		cancel()
		select {
		case result = <-done:
		case <-time.After(deadline):
			t.Fatal("Serve did not return after its context was cancelled")
		}
		return result
	}
	t.Cleanup(func() { stop() })
	return stop
}

// counting returns a Source whose n-th dump is "dump n".
func counting() Source {
	var n atomic.Int64
	return SourceFunc(func(ctx context.Context) ([]byte, error) {
		return fmt.Appendf(nil, `{"dump": %d}`, n.Add(1)), nil
	})
}

func read(t *testing.T, addr string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	b, err := Read(ctx, addr)
	if err != nil {
		t.Fatalf("Read(%s): %v", addr, err)
	}
	return b
}

func TestServeRoundTrip(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = sockPath(t)
			}
			ln, err := Listen(addr)
			if err != nil {
				t.Fatal(err)
			}
			if network == "tcp" {
				addr = ln.Addr().String()
			}
			stop := startServe(t, ln, counting())
			// Each connection gets a dump of its own, then EOF.
			for i := 1; i <= 3; i++ {
				if got, want := string(read(t, addr)), fmt.Sprintf(`{"dump": %d}`, i); got != want {
					t.Errorf("read %d = %q, want %q", i, got, want)
				}
			}
			if err := stop(); err != nil {
				t.Errorf("Serve returned %v after cancel, want nil", err)
			}
		})
	}
}

func TestListenUnixSocketMode(t *testing.T) {
	// With a permissive umask the socket would be created world-writable;
	// Listen must still leave it 0600.
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := sockPath(t)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("%s is %v, not a socket", path, fi.Mode())
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("socket mode = %#o, want 0600", perm)
	}
}

func TestServeStopThenListenAgain(t *testing.T) {
	path := sockPath(t)
	ln, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	stop := startServe(t, ln, counting())
	read(t, path)
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v after cancel, want nil", err)
	}
	// The listener is closed: nobody answers any more.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		t.Fatal("the stats socket still accepts connections after Serve returned")
	}
	// A restarted daemon gets the path back.
	ln, err = Listen(path)
	if err != nil {
		t.Fatalf("Listen after a clean stop: %v", err)
	}
	startServe(t, ln, counting())
	if got := string(read(t, path)); got != `{"dump": 1}` {
		t.Errorf("read after restart = %q", got)
	}
}

func TestServeReturnsAfterCancelTCP(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	stop := startServe(t, ln, counting())
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v after cancel, want nil", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the stats port still accepts connections after Serve returned")
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := sockPath(t)
	// A listener that died without unlinking its socket file.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no stale socket file left behind: %v %v", fi, err)
	}

	ln, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	startServe(t, ln, counting())
	if got := string(read(t, path)); got != `{"dump": 1}` {
		t.Errorf("read = %q", got)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := sockPath(t)
			tt.setup(t, path)
			before, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := Listen(path)
			if err == nil {
				ln.Close()
				t.Fatalf("Listen on a %s succeeded", tt.name)
			}
			after, err := os.Lstat(path)
			if err != nil {
				t.Fatalf("the %s was removed: %v", tt.name, err)
			}
			if !os.SameFile(before, after) || after.Mode() != before.Mode() {
				t.Errorf("the %s was replaced", tt.name)
			}
			if tt.name == "regular file" {
				if b, _ := os.ReadFile(path); string(b) != "precious" {
					t.Errorf("file content changed to %q", b)
				}
			}
		})
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := sockPath(t)
	first, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen(path); err == nil {
		ln.Close()
		t.Fatal("a second Listen on a live socket succeeded")
	}
	after, err := os.Lstat(path)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("the live socket file was removed or replaced: %v", err)
	}
	// The first listener still serves (the probe connection included).
	startServe(t, first, counting())
	if got := string(read(t, path)); got == "" {
		t.Error("the first listener no longer serves")
	}
}

func TestListenRefusesBusyLiveSocket(t *testing.T) {
	path := sockPath(t)
	// A live listener with the smallest backlog, not accepting (a busy
	// daemon).
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	full := false
	for range 16 {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			full = true
			break
		}
		defer c.Close()
	}
	if !full {
		t.Skip("could not fill the listener's backlog")
	}
	before, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen(path); err == nil {
		ln.Close()
		t.Error("Listen took over the path of a live (busy) listener")
	}
	if after, err := os.Lstat(path); err != nil || !os.SameFile(before, after) {
		t.Errorf("the live socket file was removed or replaced: %v", err)
	}
}

func TestServeSlowClientDoesNotBlockOthers(t *testing.T) {
	tests := []struct {
		network string
		size    int // more than the kernel buffers of an unread connection
	}{
		{"unix", 4 << 20},
		{"tcp", 16 << 20}, // an unread loopback connection buffers about 4 MB
	}
	for _, tt := range tests {
		t.Run(tt.network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if tt.network == "unix" {
				addr = sockPath(t)
			}
			ln, err := Listen(addr)
			if err != nil {
				t.Fatal(err)
			}
			if tt.network == "tcp" {
				addr = ln.Addr().String()
			}
			dump := bytes.Repeat([]byte("0123456789abcdef"), tt.size/16)
			dumping := make(chan struct{}, 16)
			src := SourceFunc(func(ctx context.Context) ([]byte, error) {
				select {
				case dumping <- struct{}{}:
				default:
				}
				return dump, nil
			})
			startServe(t, ln, src)

			// The slow client connects and reads nothing yet.
			slow, err := net.Dial(tt.network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer slow.Close()
			select {
			case <-dumping:
			case <-time.After(deadline):
				t.Fatal("no dump was built for the first client")
			}

			// Another client gets the whole dump meanwhile.
			if got := read(t, addr); !bytes.Equal(got, dump) {
				t.Fatalf("second client got %d bytes, want %d", len(got), len(dump))
			}

			// And the slow client, reading now, still gets all of it: its
			// dump is still being written (WriteTimeout, 5 s, is far more
			// than the second client needs). Were clients served one at a
			// time, the second would only have been answered after this
			// write timed out, and this client would see a truncated dump.
			slow.SetReadDeadline(time.Now().Add(deadline))
			got, err := io.ReadAll(slow)
			if err != nil {
				t.Fatalf("slow client: %v", err)
			}
			if !bytes.Equal(got, dump) {
				t.Errorf("slow client got %d bytes, want %d", len(got), len(dump))
			}
		})
	}
}

func TestServeSurvivesFailedDump(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	var n atomic.Int64
	src := SourceFunc(func(ctx context.Context) ([]byte, error) {
		if n.Add(1) == 1 {
			return nil, errors.New("kernel map unreadable")
		}
		return []byte("{}"), nil
	})
	stop := startServe(t, ln, src)
	if got := read(t, addr); len(got) != 0 {
		t.Errorf("failed dump sent %q, want nothing", got)
	}
	if got := string(read(t, addr)); got != "{}" {
		t.Errorf("dump after a failed one = %q, want {}", got)
	}
	if err := stop(); err != nil {
		t.Errorf("Serve returned %v, want nil", err)
	}
}

// flakyListener fails its first Accept calls with EMFILE, as a listener
// does when the process is out of file descriptors.
type flakyListener struct {
	net.Listener
	fails atomic.Int64
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

func TestServeSurvivesTransientAcceptError(t *testing.T) {
	ln, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, fl, counting(), discardLog()) }()
	defer ln.Close()

	got := make(chan []byte, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		b, _ := Read(ctx, ln.Addr().String())
		got <- b
	}()
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v after a transient accept error", err)
	case b := <-got:
		if len(b) == 0 {
			t.Fatal("no dump after a transient accept error")
		}
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("Serve returned %v after cancel, want nil", err)
		}
	case <-time.After(deadline):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestReadErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for _, addr := range []string{"", "nohost", filepath.Join(t.TempDir(), "nobody.sock")} {
		if b, err := Read(ctx, addr); err == nil {
			t.Errorf("Read(%q) = %q, want an error", addr, b)
		}
	}
}
