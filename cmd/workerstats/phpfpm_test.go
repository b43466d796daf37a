package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
)

// The test in this file runs Debian's real PHP-FPM, speaks FastCGI to it
// over its Unix socket, and compares, worker by worker, what workerstats
// counted from outside with FPM's own status page.
//
// How FPM counts: a worker increments its "requests" when it has accepted a
// connection, before it reads a byte (fpm_request_reading_headers). So FPM
// counts a connection that closes without sending anything as a request,
// where workerstats does not, and FPM's count for a worker equals the
// connections it accepted. It also counts the status request itself, in the
// very page it renders: a status read shows every connection accepted before
// it, plus itself. workerstats counts that status request too (it is a real
// FastCGI request), so once it has completed both sides include it.
//
// Known bug, reported as a skip while it lasts: FPM leaves the client's
// empty FCGI_STDIN record unread for a GET and drains it with recv() after
// shutdown(SHUT_WR) at the end of the response, and workerstats takes those
// 8 bytes for a second request. Without that record (not sent as a test)
// every figure below is exact on both hook sets.

const fpmWorkers = 4

// fpmScript answers ?n=N with an N-byte body.
const fpmScript = `<?php
header('Content-Type: text/plain');
echo str_repeat('y', (int)($_GET['n'] ?? 0));
`

// FastCGI record types and roles (the FastCGI 1.0 specification).
const (
	fcgiVersion      = 1
	fcgiBeginRequest = 1
	fcgiEndRequest   = 3
	fcgiParams       = 4
	fcgiStdin        = 5
	fcgiStdout       = 6
	fcgiStderr       = 7
	fcgiResponder    = 1
	fcgiRequestID    = 1
)

type fpmPool struct {
	pid    int
	dir    string
	sock   string
	script string
	log    string // FPM's error_log
}

// startPHPFPM runs php-fpmX.Y in the foreground with a static pool of
// fpmWorkers on a Unix socket, and waits until its workers are forked and
// the socket exists. It never connects to the socket: the first connection
// is the test's, made once workerstats watches.
func startPHPFPM(t testing.TB) *fpmPool {
	t.Helper()
	bins, _ := filepath.Glob("/usr/sbin/php-fpm*")
	sort.Strings(bins)
	if len(bins) == 0 {
		testutil.SkipOrFail(t, "php-fpm is not installed (apt-get install php-fpm)")
	}
	bin := bins[len(bins)-1]
	dir := t.TempDir()
	p := &fpmPool{
		dir:    dir,
		sock:   filepath.Join(dir, "fpm.sock"),
		script: filepath.Join(dir, "app.php"),
		log:    filepath.Join(dir, "fpm.log"),
	}
	if err := os.WriteFile(p.script, []byte(fpmScript), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`[global]
pid = %s
error_log = %s
log_level = notice
daemonize = no

[test]
listen = %s
listen.backlog = 1024
pm = static
pm.max_children = %d
pm.status_path = /status
`, filepath.Join(dir, "fpm.pid"), p.log, p.sock, fpmWorkers)
	confPath := filepath.Join(dir, "fpm.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-F", "-y", confPath, "-R")
	cmd.Stdout, cmd.Stderr = &out, &out
	// SIGTERM: FPM's immediate shutdown of master and workers.
	exited := startGroup(t, cmd, syscall.SIGTERM, func() string {
		flog, _ := os.ReadFile(p.log)
		return fmt.Sprintf("%s output:\n%s\nFPM log:\n%s", filepath.Base(bin), out.String(), flog)
	})
	p.pid = cmd.Process.Pid
	waitFor(t, 30*time.Second, "PHP-FPM's workers to start", func() error {
		select {
		case <-exited:
			flog, _ := os.ReadFile(p.log)
			t.Fatalf("%s exited early:\n%s\n%s", bin, out.String(), flog)
		default:
		}
		if _, err := os.Stat(p.sock); err != nil {
			return err
		}
		kids, err := observer.Procfs{Root: "/proc"}.Children(p.pid)
		if err != nil {
			return err
		}
		if len(kids) != fpmWorkers {
			return fmt.Errorf("%d workers", len(kids))
		}
		return nil
	})
	return p
}

// fcgiRecord appends one FastCGI record, padded to a multiple of 8 bytes.
func fcgiRecord(b *bytes.Buffer, typ byte, content []byte) {
	pad := (8 - len(content)%8) % 8
	b.Write([]byte{fcgiVersion, typ, 0, fcgiRequestID, byte(len(content) >> 8), byte(len(content)), byte(pad), 0})
	b.Write(content)
	b.Write(make([]byte, pad))
}

