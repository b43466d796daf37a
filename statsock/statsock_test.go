package statsock

// Shared helpers, and the tests kept from before the rework (round trips,
// stop and restart, a slow client not blocking others, a failed dump, a
// transient accept error), adapted to ParseAddr/Listen/Server.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
)

// deadline bounds every wait in these tests; nothing should come near it.
const deadline = 30 * time.Second

// Real uWSGI output, in testdata (its README says what each file is).
const (
	fixtureJSON    = "testdata/uwsgi-2.0.21-http-socket-4-workers.json"
	fixtureHeaders = "testdata/uwsgi-2.0.21-stats-http-headers.txt"
)

// fixture reads a file of real uWSGI output.
func fixture(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	return b
}

// sockPath returns a Unix socket path in a fresh directory, short enough
// for sun_path.
func sockPath(t testing.TB) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "stats.sock")
	if len(p) < 80 {
		return p
	}
	dir, err := os.MkdirTemp("", "ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "stats.sock")
}

// mustParse parses a stats address or fails the test.
func mustParse(t testing.TB, s string) Addr {
	t.Helper()
	a, err := ParseAddr(s)
	if err != nil {
		t.Fatalf("ParseAddr(%q): %v", s, err)
	}
	return a
}

// targets maps the listeners made by listen to their address in --stats
// form. ln.Addr() is not used for a Unix path: it names the temporary file
// (see TestListenUnixAddrIsThePath).
var targets sync.Map

// listen parses s and listens on it with o.
func listen(t testing.TB, s string, o ListenOptions) net.Listener {
	t.Helper()
	a := mustParse(t, s)
	ln, err := Listen(a, o)
	if err != nil {
		t.Fatalf("Listen(%q): %v", s, err)
	}
	addr := ln.Addr().String()
	if a.Path() {
		addr = a.Address
	}
	targets.Store(ln, addr)
	t.Cleanup(func() { ln.Close(); targets.Delete(ln) })
	return ln
}

// target is what a client dials to reach ln: its address in --stats form.
func target(ln net.Listener) string {
	for {
		w, ok := ln.(interface{ unwrap() net.Listener })
		if !ok {
			break
		}
		ln = w.unwrap()
	}
	if a, ok := targets.Load(ln); ok {
		return a.(string)
	}
	return ln.Addr().String()
}

// network is "tcp" or "unix" for ln.
func network(ln net.Listener) string { return ln.Addr().Network() }

