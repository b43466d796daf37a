package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
)

// The tests in this file run Debian's real uWSGI and compare, worker by
// worker, what workerstats counted from outside with uWSGI's own stats.

// testApp answers /N with an N-byte body, so responses differ in size and a
// byte miscounted anywhere shows in tx. Every response names the worker pid
// that served it (X-Worker) and how many requests that worker had in
// progress at once while serving it (X-Inflight, above 1 only with
// --threads). The query string can ask for tell=PATH: write the worker's
// pid to PATH first; sleep=MS: take MS milliseconds before answering;
// stream=MS: send the first half of the body, then the rest MS milliseconds
// later. With OUTBOUND=host:port set it first talks to that server over its
// own connection, which must never count.
const testApp = `
import os, socket, threading, time
from urllib.parse import parse_qs

OUTBOUND = os.environ.get("OUTBOUND")
lock = threading.Lock()
inflight = 0

def application(env, start_response):
    global inflight
    with lock:
        inflight += 1
        most = inflight
    try:
        q = parse_qs(env.get("QUERY_STRING", ""))
        if "tell" in q:
            path = q["tell"][0]
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.rename(path + ".tmp", path)
        if OUTBOUND:
            host, port = OUTBOUND.rsplit(":", 1)
            s = socket.create_connection((host, int(port)))
            s.sendall(b"q" * 100)
            got = 0
            while got < 1000:
                d = s.recv(65536)
                if not d:
                    break
                got += len(d)
            s.close()
        if "sleep" in q:
            time.sleep(int(q["sleep"][0]) / 1000.0)
        if "raise" in q:
            raise RuntimeError("the test asked this request to fail")
        if "crash" in q:
            import ctypes
            ctypes.string_at(0)  # a segmentation fault
        if "exit" in q:
            os._exit(int(q["exit"][0]))
        if "alloc" in q:
            hog = b"m" * (int(q["alloc"][0]) << 20)  # touched, page by page
            del hog
        try:
            n = int(env.get("PATH_INFO", "/").strip("/") or "0")
        except ValueError:
            n = 0
        with lock:
            most = max(most, inflight)
    finally:
        with lock:
            inflight -= 1
    body = b"y" * n
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("X-Worker", str(os.getpid())), ("X-Inflight", str(most))])
    if "stream" in q:
        pause = int(q["stream"][0]) / 1000.0
        def halves():
            yield body[:n // 2]
            time.sleep(pause)
            yield body[n // 2:]
        return halves()
    return [body]
`

type uwsgiPool struct {
	bin     string // the uwsgi binary
	pid     int
	stats   string // uWSGI's own stats socket
	pidfile string // the master's --pidfile, with uwsgiOptions.pidfile
	network string // the app's socket: "tcp" (--http-socket) or "unix" (--socket)
	addr    string
	// request builds the bytes of request i.
	request func(i int) []byte
	// raises says request i makes the app raise (uwsgiOptions.raiseEvery):
	// uWSGI closes its connection without a response.
	raises func(i int) bool
}

// dial connects to the app's socket.
func (p *uwsgiPool) dial() (net.Conn, error) { return net.Dial(p.network, p.addr) }

type uwsgiOptions struct {
	unix      bool     // --socket PATH (uwsgi protocol) instead of --http-socket
	processes int      // workers
	threads   int      // --threads per worker, when above 1
	slowEvery int      // every slowEvery-th request takes slowTime in the app
	env       []string // extra environment for the app
	pidfile   bool     // --pidfile, for uwsgi --reload
	// raiseEvery: the app raises in every raiseEvery-th request (offset
	// by one from slowEvery's).
	raiseEvery int
	extra      []string // more uWSGI options
}

// slowTime is how long a slow request (uwsgiOptions.slowEvery) takes.
const slowTime = 20 * time.Millisecond

