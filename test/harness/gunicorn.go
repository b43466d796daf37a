package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// gunicorn: Debian's real gunicorn, which keeps no per-worker counters and
// has no stats server, so the reference is the load generator's own: it
// counts every response it read to the end, the bytes it sent and
// received, and, from an X-Worker header the app adds, which worker pid
// served each response.

// gunicornApp answers /N with an N-byte body and /f/N with the first N bytes
// of data.bin through wsgi.file_wrapper, which gunicorn sends with
// sendfile(2); /sleep/MS answers an empty body after MS ms, /status/CODE
// one with status CODE. Every response names the worker pid that served it.
const gunicornApp = `
import os
import time

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data.bin")

def application(env, start_response):
    path = env.get("PATH_INFO", "/")
    try:
        n = int(path.rsplit("/", 1)[-1] or "0")
    except ValueError:
        n = 0
    status = "200 OK"
    if path.startswith("/sleep/"):
        time.sleep(n / 1000.0)
        n = 0
    elif path.startswith("/status/"):
        status, n = "%d Test" % n, 0
    start_response(status, [
        ("Content-Type", "text/plain"),
        ("Content-Length", str(n)),
        ("X-Worker", str(os.getpid())),
    ])
    if path.startswith("/f/"):
        return env["wsgi.file_wrapper"](open(DATA, "rb"), 65536)
    return [b"y" * n]
`

// gunicornMaxBody is the largest response body the tests ask for, and the
// size of data.bin.
const gunicornMaxBody = 20000

// GunicornPool is a gunicorn pool StartGunicorn started.
type GunicornPool struct {
	PID     int // its master's, on the host
	Addr    string
	Workers int
	// DialFunc connects to Addr: nil for net.Dial, the Container's Dial
	// for a pool in one (StartGunicornIn).
	DialFunc DialFunc
	log      *testutil.Buffer
}

// Log is what gunicorn has logged so far.
func (p *GunicornPool) Log() string { return p.log.String() }

// StartGunicorn runs `gunicorn -w N -k KIND ... app:application` in its own
// process group, killed at cleanup, and waits until the master has all its
// workers.
func StartGunicorn(t testing.TB, workers int, extra ...string) *GunicornPool {
	t.Helper()
	return StartGunicornBin(t, testutil.RequireCommand(t, "gunicorn", "gunicorn"), workers, extra...)
}

// StartGunicornBin is StartGunicorn running bin, a copy of the gunicorn
// script under another name, say.
func StartGunicornBin(t testing.TB, bin string, workers int, extra ...string) *GunicornPool {
	t.Helper()
	return startGunicorn(t, nil, bin, workers, extra)
}

// StartGunicornIn is StartGunicorn in container c: PID is its master's
// host pid, and its clients connect with DriveHTTPWith(t, p.DialFunc, ...).
func StartGunicornIn(t testing.TB, c *Container, workers int, extra ...string) *GunicornPool {
	t.Helper()
	return startGunicorn(t, c, testutil.RequireCommand(t, "gunicorn", "gunicorn"), workers, extra)
}

func startGunicorn(t testing.TB, c *Container, bin string, workers int, extra []string) *GunicornPool {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.py"), []byte(gunicornApp), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data.bin"), bytes.Repeat([]byte("y"), gunicornMaxBody), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &GunicornPool{Addr: FreeAddr(t), Workers: workers}
	if c != nil {
		p.DialFunc = c.Dial
	}
	args := append([]string{
		"--chdir", dir, "-w", strconv.Itoa(workers), "-b", p.Addr,
		"--backlog", "512", "--log-level", "info", "--worker-tmp-dir", dir,
	}, extra...)
	args = append(args, "app:application")
	log := &testutil.Buffer{}
	p.log = log
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = log, log
	var exited <-chan struct{}
	p.PID, exited = StartGroupIn(t, c, cmd, syscall.SIGKILL, func() string { return "gunicorn log:\n" + log.String() }, dir)
	WaitFor(t, testutil.Patience(60*time.Second), "gunicorn's workers to start", func() error {
		select {
		case <-exited:
			t.Fatalf("gunicorn exited early:\n%s", log.String())
		default:
		}
		kids, err := ChildPIDs(p.PID)
		if err != nil {
			return err
		}
		if len(kids) != workers {
			return fmt.Errorf("master %d has %d children, want %d", p.PID, len(kids), workers)
		}
		return nil
	})
	return p
}