// startServer runs s.Serve on ln and returns a function that cancels it and
// returns Serve's result. The test fails if Serve does not return.
func startServer(t testing.TB, s *Server, ln net.Listener) (stop func() error) {
	t.Helper()
	if s.Log == nil {
		s.Log = testutil.NewLog(t).Logger
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
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

// serve listens on addr and serves src on it in raw mode or HTTP mode.
func serve(t testing.TB, addr string, src Source, httpMode bool) (net.Listener, *Server) {
	t.Helper()
	ln := listen(t, addr, ListenOptions{})
	s := &Server{Source: src, HTTP: httpMode}
	startServer(t, s, ln)
	return ln, s
}

// counting returns a Source whose n-th dump is {"dump": n}.
func counting() Source {
	var n atomic.Int64
	return SourceFunc(func(ctx context.Context) ([]byte, error) {
		return fmt.Appendf(nil, `{"dump": %d}`, n.Add(1)), nil
	})
}

// fixed returns a Source that always dumps b.
func fixed(b []byte) Source {
	return SourceFunc(func(ctx context.Context) ([]byte, error) { return b, nil })
}

// bigJSON returns valid JSON of about n bytes.
func bigJSON(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"workers":[`)
	for i := 0; b.Len() < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":%d,"pid":%d,"requests":%d,"status":"idle","note":"0123456789abcdef0123456789abcdef"}`, i+1, 1000+i, i*7)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

func read(t testing.TB, addr string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	b, err := Read(ctx, addr)
	if err != nil {
		t.Fatalf("Read(%s): %v", addr, err)
	}
	return b
}

// readAll reads c to its end and treats a reset after the data as its end
// too: a server that closes with unread request bytes resets the
// connection, after the answer it wrote has been delivered.
func readAll(c net.Conn) ([]byte, error) {
	b, err := io.ReadAll(c)
	if errors.Is(err, syscall.ECONNRESET) {
		err = nil
	}
	return b, err
}

// exchange sends req on a fresh connection to (network, addr), half-closes
// when asked, and returns everything the server sent until it closed.
func exchange(t testing.TB, network, addr string, req []byte, halfClose bool) []byte {
	t.Helper()
	c, err := net.DialTimeout(network, addr, deadline)
	if err != nil {
		t.Fatalf("dial %s %s: %v", network, addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	// Write on the side: the server may answer and close before it has
	// read a large request.
	go func() {
		c.Write(req)
		if halfClose {
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		}
	}()
	b, err := readAll(c)
	if err != nil {
		t.Fatalf("read answer from %s %s: %v", network, addr, err)
	}
	return b
}

// parseResponse parses an HTTP response and its whole body.
func parseResponse(t testing.TB, raw []byte, method string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("not an HTTP response (%v): %q", err, clip(raw))
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("response body (%v): %q", err, clip(raw))
	}
	return resp, body
}

// clip shortens b for an error message.
func clip(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + fmt.Sprintf("... (%d bytes)", len(b))
	}
	return string(b)
}

func TestServeRoundTrip(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "unix"} {
		t.Run(addr, func(t *testing.T) {
			if addr == "unix" {
				addr = sockPath(t)
			}
			ln := listen(t, addr, ListenOptions{})
			stop := startServer(t, &Server{Source: counting()}, ln)
			// Each connection gets a dump of its own, then EOF.
			for i := 1; i <= 3; i++ {
				if got, want := string(read(t, target(ln))), fmt.Sprintf(`{"dump": %d}`, i); got != want {
					t.Errorf("read %d = %q, want %q", i, got, want)
				}
			}
			if err := stop(); err != nil {
				t.Errorf("Serve returned %v after cancel, want nil", err)
			}
		})
	}
}

func TestServeStopThenListenAgain(t *testing.T) {
	path := sockPath(t)
	ln := listen(t, path, ListenOptions{})
	stop := startServer(t, &Server{Source: counting()}, ln)
	read(t, path)
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v after cancel, want nil", err)
	}
	// The listener is closed and its file removed: nobody answers any more.
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file still there after Serve returned: %v", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		t.Fatal("the stats socket still accepts connections after Serve returned")
	}
	// A restarted daemon gets the path back.
	ln = listen(t, path, ListenOptions{})
	startServer(t, &Server{Source: counting()}, ln)
	if got := string(read(t, path)); got != `{"dump": 1}` {
		t.Errorf("read after restart = %q", got)
	}
}

func TestServeReturnsAfterCancelTCP(t *testing.T) {
	ln := listen(t, "127.0.0.1:0", ListenOptions{})
	addr := target(ln)
	stop := startServer(t, &Server{Source: counting()}, ln)
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v after cancel, want nil", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the stats port still accepts connections after Serve returned")
	}
}

// A listener closed under Serve (not through its context) ends Serve with
// an error instead of a busy loop.
func TestServeListenerClosedUnderIt(t *testing.T) {
	ln := listen(t, "127.0.0.1:0", ListenOptions{})
	done := make(chan error, 1)
	go func() {
		done <- (&Server{Source: counting(), Log: testutil.NewLog(t).Logger}).Serve(context.Background(), ln)
	}()
	read(t, target(ln))
	ln.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("Serve returned %v, want an error wrapping net.ErrClosed", err)
		}
	case <-time.After(deadline):
		t.Fatal("Serve did not return after its listener was closed")
	}
}