func startUWSGI(t testing.TB, o uwsgiOptions) *uwsgiPool {
	t.Helper()
	bin := testutil.RequireCommand(t, "uwsgi", "uwsgi uwsgi-plugin-python3")
	if _, err := os.Stat("/usr/lib/uwsgi/plugins/python3_plugin.so"); err != nil {
		testutil.SkipOrFail(t, "uWSGI's python3 plugin is not installed (apt-get install uwsgi-plugin-python3)")
	}
	dir := t.TempDir()
	app := filepath.Join(dir, "app.py")
	if err := os.WriteFile(app, []byte(testApp), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &uwsgiPool{bin: bin, stats: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	args := []string{
		"--plugin", "python3", "--master", "--processes", strconv.Itoa(o.processes),
		"--wsgi-file", app, "--stats", p.stats, "--need-app", "--disable-logging",
		"--listen", "128",
	}
	if o.threads > 1 {
		args = append(args, "--threads", strconv.Itoa(o.threads))
	}
	args = append(args, o.extra...)
	if o.pidfile {
		p.pidfile = filepath.Join(dir, "uwsgi.pid")
		args = append(args, "--pidfile", p.pidfile)
	}
	p.raises = func(i int) bool { return o.raiseEvery > 0 && i%o.raiseEvery == 1 }
	query := func(i int) string {
		switch {
		case o.slowEvery > 0 && i%o.slowEvery == 0:
			return fmt.Sprintf("sleep=%d", slowTime.Milliseconds())
		case p.raises(i):
			return "raise=1"
		}
		return ""
	}
	if o.unix {
		sock := filepath.Join(dir, "app.sock")
		args = append(args, "--socket", sock)
		p.network, p.addr = "unix", sock
		p.request = func(i int) []byte { return uwsgiRequest(i, query(i)) }
	} else {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		args = append(args, "--http-socket", addr)
		p.network, p.addr = "tcp", addr
		p.request = func(i int) []byte {
			path := fmt.Sprintf("/%d", responseSize(i))
			if q := query(i); q != "" {
				path += "?" + q
			}
			return []byte(fmt.Sprintf("GET %s HTTP/1.0\r\nHost: test\r\nUser-Agent: workerstats-test\r\n\r\n", path))
		}
	}
	var log bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), o.env...)
	cmd.Stdout, cmd.Stderr = &log, &log
	// SIGINT: uWSGI's immediate shutdown of master and workers.
	startGroup(t, cmd, syscall.SIGINT, func() string { return "uWSGI log:\n" + log.String() })
	p.pid = cmd.Process.Pid
	waitStats(t, p.stats, 30*time.Second, "uWSGI's workers to start", func(st *observer.Stats) error {
		if len(st.Workers) != o.processes {
			return fmt.Errorf("%d workers", len(st.Workers))
		}
		for _, w := range st.Workers {
			if w.PID == 0 || w.Accepting == 0 {
				return fmt.Errorf("worker %d not accepting yet", w.ID)
			}
		}
		return idleConn(p.network, p.addr, false) // a connection without data: no request for uWSGI
	})
	return p
}

// responseSize varies response sizes between 0 and a few pages.
func responseSize(i int) int { return (i * 7919) % 20000 }

// uwsgiRequest builds a uwsgi-protocol packet for GET /N?query: a 4-byte
// header (modifier1, little-endian size, modifier2) and length-prefixed
// key/values.
func uwsgiRequest(i int, query string) []byte {
	uri := fmt.Sprintf("/%d", responseSize(i))
	if query != "" {
		uri += "?" + query
	}
	vars := [][2]string{
		{"REQUEST_METHOD", "GET"},
		{"PATH_INFO", fmt.Sprintf("/%d", responseSize(i))},
		{"REQUEST_URI", uri},
		{"QUERY_STRING", query},
		{"SERVER_PROTOCOL", "HTTP/1.0"},
		{"SERVER_NAME", "test"},
		{"SERVER_PORT", "80"},
		{"HTTP_HOST", "test"},
	}
	var body bytes.Buffer
	for _, kv := range vars {
		binary.Write(&body, binary.LittleEndian, uint16(len(kv[0])))
		body.WriteString(kv[0])
		binary.Write(&body, binary.LittleEndian, uint16(len(kv[1])))
		body.WriteString(kv[1])
	}
	pkt := []byte{0, 0, 0, 0}
	binary.LittleEndian.PutUint16(pkt[1:3], uint16(body.Len()))
	return append(pkt, body.Bytes()...)
}

// loadResult is what the clients saw. It is updated under mu while the
// load runs (completed reads its progress) and read freely once it is done.
type loadResult struct {
	mu             sync.Mutex
	ok, idle       int64
	sent, received int64 // bytes of the completed requests
	// With loadSpec.cut, requests a dying worker cut off: partial ones got
	// the beginning of their response (partialReceived bytes in all), lost
	// ones not a byte of it.
	partial, lost   int64
	partialReceived int64
	// Requests the app raised in (uwsgiPool.raises), which got no
	// response, and their bytes.
	raised, raisedSent int64
	byPID              map[int]*pidTally // by the X-Worker pid that answered
}

