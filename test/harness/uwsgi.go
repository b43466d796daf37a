package harness

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
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// uWSGI: Debian's real uWSGI running a Python app of the tests' own, its
// requests driven by clients that tally what each worker pid answered, and
// its own stats server to compare workerstats' counts with, worker by
// worker.

// uwsgiApp answers /N with an N-byte body, so responses differ in size and a
// byte miscounted anywhere shows in tx. Every response names the worker pid
// that served it (X-Worker) and how many requests that worker had in
// progress at once while serving it (X-Inflight, above 1 only with
// --threads). The query string can ask for tell=PATH: write the worker's
// pid to PATH first; sleep=MS: take MS milliseconds before answering;
// stream=MS: send the first half of the body, then the rest MS milliseconds
// later. With OUTBOUND=host:port set it first talks to that server over its
// own connection, which must never count.
const uwsgiApp = `
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

// UWSGIPool is a uWSGI pool StartUWSGI started: its master, its own
// stats server and the app's socket.
type UWSGIPool struct {
	Bin     string // the uwsgi binary
	PID     int
	Stats   string // uWSGI's own stats socket
	Pidfile string // the master's --pidfile, with UWSGIOptions.Pidfile
	Network string // the app's socket: "tcp" (--http-socket) or "unix" (--socket)
	Addr    string
	// Request builds the bytes of request i.
	Request func(i int) []byte
	// Raises says request i makes the app raise (UWSGIOptions.RaiseEvery):
	// uWSGI closes its connection without a response.
	Raises func(i int) bool
	// DialFunc connects to the app's socket: nil for net.Dial, the
	// Container's Dial for a pool in one.
	DialFunc DialFunc
}

// Dial connects to the app's socket.
func (p *UWSGIPool) Dial() (net.Conn, error) {
	if p.DialFunc != nil {
		return p.DialFunc(p.Network, p.Addr)
	}
	return net.Dial(p.Network, p.Addr)
}

// UWSGIOptions is the pool StartUWSGI runs.
type UWSGIOptions struct {
	Unix      bool     // --socket PATH (uwsgi protocol) instead of --http-socket
	Processes int      // workers
	Threads   int      // --threads per worker, when above 1
	SlowEvery int      // every SlowEvery-th request takes SlowTime in the app
	Env       []string // extra environment for the app
	Pidfile   bool     // --pidfile, for uwsgi --reload
	// RaiseEvery: the app raises in every RaiseEvery-th request (offset
	// by one from SlowEvery's).
	RaiseEvery int
	Extra      []string // more uWSGI options
	// Addr is the http-socket's address; FreeAddr's when empty. Pools in
	// two network namespaces may share one.
	Addr string
	// Container runs the pool in a container: the PID is then its
	// master's host pid, Stats a Unix socket in the pool's directory
	// (seen at the same path inside), and the pidfile in the
	// container's Dir, where a pool started again in it writes too.
	Container *Container
}

// SlowTime is how long a slow request (UWSGIOptions.SlowEvery) takes.
const SlowTime = 20 * time.Millisecond

// StartUWSGI runs uWSGI's master and o.Processes workers of the tests'
// app (uwsgiApp) in a process group of their own, stopped with SIGINT when
// t ends, and waits until every worker accepts. It skips t (or fails it,
// in CI) without uWSGI or its python3 plugin.
func StartUWSGI(t testing.TB, o UWSGIOptions) *UWSGIPool {
	t.Helper()
	bin := testutil.RequireCommand(t, "uwsgi", "uwsgi uwsgi-plugin-python3")
	if _, err := os.Stat("/usr/lib/uwsgi/plugins/python3_plugin.so"); err != nil {
		testutil.SkipOrFail(t, "uWSGI's python3 plugin is not installed (apt-get install uwsgi-plugin-python3)")
	}
	dir := t.TempDir()
	app := filepath.Join(dir, "app.py")
	if err := os.WriteFile(app, []byte(uwsgiApp), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &UWSGIPool{Bin: bin, Stats: FreeAddr(t)}
	if o.Container != nil {
		p.Stats, p.DialFunc = filepath.Join(dir, "stats.sock"), o.Container.Dial
	}
	args := []string{
		"--plugin", "python3", "--master", "--processes", strconv.Itoa(o.Processes),
		"--wsgi-file", app, "--stats", p.Stats, "--need-app", "--disable-logging",
		"--listen", "128",
	}
	if o.Threads > 1 {
		args = append(args, "--threads", strconv.Itoa(o.Threads))
	}
	args = append(args, o.Extra...)
	if o.Pidfile {
		p.Pidfile = filepath.Join(dir, "uwsgi.pid")
		if o.Container != nil {
			p.Pidfile = filepath.Join(o.Container.Dir, "uwsgi.pid")
		}
		args = append(args, "--pidfile", p.Pidfile)
	}
	p.Raises = func(i int) bool { return o.RaiseEvery > 0 && i%o.RaiseEvery == 1 }
	query := func(i int) string {
		switch {
		case o.SlowEvery > 0 && i%o.SlowEvery == 0:
			return fmt.Sprintf("sleep=%d", SlowTime.Milliseconds())
		case p.Raises(i):
			return "raise=1"
		}
		return ""
	}
	if o.Unix {
		sock := filepath.Join(dir, "app.sock")
		args = append(args, "--socket", sock)
		p.Network, p.Addr = "unix", sock
		p.Request = func(i int) []byte { return UWSGIRequest(i, query(i)) }
	} else {
		addr := o.Addr
		if addr == "" {
			addr = FreeAddr(t)
		}
		args = append(args, "--http-socket", addr)
		p.Network, p.Addr = "tcp", addr
		p.Request = func(i int) []byte {
			path := fmt.Sprintf("/%d", ResponseSize(i))
			if q := query(i); q != "" {
				path += "?" + q
			}
			return []byte(fmt.Sprintf("GET %s HTTP/1.0\r\nHost: test\r\nUser-Agent: workerstats-test\r\n\r\n", path))
		}
	}
	var log bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Stdout, cmd.Stderr = &log, &log
	// SIGINT: uWSGI's immediate shutdown of master and workers.
	p.PID, _ = StartGroupIn(t, o.Container, cmd, syscall.SIGINT, func() string { return "uWSGI log:\n" + log.String() }, dir)
	WaitStats(t, p.Stats, testutil.Patience(30*time.Second), "uWSGI's workers to start", func(st *observer.Stats) error {
		if len(st.Workers) != o.Processes {
			return fmt.Errorf("%d workers", len(st.Workers))
		}
		for _, w := range st.Workers {
			if w.PID == 0 || w.Accepting == 0 {
				return fmt.Errorf("worker %d not accepting yet", w.ID)
			}
		}
		return IdleConnWith(p.DialFunc, p.Network, p.Addr, false) // a connection without data: no request for uWSGI
	})
	return p
}

// ResponseSize varies response sizes between 0 and a few pages.
func ResponseSize(i int) int { return (i * 7919) % 20000 }

// UWSGIRequest builds a uwsgi-protocol packet for GET /N?query: a 4-byte
// header (modifier1, little-endian size, modifier2) and length-prefixed
// key/values.
func UWSGIRequest(i int, query string) []byte {
	uri := fmt.Sprintf("/%d", ResponseSize(i))
	if query != "" {
		uri += "?" + query
	}
	vars := [][2]string{
		{"REQUEST_METHOD", "GET"},
		{"PATH_INFO", fmt.Sprintf("/%d", ResponseSize(i))},
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

// LoadResult is what the clients saw. It is updated under mu while the
// load runs (Completed reads its progress) and read freely once it is done.
type LoadResult struct {
	mu             sync.Mutex
	OK, Idle       int64
	Sent, Received int64 // bytes of the completed requests
	// With LoadSpec.Cut, requests a dying worker cut off: partial ones got
	// the beginning of their response (PartialReceived bytes in all), lost
	// ones not a byte of it.
	Partial, Lost   int64
	PartialReceived int64
	// Requests the app raised in (UWSGIPool.Raises), which got no
	// response, and their bytes.
	Raised, RaisedSent int64
	ByPID              map[int]*PIDTally // by the X-Worker pid that answered
}

// PIDTally is what the clients got from one worker process.
type PIDTally struct {
	OK, Partial int64
	Received    int64 // bytes of its complete and partial responses
	Inflight    int   // most requests it had in progress at once
}

// Completed is how many requests the clients have completed so far.
func (res *LoadResult) Completed() int64 {
	res.mu.Lock()
	defer res.mu.Unlock()
	return res.OK
}

// Add records one request's outcome. A partial response cut inside its
// headers has no X-Worker: it is tallied under pid 0.
func (res *LoadResult) Add(r Response, req, resp []byte) {
	res.mu.Lock()
	defer res.mu.Unlock()
	if len(resp) == 0 {
		res.Lost++
		return
	}
	if res.ByPID == nil {
		res.ByPID = map[int]*PIDTally{}
	}
	w := res.ByPID[r.PID]
	if w == nil {
		w = &PIDTally{}
		res.ByPID[r.PID] = w
	}
	w.Received += int64(len(resp))
	w.Inflight = max(w.Inflight, r.Inflight)
	if r.Complete {
		w.OK++
		res.OK++
		res.Sent += int64(len(req))
		res.Received += int64(len(resp))
		return
	}
	w.Partial++
	res.Partial++
	res.PartialReceived += int64(len(resp))
}

// Tally returns what the clients got from pid (zero if nothing).
func (res *LoadResult) Tally(pid int) PIDTally {
	res.mu.Lock()
	defer res.mu.Unlock()
	if w := res.ByPID[pid]; w != nil {
		return *w
	}
	return PIDTally{}
}

// Response is one response as a client read it.
type Response struct {
	Complete bool // status 200, and a body of the size asked for
	Cut      bool // a well-formed beginning of such a response, cut short
	PID      int  // X-Worker
	Inflight int  // X-Inflight
}

// ParseResponse checks resp, all a client read of a response, is uwsgiApp's
// answer of a size-byte body, or a well-formed beginning of one.
func ParseResponse(resp []byte, size int) Response {
	br := bufio.NewReader(bytes.NewReader(resp))
	h, err := ReadHTTPResponse(br)
	cut := errors.Is(err, io.ErrUnexpectedEOF)
	switch {
	case err != nil && !cut, h.Status != 0 && h.Status != 200:
		return Response{}
	case h.Length < 0: // cut before the end of the headers
		return Response{Cut: true}
	}
	r := Response{PID: h.Int("x-worker"), Inflight: h.Int("x-inflight")}
	if h.Length != size || r.PID == 0 || bytes.Count(h.Body, []byte("y")) != len(h.Body) {
		return r
	}
	if cut {
		r.Cut = true
	} else if _, err := br.ReadByte(); err == io.EOF {
		r.Complete = true // and nothing after it
	}
	return r
}

// LoadSpec is the load DriveLoad sends: requests from conc concurrent
// clients, one request per connection, and idle connections that close
// without sending a byte.
type LoadSpec struct {
	Requests, Conc, Idle int
	// Cut: a worker is killed while the load runs, so a request may end
	// with part of its response or none (the kernel closes the dead
	// worker's connection); it is tallied as partial or lost instead of
	// failing the test.
	Cut bool
}

// Drive sends n requests from conc concurrent clients, one request per
// connection, and idle connections that close without sending a byte.
func Drive(t testing.TB, p *UWSGIPool, n, conc, idle int) *LoadResult {
	t.Helper()
	res := &LoadResult{}
	DriveLoad(t, p, LoadSpec{Requests: testutil.Scale(n), Conc: conc, Idle: testutil.Scale(idle)}, res)
	return res
}

// DriveLoad sends spec's load and records what the clients saw in res.
func DriveLoad(t testing.TB, p *UWSGIPool, spec LoadSpec, res *LoadResult) {
	t.Helper()
	idleEvery := 0
	if spec.Idle > 0 {
		idleEvery = spec.Requests / spec.Idle
	}
	Parallel(t, spec.Requests, spec.Conc, func(i int) error {
		if idleEvery > 0 && i%idleEvery == 0 {
			if err := IdleConnWith(p.DialFunc, p.Network, p.Addr, i%(2*idleEvery) == 0); err != nil {
				return err
			}
			res.mu.Lock()
			res.Idle++
			res.mu.Unlock()
		}
		req := p.Request(i)
		c, err := p.Dial()
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
		if err == nil && len(resp) == 0 && p.Raises(i) {
			res.mu.Lock()
			res.Raised++
			res.RaisedSent += int64(len(req))
			res.mu.Unlock()
			return nil
		}
		r := ParseResponse(resp, ResponseSize(i))
		// A worker killed mid-request: the kernel closed its side, with
		// a reset if it had not read the whole request yet.
		cutOff := err == nil || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
		switch {
		case err == nil && r.Complete:
		case spec.Cut && cutOff && (r.Complete || r.Cut || len(resp) == 0):
		case err != nil:
			return fmt.Errorf("request %d: %w (after %d bytes of response)", i, err, len(resp))
		default:
			return fmt.Errorf("request %d: bad response %q", i, Truncate(resp))
		}
		res.Add(r, req, resp)
		return nil
	})
}

// CompareWorkers returns nil when, for every uWSGI worker pid, workerstats
// shows the same requests, delta_requests, tx, slot id and respawn count.
// base holds, by slot id, what our slot counts and uWSGI's dump no longer
// does (its counters restart at a reload): requests, tx and respawn_count
// must then equal uWSGI's plus base's. nil is none.
func CompareWorkers(ours, theirs *observer.Stats, base map[int]observer.Worker) error {
	byPID := WorkersByPID(ours)
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

// Settle waits until uWSGI has accounted every completed request and
// workerstats agrees with it worker by worker, and returns both dumps.
func Settle(t testing.TB, p *UWSGIPool, d *Daemon, wantTotal uint64) (ours, theirs *observer.Stats) {
	t.Helper()
	return SettleFrom(t, p, d, wantTotal, nil)
}

// SettleFrom is Settle where our slots also hold base's counts (see
// CompareWorkers) and uWSGI's wantTotal does not.
func SettleFrom(t testing.TB, p *UWSGIPool, d *Daemon, wantTotal uint64, base map[int]observer.Worker) (ours, theirs *observer.Stats) {
	t.Helper()
	WaitFor(t, 20*time.Second, "workerstats to agree with uWSGI", func() error {
		var err error
		if theirs, err = ReadStats(p.Stats); err != nil {
			return err
		}
		if got, _, _ := SumRequests(theirs); got != wantTotal {
			return fmt.Errorf("uWSGI counts %d requests, clients completed %d", got, wantTotal)
		}
		if ours, err = ReadStats(d.Addr); err != nil {
			return err
		}
		return CompareWorkers(ours, theirs, base)
	})
	return ours, theirs
}

// LogComparison logs, worker by worker, our counts beside uWSGI's, and
// our programs' statistics and drops.
func LogComparison(t testing.TB, ours, theirs *observer.Stats) {
	t.Helper()
	byPID := WorkersByPID(ours)
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

// KillAndRespawn kills the worker in uWSGI's slot id with SIGKILL while the
// pool is quiet and waits until uWSGI has replaced it; it returns the new
// worker's pid.
func KillAndRespawn(t testing.TB, p *UWSGIPool, id int) int {
	t.Helper()
	st, err := ReadStats(p.Stats)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(st.Workers, func(w observer.Worker) bool { return w.ID == id })
	if i < 0 {
		t.Fatalf("uWSGI has no worker %d", id)
	}
	old := st.Workers[i].PID
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var fresh int
	WaitStats(t, p.Stats, 20*time.Second, "uWSGI to respawn the killed worker", func(st *observer.Stats) error {
		for _, w := range st.Workers {
			if w.ID == id && w.PID != old && w.PID != 0 {
				fresh = w.PID
				return nil
			}
		}
		return fmt.Errorf("worker %d still pid %d", id, old)
	})
	return fresh
}