// Raw mode serves each connection on its own: a client that does not read
// its (large) dump does not delay another.
func TestServeSlowClientDoesNotBlockOthers(t *testing.T) {
	tests := []struct {
		network string
		size    int // more than the kernel buffers of an unread connection
	}{
		{"unix", 4 << 20},
		{"tcp", 16 << 20}, // an unread loopback connection buffers about 4 MB
	}
	for _, tt := range tests {
		for _, httpMode := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/http=%v", tt.network, httpMode), func(t *testing.T) {
				addr := "127.0.0.1:0"
				if tt.network == "unix" {
					addr = sockPath(t)
				}
				ln := listen(t, addr, ListenOptions{})
				dump := bytes.Repeat([]byte("0123456789abcdef"), tt.size/16)
				dumping := make(chan struct{}, 16)
				src := SourceFunc(func(ctx context.Context) ([]byte, error) {
					select {
					case dumping <- struct{}{}:
					default:
					}
					return dump, nil
				})
				// The timeout is far more than the second client needs.
				startServer(t, &Server{Source: src, HTTP: httpMode, Timeout: 20 * time.Second}, ln)

				// The slow client connects (and asks) and reads nothing yet.
				slow, err := net.Dial(tt.network, target(ln))
				if err != nil {
					t.Fatal(err)
				}
				defer slow.Close()
				if httpMode {
					fmt.Fprint(slow, "GET / HTTP/1.0\r\n\r\n")
				}
				select {
				case <-dumping:
				case <-time.After(deadline):
					t.Fatal("no dump was built for the first client")
				}

				// Another client gets the whole dump meanwhile.
				var got []byte
				if httpMode {
					raw := exchange(t, tt.network, target(ln), []byte("GET / HTTP/1.0\r\n\r\n"), false)
					_, got = parseResponse(t, raw, "GET")
				} else {
					got = read(t, target(ln))
				}
				if !bytes.Equal(got, dump) {
					t.Fatalf("second client got %d bytes, want %d", len(got), len(dump))
				}

				// And the slow client, reading now, still gets all of it: its
				// dump was still being written. Were clients served one at a
				// time, the second would only have been answered after this
				// one's timeout, and this one would see a truncated dump.
				slow.SetReadDeadline(time.Now().Add(deadline))
				got, err = io.ReadAll(slow)
				if err != nil {
					t.Fatalf("slow client: %v", err)
				}
				if httpMode {
					_, got = parseResponse(t, got, "GET")
				}
				if !bytes.Equal(got, dump) {
					t.Errorf("slow client got %d bytes, want %d", len(got), len(dump))
				}
			})
		}
	}
}