// pidTally is what the clients got from one worker process.
type pidTally struct {
	ok, partial int64
	received    int64 // bytes of its complete and partial responses
	inflight    int   // most requests it had in progress at once
}

func (res *loadResult) completed() int64 {
	res.mu.Lock()
	defer res.mu.Unlock()
	return res.ok
}

// add records one request's outcome. A partial response cut inside its
// headers has no X-Worker: it is tallied under pid 0.
func (res *loadResult) add(r response, req, resp []byte) {
	res.mu.Lock()
	defer res.mu.Unlock()
	if len(resp) == 0 {
		res.lost++
		return
	}
	if res.byPID == nil {
		res.byPID = map[int]*pidTally{}
	}
	w := res.byPID[r.pid]
	if w == nil {
		w = &pidTally{}
		res.byPID[r.pid] = w
	}
	w.received += int64(len(resp))
	w.inflight = max(w.inflight, r.inflight)
	if r.complete {
		w.ok++
		res.ok++
		res.sent += int64(len(req))
		res.received += int64(len(resp))
		return
	}
	w.partial++
	res.partial++
	res.partialReceived += int64(len(resp))
}

// tally returns what the clients got from pid (zero if nothing).
func (res *loadResult) tally(pid int) pidTally {
	res.mu.Lock()
	defer res.mu.Unlock()
	if w := res.byPID[pid]; w != nil {
		return *w
	}
	return pidTally{}
}

// response is one response as a client read it.
type response struct {
	complete bool // status 200, and a body of the size asked for
	cut      bool // a well-formed beginning of such a response, cut short
	pid      int  // X-Worker
	inflight int  // X-Inflight
}

// parseResponse checks resp, all a client read of a response, is testApp's
// answer of a size-byte body, or a well-formed beginning of one.
func parseResponse(resp []byte, size int) response {
	br := bufio.NewReader(bytes.NewReader(resp))
	h, err := readHTTPResponse(br)
	cut := errors.Is(err, io.ErrUnexpectedEOF)
	switch {
	case err != nil && !cut, h.status != 0 && h.status != 200:
		return response{}
	case h.length < 0: // cut before the end of the headers
		return response{cut: true}
	}
	r := response{pid: h.int("x-worker"), inflight: h.int("x-inflight")}
	if h.length != size || r.pid == 0 || bytes.Count(h.body, []byte("y")) != len(h.body) {
		return r
	}
	if cut {
		r.cut = true
	} else if _, err := br.ReadByte(); err == io.EOF {
		r.complete = true // and nothing after it
	}
	return r
}

// loadSpec is the load driveLoad sends: requests from conc concurrent
// clients, one request per connection, and idle connections that close
// without sending a byte.
type loadSpec struct {
	requests, conc, idle int
	// cut: a worker is killed while the load runs, so a request may end
	// with part of its response or none (the kernel closes the dead
	// worker's connection); it is tallied as partial or lost instead of
	// failing the test.
	cut bool
}

// drive sends n requests from conc concurrent clients, one request per
// connection, and idle connections that close without sending a byte.
func drive(t testing.TB, p *uwsgiPool, n, conc, idle int) *loadResult {
	t.Helper()
	res := &loadResult{}
	driveLoad(t, p, loadSpec{requests: testutil.Scale(n), conc: conc, idle: testutil.Scale(idle)}, res)
	return res
}

// driveLoad sends spec's load and records what the clients saw in res.
func driveLoad(t testing.TB, p *uwsgiPool, spec loadSpec, res *loadResult) {
	t.Helper()
	idleEvery := 0
	if spec.idle > 0 {
		idleEvery = spec.requests / spec.idle
	}
	parallel(t, spec.requests, spec.conc, func(i int) error {
		if idleEvery > 0 && i%idleEvery == 0 {
			if err := idleConn(p.network, p.addr, i%(2*idleEvery) == 0); err != nil {
				return err
			}
			res.mu.Lock()
			res.idle++
			res.mu.Unlock()
		}
		req := p.request(i)
		c, err := p.dial()
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		var resp []byte
		_, err = c.Write(req)
		if err == nil {
			resp, err = io.ReadAll(c)
		}
		if err == nil && len(resp) == 0 && p.raises(i) {
			res.mu.Lock()
			res.raised++
			res.raisedSent += int64(len(req))
			res.mu.Unlock()
			return nil
		}
		r := parseResponse(resp, responseSize(i))
		// A worker killed mid-request: the kernel closed its side, with
		// a reset if it had not read the whole request yet.
		cutOff := err == nil || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
		switch {
		case err == nil && r.complete:
		case spec.cut && cutOff && (r.complete || r.cut || len(resp) == 0):
		case err != nil:
			return fmt.Errorf("request %d: %w (after %d bytes of response)", i, err, len(resp))
		default:
			return fmt.Errorf("request %d: bad response %q", i, truncate(resp))
		}
		res.add(r, req, resp)
		return nil
	})
}