func fcgiLength(b *bytes.Buffer, n int) {
	if n < 128 {
		b.WriteByte(byte(n))
		return
	}
	binary.Write(b, binary.BigEndian, uint32(n)|1<<31)
}

// fcgiRequest builds a whole responder request without keep-conn: begin,
// the params, an empty params record, an empty stdin record.
func fcgiRequest(params [][2]string) []byte {
	var b, kv bytes.Buffer
	fcgiRecord(&b, fcgiBeginRequest, []byte{0, fcgiResponder, 0, 0, 0, 0, 0, 0})
	for _, p := range params {
		fcgiLength(&kv, len(p[0]))
		fcgiLength(&kv, len(p[1]))
		kv.WriteString(p[0])
		kv.WriteString(p[1])
	}
	fcgiRecord(&b, fcgiParams, kv.Bytes())
	fcgiRecord(&b, fcgiParams, nil)
	fcgiRecord(&b, fcgiStdin, nil)
	return b.Bytes()
}

// fpmGet builds a GET of scriptName?query, served from file.
func fpmGet(p *fpmPool, file, scriptName, query string) []byte {
	uri := scriptName
	if query != "" {
		uri += "?" + query
	}
	return fcgiRequest([][2]string{
		{"GATEWAY_INTERFACE", "CGI/1.1"},
		{"SERVER_SOFTWARE", "workerstats-test"},
		{"SCRIPT_FILENAME", file},
		{"SCRIPT_NAME", scriptName},
		{"DOCUMENT_ROOT", p.dir},
		{"REQUEST_METHOD", "GET"},
		{"REQUEST_URI", uri},
		{"QUERY_STRING", query},
		{"SERVER_PROTOCOL", "HTTP/1.1"},
		{"SERVER_NAME", "test"},
		{"SERVER_ADDR", "127.0.0.1"},
		{"SERVER_PORT", "80"},
		{"REMOTE_ADDR", "127.0.0.1"},
		{"REMOTE_PORT", "40000"},
		{"HTTP_HOST", "test"},
		{"CONTENT_LENGTH", ""},
		{"CONTENT_TYPE", ""},
	})
}

// fpmExchange is one FastCGI request on its own connection.
type fpmExchange struct {
	sent, received int64 // bytes on the socket
	stdout         []byte
	stderr         []byte
}

// fpmDo sends req on a new connection and reads records until
// FCGI_END_REQUEST, then to EOF: FPM shuts its side down after the end
// record, and nothing may follow it.
func fpmDo(p *fpmPool, req []byte) (*fpmExchange, error) {
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(req); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	ex := &fpmExchange{sent: int64(len(req))}
	cr := &countingConn{Conn: c}
	r := bufio.NewReader(cr)
	for {
		var h [8]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return nil, fmt.Errorf("record header: %w", err)
		}
		n := int(binary.BigEndian.Uint16(h[4:6])) + int(h[6])
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return nil, fmt.Errorf("record body: %w", err)
		}
		if h[0] != fcgiVersion || binary.BigEndian.Uint16(h[2:4]) != fcgiRequestID {
			return nil, fmt.Errorf("bad record header %x", h)
		}
		content := body[:binary.BigEndian.Uint16(h[4:6])]
		switch h[1] {
		case fcgiStdout:
			ex.stdout = append(ex.stdout, content...)
		case fcgiStderr:
			ex.stderr = append(ex.stderr, content...)
		case fcgiEndRequest:
			if len(content) < 8 || content[4] != 0 {
				return nil, fmt.Errorf("end request %x: not FCGI_REQUEST_COMPLETE", content)
			}
			rest, err := io.ReadAll(r)
			if err != nil {
				return nil, fmt.Errorf("after end request: %w", err)
			}
			if len(rest) != 0 {
				return nil, fmt.Errorf("%d bytes after end request", len(rest))
			}
			ex.received = cr.n
			return ex, nil
		default:
			return nil, fmt.Errorf("unexpected record type %d", h[1])
		}
	}
}

// fpmBody splits a CGI response into its headers and body.
func fpmBody(stdout []byte) (head string, body []byte, err error) {
	i := bytes.Index(stdout, []byte("\r\n\r\n"))
	if i < 0 {
		return "", nil, fmt.Errorf("no end of headers in %q", truncate(stdout))
	}
	head = string(stdout[:i])
	if strings.Contains(head, "Status:") && !strings.Contains(head, "Status: 200") {
		return head, nil, fmt.Errorf("status not 200: %q", head)
	}
	return head, stdout[i+4:], nil
}