// HTTPLoad is what the clients saw.
type HTTPLoad struct {
	mu       sync.Mutex
	OK       int64         // responses read to their last byte
	Sent     int64         // bytes of the requests answered
	Received int64         // every byte read from every connection
	Lost     int64         // requests written whose connection closed before any response byte
	LostSent int64         // their bytes
	Idle     int64         // connections closed without sending
	Conns    int64         // connections that carried requests
	ByPID    map[int]int64 // responses by the X-Worker pid that served them
	Sendfile int64         // responses sent through wsgi.file_wrapper
}

func (l *HTTPLoad) served(pid int, sendfile bool, req int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ByPID == nil {
		l.ByPID = map[int]int64{}
	}
	l.ByPID[pid]++
	l.OK++
	l.Sent += int64(req)
	if sendfile {
		l.Sendfile++
	}
}

func (l *HTTPLoad) add(f func(l *HTTPLoad)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l)
}

// Completed is how many responses the clients have read to the end so
// far.
func (l *HTTPLoad) Completed() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.OK
}

// ServedBy is how many responses pid has served the clients so far.
func (l *HTTPLoad) ServedBy(pid int) int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ByPID[pid]
}

// ErrLost is a request the server closed the connection on before sending
// a byte of the response (a keep-alive connection dropped by a worker that
// exits, or closed by the server between two requests).
var ErrLost = errors.New("connection closed before the response")

// HTTPClient sends HTTP/1.1 requests one after the other on one connection
// and reads each response by its Content-Length (ReadHTTPResponse), so it
// knows exactly which completed.
type HTTPClient struct {
	c    *CountingConn
	br   *bufio.Reader
	load *HTTPLoad
}

// DialHTTP connects a client to addr whose requests and bytes count in
// load.
func DialHTTP(addr string, load *HTTPLoad) (*HTTPClient, error) {
	return DialHTTPWith(nil, addr, load)
}

// DialHTTPWith is DialHTTP connecting with dial (net.Dial when nil).
func DialHTTPWith(dial DialFunc, addr string, load *HTTPLoad) (*HTTPClient, error) {
	if dial == nil {
		dial = net.Dial
	}
	c, err := dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	cc := &CountingConn{Conn: c}
	load.add(func(l *HTTPLoad) { l.Conns++ })
	return &HTTPClient{c: cc, br: bufio.NewReaderSize(cc, 4096), load: load}, nil
}

// Close reads what the server still sends (nothing is expected) and
// accounts every byte received on the connection.
func (h *HTTPClient) Close(drain bool) error {
	var err error
	if drain {
		h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var extra int64
		extra, err = io.Copy(io.Discard, h.br)
		if err == nil && extra != 0 {
			err = fmt.Errorf("%d bytes after the last response", extra)
		}
	}
	h.c.Close()
	h.load.add(func(l *HTTPLoad) { l.Received += h.c.N })
	return err
}

