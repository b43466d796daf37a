package main

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
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
)

// The tests in this file run Debian's real gunicorn. gunicorn keeps no
// per-worker counters and has no stats server, so the reference is the load
// generator's own: it counts every response it read to the end, the bytes it
// sent and received, and, from an X-Worker header the app adds, which worker
// pid served each response. workerstats must agree with it, worker by worker.

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

type gunicornPool struct {
	pid     int
	addr    string
	workers int
}

// startGunicorn runs `gunicorn -w N -k KIND ... app:application` in its own
// process group, killed at cleanup, and waits until the master has all its
// workers.
func startGunicorn(t testing.TB, workers int, extra ...string) *gunicornPool {
	t.Helper()
	return startGunicornBin(t, testutil.RequireCommand(t, "gunicorn", "gunicorn"), workers, extra...)
}

// startGunicornBin is startGunicorn running bin, a copy of the gunicorn
// script under another name, say.
func startGunicornBin(t testing.TB, bin string, workers int, extra ...string) *gunicornPool {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.py"), []byte(gunicornApp), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data.bin"), bytes.Repeat([]byte("y"), gunicornMaxBody), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &gunicornPool{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)), workers: workers}
	args := append([]string{
		"--chdir", dir, "-w", strconv.Itoa(workers), "-b", p.addr,
		"--backlog", "512", "--log-level", "info", "--worker-tmp-dir", dir,
	}, extra...)
	args = append(args, "app:application")
	var log testutil.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &log, &log
	exited := startGroup(t, cmd, syscall.SIGKILL, func() string { return "gunicorn log:\n" + log.String() })
	p.pid = cmd.Process.Pid
	waitFor(t, 60*time.Second, "gunicorn's workers to start", func() error {
		select {
		case <-exited:
			t.Fatalf("gunicorn exited early:\n%s", log.String())
		default:
		}
		kids, err := childPIDs(p.pid)
		if err != nil {
			return err
		}
		if len(kids) != workers {
			return fmt.Errorf("master %d has %d children, want %d", p.pid, len(kids), workers)
		}
		return nil
	})
	return p
}

// childPIDs lists pid's direct children from /proc/PID/task/*/children.
func childPIDs(pid int) ([]int, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil {
		return nil, err
	}
	if len(tasks) == 0 {
		return nil, fmt.Errorf("no process %d", pid)
	}
	var kids []int
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, s := range strings.Fields(string(b)) {
			k, err := strconv.Atoi(s)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			kids = append(kids, k)
		}
	}
	sort.Ints(kids)
	return kids, nil
}

// httpLoad is what the clients saw.
type httpLoad struct {
	mu       sync.Mutex
	ok       int64         // responses read to their last byte
	sent     int64         // bytes of the requests answered
	received int64         // every byte read from every connection
	lost     int64         // requests written whose connection closed before any response byte
	lostSent int64         // their bytes
	idle     int64         // connections closed without sending
	conns    int64         // connections that carried requests
	byPID    map[int]int64 // responses by the X-Worker pid that served them
	sendfile int64         // responses sent through wsgi.file_wrapper
}

func (l *httpLoad) served(pid int, sendfile bool, req int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byPID == nil {
		l.byPID = map[int]int64{}
	}
	l.byPID[pid]++
	l.ok++
	l.sent += int64(req)
	if sendfile {
		l.sendfile++
	}
}

func (l *httpLoad) add(f func(l *httpLoad)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l)
}

func (l *httpLoad) completed() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok
}

// errLost is a request the server closed the connection on before sending
// a byte of the response (a keep-alive connection dropped by a worker that
// exits, or closed by the server between two requests).
var errLost = errors.New("connection closed before the response")

// httpClient sends HTTP/1.1 requests one after the other on one connection
// and reads each response by its Content-Length (readHTTPResponse), so it
// knows exactly which completed.
type httpClient struct {
	c    *countingConn
	br   *bufio.Reader
	load *httpLoad
}

func dialHTTP(addr string, load *httpLoad) (*httpClient, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	cc := &countingConn{Conn: c}
	load.add(func(l *httpLoad) { l.conns++ })
	return &httpClient{c: cc, br: bufio.NewReaderSize(cc, 4096), load: load}, nil
}

// Close reads what the server still sends (nothing is expected) and
// accounts every byte received on the connection.
func (h *httpClient) Close(drain bool) error {
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
	h.load.add(func(l *httpLoad) { l.received += h.c.n })
	return err
}