// fpmTraffic is what the test's clients moved on FPM's socket.
type fpmTraffic struct {
	ok, idle, status int64 // completed app requests, connections closed without data, status reads
	sent, received   int64 // bytes of completed requests, status reads included
	servedBy         map[int]uint64
}

func (a *fpmTraffic) add(ex *fpmExchange) {
	atomic.AddInt64(&a.sent, ex.sent)
	atomic.AddInt64(&a.received, ex.received)
}

// fpmDrive sends n requests to the app and idle connections, from conc
// concurrent clients, one request per connection. With n == 0 it makes only
// the idle connections.
func fpmDrive(t testing.TB, p *fpmPool, tr *fpmTraffic, n, conc, idle int) {
	t.Helper()
	n, idle = testutil.Scale(n), testutil.Scale(idle)
	total, idleEvery := n, 0
	if n == 0 {
		total, idleEvery = idle, 1
	} else if idle > 0 {
		idleEvery = n / idle
	}
	parallel(t, total, conc, func(i int) error {
		if idleEvery > 0 && i%idleEvery == 0 {
			if err := idleConn("unix", p.sock, i%(2*idleEvery) == 0 || (n == 0 && i%10 == 0)); err != nil {
				return err
			}
			atomic.AddInt64(&tr.idle, 1)
		}
		if n == 0 {
			return nil
		}
		size := responseSize(i)
		ex, err := fpmDo(p, fpmGet(p, p.script, "/app.php", fmt.Sprintf("n=%d", size)))
		if err == nil {
			var body []byte
			if _, body, err = fpmBody(ex.stdout); err == nil &&
				(len(body) != size || bytes.Count(body, []byte("y")) != size || len(ex.stderr) != 0) {
				err = fmt.Errorf("body of %d bytes for n=%d, stderr %q", len(body), size, ex.stderr)
			}
		}
		if err != nil {
			return fmt.Errorf("request %d: %w", i, err)
		}
		atomic.AddInt64(&tr.ok, 1)
		tr.add(ex)
		return nil
	})
}

// fpmStatus is FPM's /status?full&json.
type fpmStatus struct {
	Pool         string `json:"pool"`
	AcceptedConn uint64 `json:"accepted conn"`
	Processes    []struct {
		PID        int    `json:"pid"`
		State      string `json:"state"`
		Requests   uint64 `json:"requests"`
		RequestURI string `json:"request uri"`
	} `json:"processes"`
}

func (s *fpmStatus) total() (n uint64) {
	for _, p := range s.Processes {
		n += p.Requests
	}
	return n
}

// requests maps each worker pid to FPM's count.
func (s *fpmStatus) requests() map[int]uint64 {
	m := map[int]uint64{}
	for _, p := range s.Processes {
		m[p.PID] = p.Requests
	}
	return m
}

// serving returns the pid of the one worker rendering this page: the only
// one running, on the status URI.
func (s *fpmStatus) serving() (int, error) {
	pid := 0
	for _, p := range s.Processes {
		if p.State == "Running" {
			if pid != 0 {
				return 0, fmt.Errorf("workers %d and %d both running", pid, p.PID)
			}
			if !strings.HasPrefix(p.RequestURI, "/status") {
				return 0, fmt.Errorf("worker %d running %q", p.PID, p.RequestURI)
			}
			pid = p.PID
		}
	}
	if pid == 0 {
		return 0, errors.New("no worker running the status request")
	}
	return pid, nil
}

// fpmReadStatus reads FPM's status page through FastCGI. It is a request
// for FPM and for workerstats alike; which worker served it is on the page.
func fpmReadStatus(p *fpmPool, tr *fpmTraffic) (*fpmStatus, error) {
	ex, err := fpmDo(p, fpmGet(p, filepath.Join(p.dir, "status"), "/status", "full&json"))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	tr.status++
	tr.add(ex)
	_, body, err := fpmBody(ex.stdout)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	var st fpmStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("status %q: %w", truncate(body), err)
	}
	srv, err := st.serving()
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if tr.servedBy == nil {
		tr.servedBy = map[int]uint64{}
	}
	tr.servedBy[srv]++
	return &st, nil
}