// Do sends GET path and reads the response. It returns whether the server
// will close the connection after it.
func (h *HTTPClient) Do(i int) (closing bool, err error) {
	size := ResponseSize(i)
	path := fmt.Sprintf("/%d", size)
	// gunicorn 20.1 fails a zero-length file_wrapper response on Python
	// 3.11 (socket.sendfile refuses count=0): only non-empty ones.
	sendfile := i%5 == 0 && size > 0
	if sendfile {
		path = "/f" + path
	}
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: test\r\nUser-Agent: workerstats-test\r\n\r\n", path))
	h.c.SetDeadline(time.Now().Add(30 * time.Second))
	before := h.c.N
	if _, err := h.c.Write(req); err != nil {
		h.load.add(func(l *HTTPLoad) { l.Lost++; l.LostSent += int64(len(req)) })
		return true, fmt.Errorf("%w: write: %v", ErrLost, err)
	}
	r, err := ReadHTTPResponse(h.br)
	if err != nil {
		if h.c.N == before && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			h.load.add(func(l *HTTPLoad) { l.Lost++; l.LostSent += int64(len(req)) })
			return true, fmt.Errorf("%w: %v", ErrLost, err)
		}
		return true, fmt.Errorf("request %d: %w", i, err)
	}
	pid := r.Int("x-worker")
	if r.Proto != "HTTP/1.1" || r.Status != 200 || r.Length != size || pid == 0 {
		return true, fmt.Errorf("request %d: %s %d, Content-Length %d, X-Worker %d; want HTTP/1.1 200, %d and a pid", i, r.Proto, r.Status, r.Length, pid, size)
	}
	if bytes.Count(r.Body, []byte("y")) != size {
		return true, fmt.Errorf("request %d: body is not %d bytes of y", i, size)
	}
	h.load.served(pid, sendfile, len(req))
	return r.Closing, nil
}

// IdleConn makes the i-th idle connection to addr (every other one slow,
// see IdleConn) and counts it.
func (l *HTTPLoad) IdleConn(addr string, i int) error { return l.idleConn(nil, addr, i) }

func (l *HTTPLoad) idleConn(dial DialFunc, addr string, i int) error {
	if err := IdleConnWith(dial, "tcp", addr, i%2 == 0); err != nil {
		return err
	}
	l.add(func(l *HTTPLoad) { l.Idle++ })
	return nil
}

// DriveHTTP runs conns connections of perConn requests each, conc at a time,
// and idle connections among them. With perConn 1 the server is expected to
// close (sync workers); otherwise the client closes after its last request.
func DriveHTTP(t testing.TB, addr string, conns, perConn, conc, idle int) *HTTPLoad {
	t.Helper()
	return DriveHTTPWith(t, nil, addr, conns, perConn, conc, idle)
}

// DriveHTTPWith is DriveHTTP connecting with dial (net.Dial when nil).
func DriveHTTPWith(t testing.TB, dial DialFunc, addr string, conns, perConn, conc, idle int) *HTTPLoad {
	t.Helper()
	load := &HTTPLoad{}
	conns, idle = testutil.Scale(conns), testutil.Scale(idle)
	idleEvery := 0
	if idle > 0 {
		idleEvery = conns / idle
	}
	Parallel(t, conns, conc, func(n int) error {
		if idleEvery > 0 && n%idleEvery == 0 {
			if err := load.idleConn(dial, addr, n/idleEvery); err != nil {
				return err
			}
		}
		h, err := DialHTTPWith(dial, addr, load)
		if err != nil {
			return err
		}
		var closing bool
		for r := range perConn {
			if closing, err = h.Do(n*perConn + r); err != nil || closing {
				break
			}
		}
		if err == nil && closing != (perConn == 1) {
			err = fmt.Errorf("connection %d: server's Connection: close is %v after %d requests", n, closing, perConn)
		}
		if cerr := h.Close(closing); err == nil {
			err = cerr
		}
		return err
	})
	return load
}

// GunicornSettle polls workerstats until the sum of its workers' requests,
// tx and accepted connections equal the clients' (or 10 s pass), then until
// every connection shows closed (or 3 s more pass), and returns the last
// dump. Every connection ends closed: the clients close theirs after the
// last response and the workers close their side after.
func GunicornSettle(t testing.TB, d *Daemon, load *HTTPLoad) *observer.Stats {
	t.Helper()
	conns := uint64(load.Conns + load.Idle)
	var st *observer.Stats
	read := func() {
		var err error
		if st, err = ReadStats(d.Addr); err != nil {
			t.Fatal(err)
		}
	}
	Poll(10*time.Second, func() error {
		read()
		req, tx, _ := SumRequests(st)
		if accepted, _ := SumConns(st); req != uint64(load.OK) || tx != uint64(load.Received) || accepted != conns {
			return errors.New("counts differ")
		}
		return nil
	})
	Poll(3*time.Second, func() error {
		read()
		if _, closed := SumConns(st); closed != conns {
			return errors.New("connections open")
		}
		return nil
	})
	return st
}