// compareWorkers returns nil when, for every uWSGI worker pid, workerstats
// shows the same requests, delta_requests, tx, slot id and respawn count.
// base holds, by slot id, what our slot counts and uWSGI's dump no longer
// does (its counters restart at a reload): requests, tx and respawn_count
// must then equal uWSGI's plus base's. nil is none.
func compareWorkers(ours, theirs *observer.Stats, base map[int]observer.Worker) error {
	byPID := workersByPID(ours)
	var diffs []string
	for _, u := range theirs.Workers {
		o, ok := byPID[u.PID]
		b := base[u.ID]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("pid %d (uWSGI worker %d) missing", u.PID, u.ID))
		case o.Requests != b.Requests+u.Requests || o.TX != b.TX+u.TX || o.DeltaRequests != u.DeltaRequests ||
			o.Exceptions != b.Exceptions+u.Exceptions:
			diffs = append(diffs, fmt.Sprintf("pid %d: requests %d/%d delta %d/%d exceptions %d/%d tx %d/%d (ours/uWSGI's%s)",
				u.PID, o.Requests, b.Requests+u.Requests, o.DeltaRequests, u.DeltaRequests, o.Exceptions, b.Exceptions+u.Exceptions,
				o.TX, b.TX+u.TX, plusBase(b)))
		case o.ID != u.ID || o.RespawnCount != b.RespawnCount+u.RespawnCount:
			diffs = append(diffs, fmt.Sprintf("pid %d: id %d/%d respawn_count %d/%d (ours/uWSGI's%s)",
				u.PID, o.ID, u.ID, o.RespawnCount, b.RespawnCount+u.RespawnCount, plusBase(b)))
		}
	}
	if len(ours.Workers) != len(theirs.Workers) {
		diffs = append(diffs, fmt.Sprintf("%d workers, uWSGI has %d", len(ours.Workers), len(theirs.Workers)))
	}
	if len(diffs) > 0 {
		return errors.New(strings.Join(diffs, "; "))
	}
	return nil
}

func plusBase(b observer.Worker) string {
	if b.Requests == 0 && b.TX == 0 && b.RespawnCount == 0 && b.Exceptions == 0 {
		return ""
	}
	return fmt.Sprintf(" + %d requests, %d exceptions, %d tx, %d respawns uWSGI no longer counts", b.Requests, b.Exceptions, b.TX, b.RespawnCount)
}

func sumRequests(st *observer.Stats) (req, tx, rx uint64) {
	for _, w := range st.Workers {
		req += w.Requests
		tx += w.TX
		rx += w.RX
	}
	return
}

// settle waits until uWSGI has accounted every completed request and
// workerstats agrees with it worker by worker, and returns both dumps.
func settle(t testing.TB, p *uwsgiPool, d *daemon, wantTotal uint64) (ours, theirs *observer.Stats) {
	t.Helper()
	return settleFrom(t, p, d, wantTotal, nil)
}

// settleFrom is settle where our slots also hold base's counts (see
// compareWorkers) and uWSGI's wantTotal does not.
func settleFrom(t testing.TB, p *uwsgiPool, d *daemon, wantTotal uint64, base map[int]observer.Worker) (ours, theirs *observer.Stats) {
	t.Helper()
	waitFor(t, 20*time.Second, "workerstats to agree with uWSGI", func() error {
		var err error
		if theirs, err = readStats(p.stats); err != nil {
			return err
		}
		if got, _, _ := sumRequests(theirs); got != wantTotal {
			return fmt.Errorf("uWSGI counts %d requests, clients completed %d", got, wantTotal)
		}
		if ours, err = readStats(d.addr); err != nil {
			return err
		}
		return compareWorkers(ours, theirs, base)
	})
	return ours, theirs
}