func TestServeSurvivesFailedDump(t *testing.T) {
	var fail atomic.Bool
	src := SourceFunc(func(ctx context.Context) ([]byte, error) {
		if fail.Load() {
			return nil, errors.New("kernel map unreadable")
		}
		return []byte("{}"), nil
	})
	t.Run("raw", func(t *testing.T) {
		ln, _ := serve(t, "127.0.0.1:0", src, false)
		fail.Store(true)
		if got := read(t, target(ln)); len(got) != 0 {
			t.Errorf("failed dump sent %q, want nothing", got)
		}
		fail.Store(false)
		if got := string(read(t, target(ln))); got != "{}" {
			t.Errorf("dump after a failed one = %q, want {}", got)
		}
	})
	t.Run("http", func(t *testing.T) {
		ln, _ := serve(t, "127.0.0.1:0", src, true)
		fail.Store(true)
		resp, body := parseResponse(t, exchange(t, "tcp", target(ln), []byte("GET / HTTP/1.0\r\n\r\n"), false), "GET")
		if resp.StatusCode != http.StatusInternalServerError {
			t.Errorf("failed dump answered %s, want 500", resp.Status)
		}
		if strings.Contains(string(body), "kernel map") {
			t.Errorf("the 500 leaks the internal error: %q", body)
		}
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		if _, err := Read(ctx, "http://"+target(ln)+"/"); err == nil || !strings.Contains(err.Error(), "500") {
			t.Errorf("Read of a 500 = %v, want an error naming the status", err)
		}
		fail.Store(false)
		if b, err := Read(ctx, "http://"+target(ln)+"/"); err != nil || string(b) != "{}" {
			t.Errorf("dump after a failed one = %q, %v; want {}", b, err)
		}
	})
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
	ln := listen(t, "127.0.0.1:0", ListenOptions{})
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- (&Server{Source: counting(), Log: testutil.NewLog(t).Logger}).Serve(ctx, fl) }()

	got := make(chan []byte, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		defer cancel()
		b, _ := Read(ctx, target(ln))
		got <- b
	}()
	select {
	case err := <-served:
		t.Fatalf("Serve returned %v after a transient accept error", err)
	case b := <-got:
		if string(b) != `{"dump": 1}` {
			t.Fatalf("dump after a transient accept error = %q", b)
		}
	}
	if n := fl.fails.Load(); n >= 0 {
		t.Errorf("Accept was not retried past its failures (%d left)", n+1)
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

// spyListener records whether the server ever reads from a connection.
type spyListener struct {
	net.Listener
	reads atomic.Int64
}

func (l *spyListener) unwrap() net.Listener { return l.Listener }

type spyConn struct {
	net.Conn
	l *spyListener
}

func (c spyConn) Read(p []byte) (int, error) {
	c.l.reads.Add(1)
	return c.Conn.Read(p)
}

func (l *spyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return spyConn{Conn: c, l: l}, nil
}

// Raw mode writes the dump and closes, and never reads, even from a client
// that sends something.
func TestRawModeNeverReads(t *testing.T) {
	path := sockPath(t)
	ln := &spyListener{Listener: listen(t, path, ListenOptions{})}
	dump := fixture(t, fixtureJSON)
	startServer(t, &Server{Source: fixed(dump)}, ln)
	for range 3 {
		if got := read(t, path); !bytes.Equal(got, dump) {
			t.Fatalf("raw read got %d bytes, want the %d of the fixture", len(got), len(dump))
		}
	}
	// A client that speaks HTTP to a raw server gets the bare JSON, no
	// HTTP head.
	got := exchange(t, "unix", path, []byte("GET / HTTP/1.0\r\n\r\n"), false)
	if !bytes.Equal(got, dump) {
		t.Errorf("raw mode answered an HTTP request with %q, want the bare JSON", clip(got))
	}
	if n := ln.reads.Load(); n != 0 {
		t.Errorf("raw mode read from its clients %d times, want never", n)
	}
}

// A raw client that never reads a dump larger than the socket buffers holds
// its connection no longer than the Timeout.
func TestRawModeNonReaderDroppedAfterTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	path := sockPath(t)
	ln := listen(t, path, ListenOptions{})
	dump := bigJSON(2 << 20)
	startServer(t, &Server{Source: fixed(dump), Timeout: timeout}, ln)
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(timeout + 500*time.Millisecond)
	c.SetReadDeadline(time.Now().Add(deadline))
	got, err := readAll(c)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(got) >= len(dump) {
		t.Errorf("the non-reading client still got all %d bytes after the timeout: the server did not drop it", len(got))
	}
	// Meanwhile the server is fine.
	if got := read(t, path); !bytes.Equal(got, dump) {
		t.Errorf("next client got %d bytes, want %d", len(got), len(dump))
	}
}

func TestReadErrors(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for _, addr := range []string{"", "nohost", "::1:80", filepath.Join(t.TempDir(), "nobody.sock"), "@workerstats-test-nobody-listens", "http://127.0.0.1:1/", "http://%zz"} {
		b, err := Read(ctx, addr)
		if err == nil {
			t.Errorf("Read(%q) = %q, want an error", addr, b)
			continue
		}
		if addr != "" && !strings.Contains(err.Error(), addr) {
			t.Errorf("Read(%q) error %q does not name the address", addr, err)
		}
	}
}

// silentServer accepts connections and holds them open without a byte.
func silentServer(t *testing.T) net.Listener {
	t.Helper()
	ln := listen(t, "127.0.0.1:0", ListenOptions{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, silent
		}
	}()
	return ln
}

// Read gives up at the context's deadline on a server that never answers.
func TestReadHonoursDeadline(t *testing.T) {
	ln := silentServer(t)
	for _, addr := range []string{target(ln), "http://" + target(ln) + "/"} {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		start := time.Now()
		b, err := Read(ctx, addr)
		cancel()
		if err == nil {
			t.Errorf("Read(%s) of a silent server = %q, want a timeout error", addr, b)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Read(%s) took %v with a 200ms deadline", addr, d)
		}
	}
}

// Read returns when its context is cancelled, even without a deadline.
func TestReadHonoursCancel(t *testing.T) {
	ln := silentServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() {
		_, err := Read(ctx, target(ln))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Read of a silent server returned no error after cancel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read did not return 5s after its context was cancelled")
	}
}