// do sends GET path and reads the response. It returns whether the server
// will close the connection after it.
func (h *httpClient) do(i int) (closing bool, err error) {
	size := responseSize(i)
	path := fmt.Sprintf("/%d", size)
	// gunicorn 20.1 fails a zero-length file_wrapper response on Python
	// 3.11 (socket.sendfile refuses count=0): only non-empty ones.
	sendfile := i%5 == 0 && size > 0
	if sendfile {
		path = "/f" + path
	}
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: test\r\nUser-Agent: workerstats-test\r\n\r\n", path))
	h.c.SetDeadline(time.Now().Add(30 * time.Second))
	before := h.c.n
	if _, err := h.c.Write(req); err != nil {
		h.load.add(func(l *httpLoad) { l.lost++; l.lostSent += int64(len(req)) })
		return true, fmt.Errorf("%w: write: %v", errLost, err)
	}
	r, err := readHTTPResponse(h.br)
	if err != nil {
		if h.c.n == before && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)) {
			h.load.add(func(l *httpLoad) { l.lost++; l.lostSent += int64(len(req)) })
			return true, fmt.Errorf("%w: %v", errLost, err)
		}
		return true, fmt.Errorf("request %d: %w", i, err)
	}
	pid := r.int("x-worker")
	if r.proto != "HTTP/1.1" || r.status != 200 || r.length != size || pid == 0 {
		return true, fmt.Errorf("request %d: %s %d, Content-Length %d, X-Worker %d; want HTTP/1.1 200, %d and a pid", i, r.proto, r.status, r.length, pid, size)
	}
	if bytes.Count(r.body, []byte("y")) != size {
		return true, fmt.Errorf("request %d: body is not %d bytes of y", i, size)
	}
	h.load.served(pid, sendfile, len(req))
	return r.closing, nil
}

// idleConn makes the i-th idle connection to addr (every other one slow,
// see idleConn) and counts it.
func (l *httpLoad) idleConn(addr string, i int) error {
	if err := idleConn("tcp", addr, i%2 == 0); err != nil {
		return err
	}
	l.add(func(l *httpLoad) { l.idle++ })
	return nil
}