// fpmStatusAfter reads the status until FPM has counted every connection the
// clients made (a worker counts a connection just after accepting it, so the
// last few may be a moment behind). Each read is one more request, counted
// in its own page.
func fpmStatusAfter(t testing.TB, p *fpmPool, tr *fpmTraffic) *fpmStatus {
	t.Helper()
	var st *fpmStatus
	waitFor(t, 10*time.Second, "FPM to count every connection", func() error {
		var err error
		if st, err = fpmReadStatus(p, tr); err != nil {
			return err
		}
		if want := uint64(tr.ok + tr.idle + tr.status); st.total() != want || st.AcceptedConn != want {
			return fmt.Errorf("FPM counts %d requests (accepted conn %d), clients made %d connections", st.total(), st.AcceptedConn, want)
		}
		return nil
	})
	return st
}

// fpmSettle waits until workerstats agrees with FPM (see fpmDiffs) and
// returns its workers by pid. Once every connection is closed the request
// counts are final too; the caller compares them.
func fpmSettle(t testing.TB, d *daemon, st *fpmStatus, tr *fpmTraffic) map[int]observer.Worker {
	t.Helper()
	var byPID map[int]observer.Worker
	waitFor(t, 10*time.Second, "workerstats to agree with PHP-FPM", func() error {
		ours, err := readStats(d.addr)
		if err != nil {
			return err
		}
		byPID = workersByPID(ours)
		return fpmDiffs(ours, byPID, st, tr)
	})
	return byPID
}

// fpmDiffs returns nil when workerstats shows every worker of the status
// page with accepted and closed equal to FPM's count (which is the
// connections the worker accepted), tx and rx in all equal to the bytes the
// clients read and wrote on the socket, and nothing dropped.
func fpmDiffs(ours *observer.Stats, byPID map[int]observer.Worker, st *fpmStatus, tr *fpmTraffic) error {
	var diffs []string
	if len(ours.Workers) != len(st.Processes) {
		diffs = append(diffs, fmt.Sprintf("%d workers, FPM has %d", len(ours.Workers), len(st.Processes)))
	}
	for pid, n := range st.requests() {
		o, ok := byPID[pid]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("pid %d missing", pid))
		} else if o.Accepted != n || o.Closed != n {
			diffs = append(diffs, fmt.Sprintf("pid %d: accepted %d closed %d, FPM counts %d connections", pid, o.Accepted, o.Closed, n))
		}
	}
	if _, tx, rx := sumRequests(ours); tx != uint64(tr.received) || rx != uint64(tr.sent) {
		diffs = append(diffs, fmt.Sprintf("workers' tx %d rx %d, clients received %d sent %d", tx, rx, tr.received, tr.sent))
	}
	if ours.Observer.Mode != "ebpf" {
		diffs = append(diffs, fmt.Sprintf("mode %q", ours.Observer.Mode))
	}
	if err := dropped(ours, 0); err != nil {
		diffs = append(diffs, err.Error())
	}
	if len(diffs) > 0 {
		return errors.New(strings.Join(diffs, "; "))
	}
	return nil
}

func fpmLog(t testing.TB, phase string, ours map[int]observer.Worker, st *fpmStatus, tr *fpmTraffic) {
	t.Helper()
	var tx, rx, req uint64
	for _, p := range st.Processes {
		o := ours[p.PID]
		tx, rx, req = tx+o.TX, rx+o.RX, req+o.Requests
		t.Logf("%s: worker %d pid %d: requests %d, accepted %d, closed %d; FPM requests %d; served %d status reads; tx %d rx %d avg_rt %dus",
			phase, o.ID, p.PID, o.Requests, o.Accepted, o.Closed, p.Requests, tr.servedBy[p.PID], o.TX, o.RX, o.AvgRT)
	}
	t.Logf("%s: clients completed %d requests + %d status reads and made %d idle connections; FPM counts %d (accepted conn %d); workerstats requests %d; tx %d (client read %d from the socket), rx %d (client sent %d)",
		phase, tr.ok, tr.status, tr.idle, st.total(), st.AcceptedConn, req, tx, tr.received, rx, tr.sent)
}