// CheckGunicorn compares a dump with the clients' figures: the sums over
// workers, and for every pid that served a response, the live worker's own
// count (delta_requests) with the responses that named it.
//
// A pid in replaced may be missing from the dump: its slot was taken by a
// worker spawned to replace it, and its counts are in that slot's requests.
func CheckGunicorn(t testing.TB, st *observer.Stats, load *HTTPLoad, hooks string, replaced map[int]bool) {
	t.Helper()
	req, tx, rx := SumRequests(st)
	var accepted, closed uint64
	for _, w := range st.Workers {
		accepted += w.Accepted
		closed += w.Closed
		t.Logf("slot %d pid %d accepting %d: requests %d delta %d tx %d rx %d accepted %d closed %d respawn_count %d (clients: %d responses from this pid)",
			w.ID, w.PID, w.Accepting, w.Requests, w.DeltaRequests, w.TX, w.RX, w.Accepted, w.Closed, w.RespawnCount, load.ByPID[w.PID])
	}
	t.Logf("requests: ours %d, clients completed %d (diff %+d, %.4f%%); %d lost before a response",
		req, load.OK, int64(req)-load.OK, 100*float64(int64(req)-load.OK)/float64(max(load.OK, 1)), load.Lost)
	t.Logf("tx: ours %d, clients received %d (diff %+d); rx: ours %d, clients sent %d answered + %d lost",
		tx, load.Received, int64(tx)-load.Received, rx, load.Sent, load.LostSent)
	t.Logf("connections: ours accepted %d closed %d; clients %d with requests + %d idle; %d responses by sendfile",
		accepted, closed, load.Conns, load.Idle, load.Sendfile)
	t.Logf("dropped: %v", st.Observer.Dropped)

	if st.Observer.Hooks != hooks {
		t.Errorf("dump says hooks %q, asked for %q", st.Observer.Hooks, hooks)
	}
	// The issue allows 0.2%; the count is exact here, so any difference
	// is a miscount worth failing on.
	if req != uint64(load.OK) {
		t.Errorf("sum of workers' requests %d, clients completed %d", req, load.OK)
	}
	if tx != uint64(load.Received) {
		t.Errorf("sum of workers' tx %d, clients received %d", tx, load.Received)
	}
	if rx != uint64(load.Sent) {
		t.Errorf("sum of workers' rx %d, clients sent %d in answered requests", rx, load.Sent)
	}
	if accepted != uint64(load.Conns+load.Idle) {
		t.Errorf("workers accepted %d connections, clients opened %d", accepted, load.Conns+load.Idle)
	}
	if closed != accepted {
		t.Errorf("workers closed %d of the %d connections they accepted; all are closed", closed, accepted)
	}
	byPID := WorkersByPID(st)
	for pid, n := range load.ByPID {
		w, ok := byPID[pid]
		switch {
		case !ok && replaced[pid]:
			t.Logf("pid %d served %d responses; it exited and its slot was taken by a replacement", pid, n)
		case !ok:
			t.Errorf("pid %d served %d responses but is not in the dump", pid, n)
		case w.Accepting == 1 && w.DeltaRequests != uint64(n):
			t.Errorf("pid %d (slot %d): delta_requests %d, clients got %d responses from it", pid, w.ID, w.DeltaRequests, n)
		}
	}
}

// BackgroundLoad runs conc clients until stopped, each opening connections
// of up to perConn keep-alive requests, one idle connection every idleEvery.
// A request lost on a connection the server closed (a keep-alive connection
// of a worker that exited) is counted as lost and the client reconnects.
type BackgroundLoad struct {
	Load *HTTPLoad
	stop atomic.Bool
	wg   sync.WaitGroup
	errs chan error
}

