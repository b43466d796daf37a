package main

import (
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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/observer"
)

// The tests in this file run Debian's real uWSGI and compare, worker by
// worker, what workerstats counted from outside with uWSGI's own stats.

// testApp answers /N with an N-byte body, so responses differ in size and a
// byte miscounted anywhere shows in tx. With OUTBOUND=host:port set it first
// talks to that server over its own connection, which must never count.
const testApp = `
import os, socket

OUTBOUND = os.environ.get("OUTBOUND")

def application(env, start_response):
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
    try:
        n = int(env.get("PATH_INFO", "/").strip("/") or "0")
    except ValueError:
        n = 0
    body = b"y" * n
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`

type uwsgiPool struct {
	pid   int
	stats string // uWSGI's own stats socket
	dial  func() (net.Conn, error)
	// request builds the bytes of request i.
	request func(i int) []byte
}

type uwsgiOptions struct {
	unix      bool     // --socket PATH (uwsgi protocol) instead of --http-socket
	processes int      // workers
	env       []string // extra environment for the app
}

func startUWSGI(t testing.TB, o uwsgiOptions) *uwsgiPool {
	t.Helper()
	bin := requireCommand(t, "uwsgi", "uwsgi uwsgi-plugin-python3")
	if _, err := os.Stat("/usr/lib/uwsgi/plugins/python3_plugin.so"); err != nil {
		skipOrFail(t, "uWSGI's python3 plugin is not installed (apt-get install uwsgi-plugin-python3)")
	}
	dir := t.TempDir()
	app := filepath.Join(dir, "app.py")
	if err := os.WriteFile(app, []byte(testApp), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &uwsgiPool{stats: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	args := []string{
		"--plugin", "python3", "--master", "--processes", strconv.Itoa(o.processes),
		"--wsgi-file", app, "--stats", p.stats, "--need-app", "--disable-logging",
		"--listen", "128",
	}
	if o.unix {
		sock := filepath.Join(dir, "app.sock")
		args = append(args, "--socket", sock)
		p.dial = func() (net.Conn, error) { return net.Dial("unix", sock) }
		p.request = uwsgiRequest
	} else {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		args = append(args, "--http-socket", addr)
		p.dial = func() (net.Conn, error) { return net.Dial("tcp", addr) }
		p.request = func(i int) []byte {
			return []byte(fmt.Sprintf("GET /%d HTTP/1.0\r\nHost: test\r\nUser-Agent: workerstats-test\r\n\r\n", responseSize(i)))
		}
	}
	var log bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), o.env...)
	cmd.Stdout, cmd.Stderr = &log, &log
	// SIGINT: uWSGI's immediate shutdown of master and workers.
	startGroup(t, cmd, syscall.SIGINT, func() string { return "uWSGI log:\n" + log.String() })
	p.pid = cmd.Process.Pid
	waitFor(t, 30*time.Second, "uWSGI's workers to start", func() error {
		st, err := readStats(p.stats)
		if err != nil {
			return err
		}
		if len(st.Workers) != o.processes {
			return fmt.Errorf("%d workers", len(st.Workers))
		}
		for _, w := range st.Workers {
			if w.PID == 0 || w.Accepting == 0 {
				return fmt.Errorf("worker %d not accepting yet", w.ID)
			}
		}
		c, err := p.dial()
		if err != nil {
			return err
		}
		return c.Close() // a connection without data: no request for uWSGI
	})
	return p
}

// responseSize varies response sizes between 0 and a few pages.
func responseSize(i int) int { return (i * 7919) % 20000 }