// TestPHPFPMMatchesOwnStatus runs Debian's PHP-FPM (pm = static, 4 workers,
// Unix socket), observed from before its first connection, and compares
// every worker's counts with FPM's status page in three phases: requests
// only, requests mixed with connections that close without data, and such
// connections only.
func TestPHPFPMMatchesOwnStatus(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := startPHPFPM(t)
			d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)),
				"--hooks", hooks, "--bpf-stats")
			tr := &fpmTraffic{}

			// Phase 1: requests only. Every connection FPM counts is a
			// request (the status reads included), so per worker our
			// requests equal FPM's.
			fpmDrive(t, p, tr, 3000, 16, 0)
			st := fpmStatusAfter(t, p, tr)
			// A second read with nothing in between: FPM's count grows by
			// exactly one, for the worker serving it, in its own page.
			st2, err := fpmReadStatus(p, tr)
			if err != nil {
				t.Fatal(err)
			}
			srv, _ := st2.serving()
			r1 := st.requests()
			for pid, n := range st2.requests() {
				want := r1[pid]
				if pid == srv {
					want++
				}
				if n != want {
					t.Errorf("FPM's count for pid %d went from %d to %d across one status read served by pid %d", pid, r1[pid], n, srv)
				}
			}
			t.Logf("status reads back to back: FPM's total %d then %d; the second was served by pid %d and counted in its own page", st.total(), st2.total(), srv)
			ours := fpmSettle(t, d, st2, tr)
			fpmLog(t, "requests only", ours, st2, tr)

			// FPM drains the client's empty FCGI_STDIN record after it has
			// responded: those bytes must not count as another request.
			for pid, n := range st2.requests() {
				if o := ours[pid]; o.Requests != n {
					t.Errorf("pid %d: requests %d, FPM's %d", pid, o.Requests, n)
				}
			}
			requests := func(o observer.Worker) uint64 { return o.Requests }

			// Phase 2: requests mixed with connections that close without
			// data. FPM counts those, workerstats does not: per worker FPM's
			// count equals our accepted (checked by fpmSettle), FPM's count
			// less our requests is that worker's share of the idle
			// connections, and the shares add up to them.
			before := ours
			fpmDrive(t, p, tr, 1500, 16, 300)
			st3 := fpmStatusAfter(t, p, tr)
			ours = fpmSettle(t, d, st3, tr)
			fpmLog(t, "mixed", ours, st3, tr)
			var idleShares, sum uint64
			for pid, n := range st3.requests() {
				r := requests(ours[pid])
				sum += r
				if r > n || r < requests(before[pid]) {
					t.Errorf("pid %d: requests %d (before the phase %d), FPM's %d", pid, r, requests(before[pid]), n)
					continue
				}
				idleShares += n - r
			}
			if sum != uint64(tr.ok+tr.status) || idleShares != uint64(tr.idle) {
				t.Errorf("workers' requests sum to %d (clients completed %d); FPM counts %d more (clients made %d idle connections)",
					sum, tr.ok+tr.status, idleShares, tr.idle)
			}

			// Phase 3: connections that close without data only. Per
			// worker, FPM's count grows by the connections it accepted
			// (our accepted, checked by fpmSettle) while our requests grow
			// by exactly the status reads that worker served.
			before, servedBefore := ours, map[int]uint64{}
			for pid, n := range tr.servedBy {
				servedBefore[pid] = n
			}
			fpmDrive(t, p, tr, 0, 16, 200)
			st4 := fpmStatusAfter(t, p, tr)
			ours = fpmSettle(t, d, st4, tr)
			fpmLog(t, "idle only", ours, st4, tr)
			sum = 0
			for pid := range st4.requests() {
				got := requests(ours[pid]) - requests(before[pid])
				sum += requests(ours[pid])
				if want := tr.servedBy[pid] - servedBefore[pid]; got != want {
					t.Errorf("pid %d: requests grew by %d over connections without data; it served %d status reads", pid, got, want)
				}
			}
			if sum != uint64(tr.ok+tr.status) {
				t.Errorf("workers' requests sum to %d, clients completed %d", sum, tr.ok+tr.status)
			}
			if dump, err := readStats(d.addr); err != nil {
				t.Error(err)
			} else if dump.Observer.Hooks != hooks {
				t.Errorf("dump says hooks %q, asked for %q", dump.Observer.Hooks, hooks)
			}
		})
	}
}

// fpmProcess is one process of FPM's /status?full&json, with what it says
// of the request a process is in.
type fpmProcess struct {
	PID      int    `json:"pid"`
	State    string `json:"state"`
	Method   string `json:"request method"`
	URI      string `json:"request uri"`
	Script   string `json:"script"`
	Duration int64  `json:"request duration"` // µs
}