// StartBackgroundLoad starts the clients of a BackgroundLoad on addr.
func StartBackgroundLoad(addr string, conc, perConn, idleEvery int) *BackgroundLoad {
	b := &BackgroundLoad{Load: &HTTPLoad{}, errs: make(chan error, conc)}
	var next, conns atomic.Int64
	for range conc {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for !b.stop.Load() {
				if n := conns.Add(1); n%int64(idleEvery) == 0 {
					if err := b.Load.IdleConn(addr, int(n)); err != nil {
						b.errs <- err
						return
					}
				}
				h, err := DialHTTP(addr, b.Load)
				if err != nil {
					b.errs <- err
					return
				}
				var closing bool
				for r := 0; r < perConn && !b.stop.Load(); r++ {
					if closing, err = h.Do(int(next.Add(1))); err != nil || closing {
						break
					}
				}
				if errors.Is(err, ErrLost) {
					err = nil
				}
				if cerr := h.Close(false); err == nil {
					err = cerr
				}
				if err != nil {
					b.errs <- err
					return
				}
			}
		}()
	}
	return b
}

// WaitCompleted waits until the clients completed n requests, failing the
// test if one of them failed.
func (b *BackgroundLoad) WaitCompleted(t testing.TB, n int64, what string, also func() error) {
	t.Helper()
	WaitFor(t, 30*time.Second, what, func() error {
		select {
		case err := <-b.errs:
			b.errs <- err
			t.Fatal(err)
		default:
		}
		if got := b.Load.Completed(); got < n {
			return fmt.Errorf("%d requests completed, want %d", got, n)
		}
		if also != nil {
			return also()
		}
		return nil
	})
}

// Finish stops the clients and returns what they saw, failing t if one
// of them failed.
func (b *BackgroundLoad) Finish(t testing.TB) *HTTPLoad {
	t.Helper()
	b.stop.Store(true)
	b.wg.Wait()
	close(b.errs)
	for err := range b.errs {
		t.Fatal(err)
	}
	return b.Load
}

// StopGunicorn ends a gunicorn master with SIGTERM (its workers finish
// first) and waits until it is gone.
func StopGunicorn(t testing.TB, p *GunicornPool) {
	t.Helper()
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 30*time.Second, "gunicorn to exit", func() error {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID)); err == nil && !strings.Contains(string(b), ") Z ") {
			return fmt.Errorf("master %d still running", p.PID)
		}
		return nil
	})
}

// KillGunicornWorker kills one of p's workers with SIGKILL and waits until
// the master has replaced it; it returns the killed pid.
func KillGunicornWorker(t testing.TB, p *GunicornPool) int {
	kids, err := ChildPIDs(p.PID)
	if err != nil || len(kids) == 0 {
		t.Fatalf("gunicorn's workers: %v %v", kids, err)
	}
	if err := syscall.Kill(kids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, 60*time.Second, "gunicorn to replace the killed worker", func() error {
		now, err := ChildPIDs(p.PID)
		if err != nil {
			return err
		}
		if len(now) != p.Workers || slices.Contains(now, kids[0]) {
			return fmt.Errorf("workers %v, killed %d", now, kids[0])
		}
		return nil
	})
	return kids[0]
}

// MergeHTTPLoads adds loads up, once they are over.
func MergeHTTPLoads(loads []*HTTPLoad) *HTTPLoad {
	all := &HTTPLoad{ByPID: map[int]int64{}}
	for _, l := range loads {
		all.OK, all.Sent, all.Received = all.OK+l.OK, all.Sent+l.Sent, all.Received+l.Received
		all.Lost, all.LostSent, all.Idle = all.Lost+l.Lost, all.LostSent+l.LostSent, all.Idle+l.Idle
		all.Conns, all.Sendfile = all.Conns+l.Conns, all.Sendfile+l.Sendfile
		for pid, n := range l.ByPID {
			all.ByPID[pid] += n
		}
	}
	return all
}