// uwsgiRequest builds a uwsgi-protocol packet for GET /N: a 4-byte header
// (modifier1, little-endian size, modifier2) and length-prefixed key/values.
func uwsgiRequest(i int) []byte {
	vars := [][2]string{
		{"REQUEST_METHOD", "GET"},
		{"PATH_INFO", fmt.Sprintf("/%d", responseSize(i))},
		{"REQUEST_URI", fmt.Sprintf("/%d", responseSize(i))},
		{"QUERY_STRING", ""},
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

type loadResult struct {
	ok, idle       int64
	sent, received int64 // bytes of the completed requests
}

// drive sends n requests from conc concurrent clients, one request per
// connection, and idle connections that close without sending a byte.
func drive(t testing.TB, p *uwsgiPool, n, conc, idle int) loadResult {
	t.Helper()
	var res loadResult
	idleEvery := 0
	if idle > 0 {
		idleEvery = n / idle
	}
	parallel(t, n, conc, func(i int) error {
		if idleEvery > 0 && i%idleEvery == 0 {
			c, err := p.dial()
			if err != nil {
				return fmt.Errorf("idle connect: %w", err)
			}
			if i%(2*idleEvery) == 0 {
				time.Sleep(5 * time.Millisecond) // a slow health checker
			}
			c.Close()
			atomic.AddInt64(&res.idle, 1)
		}
		req := p.request(i)
		c, err := p.dial()
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write(req); err != nil {
			return fmt.Errorf("request %d: %w", i, err)
		}
		resp, err := io.ReadAll(c)
		if err != nil {
			return fmt.Errorf("response %d: %w", i, err)
		}
		want := responseSize(i)
		if !bytes.HasPrefix(resp, []byte("HTTP/1.")) || !bytes.Contains(resp[:20], []byte(" 200 ")) ||
			!bytes.HasSuffix(resp, bytes.Repeat([]byte("y"), want)) {
			return fmt.Errorf("request %d: bad response %q", i, truncate(resp))
		}
		atomic.AddInt64(&res.ok, 1)
		atomic.AddInt64(&res.sent, int64(len(req)))
		atomic.AddInt64(&res.received, int64(len(resp)))
		return nil
	})
	return res
}

// compareWorkers returns nil when, for every uWSGI worker pid, workerstats
// shows the same requests, tx, slot id and respawn count.
func compareWorkers(ours, theirs *observer.Stats) error {
	byPID := map[int]observer.Worker{}
	for _, w := range ours.Workers {
		byPID[w.PID] = w
	}
	var diffs []string
	for _, u := range theirs.Workers {
		o, ok := byPID[u.PID]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("pid %d (uWSGI worker %d) missing", u.PID, u.ID))
		case o.Requests != u.Requests || o.TX != u.TX || o.DeltaRequests != u.DeltaRequests:
			diffs = append(diffs, fmt.Sprintf("pid %d: requests %d/%d delta %d/%d tx %d/%d (ours/uWSGI's)",
				u.PID, o.Requests, u.Requests, o.DeltaRequests, u.DeltaRequests, o.TX, u.TX))
		case o.ID != u.ID || o.RespawnCount != u.RespawnCount:
			diffs = append(diffs, fmt.Sprintf("pid %d: id %d/%d respawn_count %d/%d (ours/uWSGI's)",
				u.PID, o.ID, u.ID, o.RespawnCount, u.RespawnCount))
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
		return compareWorkers(ours, theirs)
	})
	return ours, theirs
}

func logComparison(t testing.TB, ours, theirs *observer.Stats) {
	t.Helper()
	byPID := map[int]observer.Worker{}
	for _, w := range ours.Workers {
		byPID[w.PID] = w
	}
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
	requireEBPF(t)
	for _, hooks := range hookModes(t) {
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
			for name, n := range ours.Observer.Dropped {
				if n != 0 {
					t.Errorf("dropped %s = %d", name, n)
				}
			}
			t.Logf("%d requests and %d idle connections, counts equal uWSGI's for all %d workers", res.ok, res.idle, len(theirs.Workers))
		})
	}
}

func TestUWSGIHTTPSocketMatchesOwnStats(t *testing.T) {
	comparePool(t, uwsgiOptions{processes: 4}, 20000, 500)
}

func TestUWSGIUnixSocketMatchesOwnStats(t *testing.T) {
	comparePool(t, uwsgiOptions{processes: 4, unix: true}, 10000, 250)
}

// TestUWSGIOutboundNotCounted: every request makes the worker open its own
// TCP connection and move 1,100 bytes on it; tx still equals uWSGI's.
func TestUWSGIOutboundNotCounted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 100)
				if _, err := io.ReadFull(c, buf); err == nil {
					c.Write(bytes.Repeat([]byte("r"), 1000))
				}
			}()
		}
	}()
	comparePool(t, uwsgiOptions{processes: 4, env: []string{"OUTBOUND=" + ln.Addr().String()}}, 5000, 100)
}

// TestUWSGIRespawnedWorkerCounted: a worker killed and respawned by the
// master after workerstats started is followed by the kernel; its slot keeps
// its counts and the new process's own requests count from its first.
func TestUWSGIRespawnedWorkerCounted(t *testing.T) {
	requireEBPF(t)
	p := startUWSGI(t, uwsgiOptions{processes: 2})
	d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	first := drive(t, p, 2000, 8, 0)
	_, before := settle(t, p, d, uint64(first.ok))

	victim := before.Workers[0]
	if err := syscall.Kill(victim.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "uWSGI to respawn the killed worker", func() error {
		st, err := readStats(p.stats)
		if err != nil {
			return err
		}
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