// TestPHPFPMShowsWhatWorkersServe: with --requests, during a slow script
// the busy process's core shows the request method, URI and script FPM's
// own full status shows for it, and a request_start that agrees with FPM's
// request duration; per-pid requests still equal FPM's once it is done.
func TestPHPFPMShowsWhatWorkersServe(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := startPHPFPM(t)
			slow := filepath.Join(p.dir, "slow.php")
			if err := os.WriteFile(slow, []byte("<?php usleep((int)$_GET['ms'] * 1000); echo 'done';\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--hooks", hooks, "--requests")
			tr := &fpmTraffic{}
			done := make(chan error, 1)
			go func() {
				ex, err := fpmDo(p, fpmGet(p, slow, "/slow.php", "ms=3000&who=test"))
				if err == nil {
					tr.add(ex)
				}
				done <- err
			}()
			var theirs fpmProcess
			waitFor(t, 2500*time.Millisecond, "FPM to show the slow request running", func() error {
				ex, err := fpmDo(p, fpmGet(p, filepath.Join(p.dir, "status"), "/status", "full&json"))
				if err != nil {
					return err
				}
				tr.add(ex)
				tr.status++
				_, body, err := fpmBody(ex.stdout)
				if err != nil {
					return err
				}
				var st struct {
					Processes []fpmProcess `json:"processes"`
				}
				if err := json.Unmarshal(body, &st); err != nil {
					return err
				}
				for _, pr := range st.Processes {
					if pr.State == "Running" && strings.HasPrefix(pr.URI, "/slow.php") {
						theirs = pr
						return nil
					}
				}
				return fmt.Errorf("processes %+v", st.Processes)
			})
			seen := time.Now()
			var ours observer.Worker
			waitStats(t, d.addr, 2*time.Second, "workerstats to show the slow request", func(st *observer.Stats) error {
				ours = workersByPID(st)[theirs.PID]
				for _, c := range ours.Cores {
					if c.InRequest == 1 && slices.Contains(c.Vars, "SCRIPT_FILENAME="+slow) {
						return nil
					}
				}
				return fmt.Errorf("pid %d: %+v", theirs.PID, ours)
			})
			var core observer.Core
			for _, c := range ours.Cores {
				if slices.Contains(c.Vars, "SCRIPT_FILENAME="+slow) {
					core = c
				}
			}
			for _, want := range []string{"REQUEST_METHOD=" + theirs.Method, "REQUEST_URI=" + theirs.URI, "SCRIPT_FILENAME=" + theirs.Script} {
				if !slices.Contains(core.Vars, want) {
					t.Errorf("pid %d's core lacks %q: %q (FPM: %+v)", theirs.PID, want, core.Vars, theirs)
				}
			}
			start, _ := core.ReqInfo["request_start"].(float64)
			fpmStart := seen.Add(-time.Duration(theirs.Duration) * time.Microsecond)
			if math.Abs(start-float64(fpmStart.Unix())) > 1 {
				t.Errorf("request_start %v; FPM's request duration %d µs puts it at %d", start, theirs.Duration, fpmStart.Unix())
			}
			if core.ReqInfo["request_start"] == nil {
				t.Errorf("no request_start: %+v", core)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			tr.ok++
			st := fpmStatusAfter(t, p, tr)
			ourWorkers := fpmSettle(t, d, st, tr)
			for pid, n := range st.requests() {
				if o := ourWorkers[pid]; o.Requests != n {
					t.Errorf("pid %d: requests %d, FPM's %d", pid, o.Requests, n)
				}
			}
			// Every answer was a 200 (no Status header: FastCGI's default).
			want := observer.Statuses{S2xx: uint64(tr.ok + tr.status)}
			waitStats(t, d.addr, 5*time.Second, "every FastCGI answer counted as a 2xx", func(st *observer.Stats) error {
				var sum observer.Statuses
				for _, w := range st.Workers {
					if w.Statuses != nil {
						sum.S2xx, sum.S3xx, sum.S4xx, sum.S5xx = sum.S2xx+w.Statuses.S2xx, sum.S3xx+w.Statuses.S3xx, sum.S4xx+w.Statuses.S4xx, sum.S5xx+w.Statuses.S5xx
						sum.Other, sum.Unanswered = sum.Other+w.Statuses.Other, sum.Unanswered+w.Statuses.Unanswered
					}
				}
				if sum != want {
					return fmt.Errorf("statuses %+v, want %+v", sum, want)
				}
				return nil
			})
			t.Logf("pid %d: vars %q, request_start %v; FPM: %+v", theirs.PID, core.Vars, core.ReqInfo["request_start"], theirs)
		})
	}
}