func logComparison(t testing.TB, ours, theirs *observer.Stats) {
	t.Helper()
	byPID := workersByPID(ours)
	for _, u := range theirs.Workers {
		o := byPID[u.PID]
		t.Logf("worker %d pid %d: requests %d (uWSGI %d), tx %d (uWSGI %d), avg_rt %dus (uWSGI %dus), running_time %dus (uWSGI %dus)",
			u.ID, u.PID, o.Requests, u.Requests, o.TX, u.TX, o.AvgRT, u.AvgRT, o.RunningTime, u.RunningTime)
	}
	progs := append([]observer.ProgramStats(nil), ours.Observer.Programs...)
	sort.Slice(progs, func(i, j int) bool { return progs[i].Name < progs[j].Name })
	for _, p := range progs {
		t.Logf("program %-15s runs %9d  avg %4d ns/run", p.Name, p.RunCount, p.AvgNs)
	}
	t.Logf("dropped: %v", ours.Observer.Dropped)
}

// comparePool is the whole comparison: start uWSGI, observe it from before
// its first request, drive load, and compare per worker.
func comparePool(t *testing.T, o uwsgiOptions, requests, idle int) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := startUWSGI(t, o)
			d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
				"--hooks", hooks, "--bpf-stats")
			res := drive(t, p, requests, 32, idle)
			ours, theirs := settle(t, p, d, uint64(res.ok))
			logComparison(t, ours, theirs)
			if ours.Observer.Hooks != hooks {
				t.Errorf("dump says hooks %q, asked for %q", ours.Observer.Hooks, hooks)
			}
			// Across workers, bytes equal what the clients moved: nothing
			// from idle or outbound connections leaked in.
			_, tx, rx := sumRequests(ours)
			if tx != uint64(res.received) || rx != uint64(res.sent) {
				t.Errorf("workers' tx %d rx %d, clients received %d sent %d", tx, rx, res.received, res.sent)
			}
			checkDropped(t, ours, 0)
			// And worker by worker, what the clients got from each pid.
			for _, w := range ours.Workers {
				if c := res.tally(w.PID); w.Requests != uint64(c.ok) || w.TX != uint64(c.received) {
					t.Errorf("pid %d: requests %d tx %d, clients got %d responses, %d bytes from it", w.PID, w.Requests, w.TX, c.ok, c.received)
				}
			}
			if o.threads > 1 {
				checkThreads(t, o.threads, res, theirs)
			}
			t.Logf("%d requests and %d idle connections, counts equal uWSGI's for all %d workers", res.ok, res.idle, len(theirs.Workers))
		})
	}
}

// checkThreads fails t unless the pool really ran threads that overlapped:
// uWSGI shows threads cores per worker, and every worker had requests in
// progress in two threads at once.
func checkThreads(t *testing.T, threads int, res *loadResult, theirs *observer.Stats) {
	t.Helper()
	for _, u := range theirs.Workers {
		var served []uint64
		for _, c := range u.Cores {
			served = append(served, c.Requests)
		}
		most := res.tally(u.PID).inflight
		t.Logf("worker %d pid %d: requests by thread (uWSGI's cores) %v; at most %d in progress at once", u.ID, u.PID, served, most)
		if len(u.Cores) != threads {
			t.Errorf("uWSGI worker %d has %d cores, want %d threads", u.ID, len(u.Cores), threads)
		}
		if most < 2 {
			t.Errorf("worker pid %d never had two requests in progress at once: its threads did not overlap", u.PID)
		}
	}
}

// TestUWSGIThreadsMatchOwnStats: 4 workers of 4 threads each, one request
// in 8 slow enough (20 ms) that the threads of a worker serve requests at
// the same time, on connections each thread accepts itself.
func TestUWSGIThreadsMatchOwnStats(t *testing.T) {
	comparePool(t, uwsgiOptions{processes: 4, threads: 4, slowEvery: 8}, 8000, 200)
}

func TestUWSGIHTTPSocketMatchesOwnStats(t *testing.T) {
	comparePool(t, uwsgiOptions{processes: 4}, 20000, 500)
}

func TestUWSGIUnixSocketMatchesOwnStats(t *testing.T) {
	comparePool(t, uwsgiOptions{processes: 4, unix: true}, 10000, 250)
}