// driveHTTP runs conns connections of perConn requests each, conc at a time,
// and idle connections among them. With perConn 1 the server is expected to
// close (sync workers); otherwise the client closes after its last request.
func driveHTTP(t testing.TB, addr string, conns, perConn, conc, idle int) *httpLoad {
	t.Helper()
	load := &httpLoad{}
	conns, idle = testutil.Scale(conns), testutil.Scale(idle)
	idleEvery := 0
	if idle > 0 {
		idleEvery = conns / idle
	}
	parallel(t, conns, conc, func(n int) error {
		if idleEvery > 0 && n%idleEvery == 0 {
			if err := load.idleConn(addr, n/idleEvery); err != nil {
				return err
			}
		}
		h, err := dialHTTP(addr, load)
		if err != nil {
			return err
		}
		var closing bool
		for r := range perConn {
			if closing, err = h.do(n*perConn + r); err != nil || closing {
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

// gunicornSettle polls workerstats until the sum of its workers' requests,
// tx and accepted connections equal the clients' (or 10 s pass), then until
// every connection shows closed (or 3 s more pass), and returns the last
// dump. Every connection ends closed: the clients close theirs after the
// last response and the workers close their side after.
func gunicornSettle(t testing.TB, d *daemon, load *httpLoad) *observer.Stats {
	t.Helper()
	conns := uint64(load.conns + load.idle)
	var st *observer.Stats
	read := func() {
		var err error
		if st, err = readStats(d.addr); err != nil {
			t.Fatal(err)
		}
	}
	poll(10*time.Second, func() error {
		read()
		req, tx, _ := sumRequests(st)
		if accepted, _ := sumConns(st); req != uint64(load.ok) || tx != uint64(load.received) || accepted != conns {
			return errors.New("counts differ")
		}
		return nil
	})
	poll(3*time.Second, func() error {
		read()
		if _, closed := sumConns(st); closed != conns {
			return errors.New("connections open")
		}
		return nil
	})
	return st
}

func sumConns(st *observer.Stats) (accepted, closed uint64) {
	for _, w := range st.Workers {
		accepted += w.Accepted
		closed += w.Closed
	}
	return
}

// checkGunicorn compares a dump with the clients' figures: the sums over
// workers, and for every pid that served a response, the live worker's own
// count (delta_requests) with the responses that named it.
//
// A pid in replaced may be missing from the dump: its slot was taken by a
// worker spawned to replace it, and its counts are in that slot's requests.
func checkGunicorn(t testing.TB, st *observer.Stats, load *httpLoad, hooks string, replaced map[int]bool) {
	t.Helper()
	req, tx, rx := sumRequests(st)
	var accepted, closed uint64
	for _, w := range st.Workers {
		accepted += w.Accepted
		closed += w.Closed
		t.Logf("slot %d pid %d accepting %d: requests %d delta %d tx %d rx %d accepted %d closed %d respawn_count %d (clients: %d responses from this pid)",
			w.ID, w.PID, w.Accepting, w.Requests, w.DeltaRequests, w.TX, w.RX, w.Accepted, w.Closed, w.RespawnCount, load.byPID[w.PID])
	}
	t.Logf("requests: ours %d, clients completed %d (diff %+d, %.4f%%); %d lost before a response",
		req, load.ok, int64(req)-load.ok, 100*float64(int64(req)-load.ok)/float64(max(load.ok, 1)), load.lost)
	t.Logf("tx: ours %d, clients received %d (diff %+d); rx: ours %d, clients sent %d answered + %d lost",
		tx, load.received, int64(tx)-load.received, rx, load.sent, load.lostSent)
	t.Logf("connections: ours accepted %d closed %d; clients %d with requests + %d idle; %d responses by sendfile",
		accepted, closed, load.conns, load.idle, load.sendfile)
	t.Logf("dropped: %v", st.Observer.Dropped)

	if st.Observer.Hooks != hooks {
		t.Errorf("dump says hooks %q, asked for %q", st.Observer.Hooks, hooks)
	}
	// The issue allows 0.2%; the count is exact here, so any difference
	// is a miscount worth failing on.
	if req != uint64(load.ok) {
		t.Errorf("sum of workers' requests %d, clients completed %d", req, load.ok)
	}
	if tx != uint64(load.received) {
		t.Errorf("sum of workers' tx %d, clients received %d", tx, load.received)
	}
	if rx != uint64(load.sent) {
		t.Errorf("sum of workers' rx %d, clients sent %d in answered requests", rx, load.sent)
	}
	if accepted != uint64(load.conns+load.idle) {
		t.Errorf("workers accepted %d connections, clients opened %d", accepted, load.conns+load.idle)
	}
	if closed != accepted {
		t.Errorf("workers closed %d of the %d connections they accepted; all are closed", closed, accepted)
	}
	byPID := workersByPID(st)
	for pid, n := range load.byPID {
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

// TestGunicornSyncWorkers: 4 sync workers (one request per connection, the
// server closes it), 3,000 requests, a fifth of them sent by sendfile, and
// idle connections.
func TestGunicornSyncWorkers(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := startGunicorn(t, 4, "-k", "sync")
			d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--hooks", hooks)
			load := driveHTTP(t, p.addr, 3000, 1, 16, 100)
			st := gunicornSettle(t, d, load)
			checkGunicorn(t, st, load, hooks, nil)
			if len(st.Workers) != 4 {
				t.Errorf("%d workers in the dump, gunicorn has 4", len(st.Workers))
			}
		})
	}
}

// TestGunicornGthreadKeepAlive: 4 gthread workers of 4 threads with
// keep-alive; 100 connections of 30 requests each, plus idle connections.
func TestGunicornGthreadKeepAlive(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := startGunicorn(t, 4, "-k", "gthread", "--threads", "4", "--keep-alive", "5")
			d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--hooks", hooks)
			load := driveHTTP(t, p.addr, 100, 30, 50, 100)
			st := gunicornSettle(t, d, load)
			checkGunicorn(t, st, load, hooks, nil)
			if len(st.Workers) != 4 {
				t.Errorf("%d workers in the dump, gunicorn has 4", len(st.Workers))
			}
		})
	}
}

// backgroundLoad runs conc clients until stopped, each opening connections
// of up to perConn keep-alive requests, one idle connection every idleEvery.
// A request lost on a connection the server closed (a keep-alive connection
// of a worker that exited) is counted as lost and the client reconnects.
type backgroundLoad struct {
	load *httpLoad
	stop atomic.Bool
	wg   sync.WaitGroup
	errs chan error
}

func startBackgroundLoad(addr string, conc, perConn, idleEvery int) *backgroundLoad {
	b := &backgroundLoad{load: &httpLoad{}, errs: make(chan error, conc)}
	var next, conns atomic.Int64
	for range conc {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for !b.stop.Load() {
				if n := conns.Add(1); n%int64(idleEvery) == 0 {
					if err := b.load.idleConn(addr, int(n)); err != nil {
						b.errs <- err
						return
					}
				}
				h, err := dialHTTP(addr, b.load)
				if err != nil {
					b.errs <- err
					return
				}
				var closing bool
				for r := 0; r < perConn && !b.stop.Load(); r++ {
					if closing, err = h.do(int(next.Add(1))); err != nil || closing {
						break
					}
				}
				if errors.Is(err, errLost) {
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

// waitCompleted waits until the clients completed n requests, failing the
// test if one of them failed.
func (b *backgroundLoad) waitCompleted(t testing.TB, n int64, what string, also func() error) {
	t.Helper()
	waitFor(t, 30*time.Second, what, func() error {
		select {
		case err := <-b.errs:
			b.errs <- err
			t.Fatal(err)
		default:
		}
		if got := b.load.completed(); got < n {
			return fmt.Errorf("%d requests completed, want %d", got, n)
		}
		if also != nil {
			return also()
		}
		return nil
	})
}

func (b *backgroundLoad) finish(t testing.TB) *httpLoad {
	t.Helper()
	b.stop.Store(true)
	b.wg.Wait()
	close(b.errs)
	for err := range b.errs {
		t.Fatal(err)
	}
	return b.load
}

// TestGunicornHUPReload: SIGHUP makes gunicorn's master fork a new set of
// workers and then stop the old ones gracefully (gthread workers drop their
// idle keep-alive connections), all under load. The totals across the
// reload still equal the clients', and the new workers are in the dump.
//
// gunicorn's master sends SIGTERM to the old workers again on each turn of
// its loop until they are gone; one landing while Python shuts down (its
// handler already reset) kills the worker with keep-alive connections still
// open, which the kernel then closes: they must count as closed.
func TestGunicornHUPReload(t *testing.T) {
	testutil.RequireEBPF(t)
	kinds := []struct {
		name string
		args []string
	}{
		{"sync", []string{"-k", "sync"}},
		{"gthread", []string{"-k", "gthread", "--threads", "4", "--keep-alive", "5"}},
	}
	for _, kind := range kinds {
		t.Run(kind.name, func(t *testing.T) {
			for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
				t.Run(hooks, func(t *testing.T) { gunicornHUP(t, hooks, kind.args...) })
			}
		})
	}
}

func gunicornHUP(t *testing.T, hooks string, args ...string) {
	p := startGunicorn(t, 4, args...)
	d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--hooks", hooks)
	old, err := childPIDs(p.pid)
	if err != nil {
		t.Fatal(err)
	}
	b := startBackgroundLoad(p.addr, 32, 20, 20)
	b.waitCompleted(t, int64(testutil.Scale(1500)), "1,500 requests (scaled) before the reload", nil)

	// A reader polls through the reload, as uwsgitop would: which slots the
	// new workers take depends on whether a dump is read while old and new
	// workers are both alive.
	polled := make(chan int)
	pollStop := make(chan struct{})
	go func() {
		most := 0
		for {
			select {
			case <-pollStop:
				polled <- most
				return
			case <-time.After(20 * time.Millisecond):
			}
			if st, err := readStats(d.addr); err == nil {
				most = max(most, len(st.Workers))
			}
		}
	}()
	if err := syscall.Kill(p.pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	atHUP := b.load.completed()
	var fresh []int
	waitFor(t, 30*time.Second, "gunicorn to replace its workers", func() error {
		kids, err := childPIDs(p.pid)
		if err != nil {
			return err
		}
		for _, k := range kids {
			if slices.Contains(old, k) {
				return fmt.Errorf("old worker %d still running (children %v)", k, kids)
			}
		}
		if len(kids) != 4 {
			return fmt.Errorf("children %v", kids)
		}
		fresh = kids
		return nil
	})
	atNew := b.load.completed()
	close(pollStop)
	mostSlots := <-polled
	b.waitCompleted(t, atNew+int64(testutil.Scale(1500)), "1,500 requests (scaled) after the reload", func() error {
		b.load.mu.Lock()
		defer b.load.mu.Unlock()
		for _, k := range fresh {
			if b.load.byPID[k] == 0 {
				return fmt.Errorf("new worker %d has served nothing yet", k)
			}
		}
		return nil
	})
	load := b.finish(t)
	t.Logf("old workers %v, new workers %v; requests completed: %d before SIGHUP, %d when the old workers were gone, %d in all",
		old, fresh, atHUP, atNew, load.ok)

	st := gunicornSettle(t, d, load)
	replaced := map[int]bool{}
	for _, k := range old {
		replaced[k] = true
	}
	checkGunicorn(t, st, load, hooks, replaced)
	var live int
	respawns := map[uint64]int{}
	for _, w := range st.Workers {
		live += w.Accepting
		respawns[w.RespawnCount]++
	}
	byPID := workersByPID(st)
	for _, k := range fresh {
		if w, ok := byPID[k]; !ok || w.Accepting != 1 {
			t.Errorf("new worker %d is not a live worker in the dump", k)
		}
	}
	if live != 4 {
		t.Errorf("%d live workers in the dump, gunicorn has 4", live)
	}
	// The reload keeps the slots: once the old workers are gone, each new
	// one sits in an old one's slot, its second process.
	if len(st.Workers) != 4 || respawns[2] != 4 {
		t.Errorf("after the reload: %d slots, by respawn_count %v; want slots 1..4, each respawned once", len(st.Workers), respawns)
	}
	for i, w := range st.Workers {
		if w.ID != i+1 {
			t.Errorf("slot ids %d at position %d: want 1..4", w.ID, i)
		}
	}
	t.Logf("a reader polling every 20 ms through the reload saw up to %d slots; the dump now has %d slots (%d live), slots by respawn_count: %v",
		mostSlots, len(st.Workers), live, respawns)
	if accepted, closed := sumConns(st); closed != accepted {
		t.Errorf("%d connections accepted, %d closed: those a worker held when it exited must count as closed", accepted, closed)
	}
}

// TestGunicornKilledWorkerConnectionsClosed: a gthread worker holding idle
// keep-alive connections is killed (as gunicorn's --timeout does with
// SIGKILL after SIGABRT, or the OOM killer). The kernel closes its
// connections, the clients read EOF; the slot keeps its requests and tx, and
// its connections should all show closed.
func TestGunicornKilledWorkerConnectionsClosed(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := startGunicorn(t, 1, "-k", "gthread", "--threads", "4", "--keep-alive", "30")
			d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--hooks", hooks)
			kids, err := childPIDs(p.pid)
			if err != nil {
				t.Fatal(err)
			}
			victim := kids[0]
			load := &httpLoad{}
			var clients []*httpClient
			for i := range 10 {
				h, err := dialHTTP(p.addr, load)
				if err != nil {
					t.Fatal(err)
				}
				if closing, err := h.do(i + 1); err != nil || closing {
					t.Fatalf("request %d: closing %v, %v", i, closing, err)
				}
				clients = append(clients, h)
			}
			if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			for _, h := range clients {
				if err := h.Close(true); err != nil { // EOF from the kernel's close
					t.Fatal(err)
				}
			}
			st := waitStats(t, d.addr, 30*time.Second, "gunicorn to respawn the killed worker and workerstats to fold it", func(st *observer.Stats) error {
				if len(st.Workers) != 1 || st.Workers[0].PID == victim || st.Workers[0].Accepting != 1 {
					return fmt.Errorf("slots %+v", st.Workers)
				}
				return nil
			})
			w := st.Workers[0]
			t.Logf("slot 1 after killing pid %d: pid %d respawn_count %d requests %d (clients %d) tx %d (clients received %d) accepted %d closed %d (clients saw all %d closed)",
				victim, w.PID, w.RespawnCount, w.Requests, load.ok, w.TX, load.received, w.Accepted, w.Closed, load.conns)
			if w.Requests != uint64(load.ok) || w.TX != uint64(load.received) || w.Accepted != uint64(load.conns) || w.RespawnCount != 2 {
				t.Errorf("slot 1: requests %d tx %d accepted %d respawn_count %d; clients completed %d received %d opened %d",
					w.Requests, w.TX, w.Accepted, w.RespawnCount, load.ok, load.received, load.conns)
			}
			if w.Closed != w.Accepted {
				t.Errorf("slot 1: %d accepted, %d closed: the killed worker's connections must count as closed", w.Accepted, w.Closed)
			}
		})
	}
}