// TestUWSGIAppExceptionsMatchOwnStats: an app that raises in one request
// in five, over uWSGI's http-socket and the uwsgi protocol on a Unix
// socket. uWSGI closes such a request's connection without a byte of
// response and counts it as a request and an exception; so does
// workerstats, worker by worker, and across workers they are exactly the
// requests the clients got no answer to.
func TestUWSGIAppExceptionsMatchOwnStats(t *testing.T) {
	eachSocketAndHooks(t, func(t *testing.T, unix bool, hooks string) {
		p := startUWSGI(t, uwsgiOptions{processes: 4, unix: unix, raiseEvery: 5})
		d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--hooks", hooks)
		res := drive(t, p, 5000, 16, 100)
		ours, theirs := settle(t, p, d, uint64(res.ok+res.raised))
		logComparison(t, ours, theirs)
		var req, exc, appExc, rx uint64
		for _, w := range ours.Workers {
			req, exc, appExc, rx = req+w.Requests, exc+w.Exceptions, appExc+w.Apps[0].Exceptions, rx+w.RX
		}
		if exc != uint64(res.raised) || appExc != exc || req != uint64(res.ok+res.raised) || rx != uint64(res.sent+res.raisedSent) {
			t.Errorf("workers: requests %d exceptions %d (apps' %d) rx %d; clients: %d answered, %d without a response, %d bytes sent",
				req, exc, appExc, rx, res.ok, res.raised, res.sent+res.raisedSent)
		}
		if res.raised == 0 {
			t.Error("no request raised")
		}
		checkDropped(t, ours, 0)
		t.Logf("%d requests answered and %d that raised: requests and exceptions equal uWSGI's for all %d workers", res.ok, res.raised, len(theirs.Workers))
	})
}

// eachSocketAndHooks runs test as a subtest for uWSGI's http-socket and
// its uwsgi protocol on a Unix socket, each on every hook set.
func eachSocketAndHooks(t *testing.T, test func(t *testing.T, unix bool, hooks string)) {
	testutil.RequireEBPF(t)
	for _, unix := range []bool{false, true} {
		for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
			name := "http-socket/" + hooks
			if unix {
				name = "unix/" + hooks
			}
			t.Run(name, func(t *testing.T) { test(t, unix, hooks) })
		}
	}
}

// TestUWSGIOutboundNotCounted: every request makes the worker open its own
// TCP connection and move 1,100 bytes on it; tx still equals uWSGI's.
func TestUWSGIOutboundNotCounted(t *testing.T) {
	peer := testutil.TCPServer(t, func(c net.Conn) {
		buf := make([]byte, 100)
		if _, err := io.ReadFull(c, buf); err == nil {
			c.Write(bytes.Repeat([]byte("r"), 1000))
		}
	})
	comparePool(t, uwsgiOptions{processes: 4, env: []string{"OUTBOUND=" + peer}}, 5000, 100)
}

// TestUWSGIRespawnedWorkerCounted: a worker killed and respawned by the
// master after workerstats started is followed by the kernel; its slot keeps
// its counts and the new process's own requests count from its first.
func TestUWSGIRespawnedWorkerCounted(t *testing.T) {
	testutil.RequireEBPF(t)
	p := startUWSGI(t, uwsgiOptions{processes: 2})
	d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	first := drive(t, p, 2000, 8, 0)
	_, before := settle(t, p, d, uint64(first.ok))

	victim := before.Workers[0]
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitStats(t, p.stats, 30*time.Second, "uWSGI to respawn the killed worker", func(st *observer.Stats) error {
		w := st.Workers[0]
		if w.PID == victim.PID || w.PID == 0 || w.Accepting == 0 {
			return fmt.Errorf("worker 1 is pid %d accepting %d", w.PID, w.Accepting)
		}
		return nil
	})
	second := drive(t, p, 2000, 8, 0)
	ours, theirs := settle(t, p, d, uint64(first.ok+second.ok))
	logComparison(t, ours, theirs)
	w := ours.Workers[0]
	if w.PID == victim.PID || w.RespawnCount != 2 || w.DeltaRequests == 0 || w.Requests <= victim.Requests {
		t.Errorf("slot 1 after respawn: pid %d (killed %d) respawn_count %d delta_requests %d requests %d (before %d)",
			w.PID, victim.PID, w.RespawnCount, w.DeltaRequests, w.Requests, victim.Requests)
	}
}
