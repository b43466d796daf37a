package harness

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// PHP-FPM: Debian's real PHP-FPM, a static pool on a Unix socket the tests
// speak FastCGI to, and its own status page to compare workerstats' counts
// with.
//
// How FPM counts: a worker increments its "requests" when it has accepted a
// connection, before it reads a byte (fpm_request_reading_headers). So FPM
// counts a connection that closes without sending anything as a request,
// where workerstats does not, and FPM's count for a worker equals the
// connections it accepted. It also counts the status request itself, in the
// very page it renders: a status read shows every connection accepted before
// it, plus itself.

// FPMWorkers is the static pool's size.
const FPMWorkers = 4

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

// FPMPool is a PHP-FPM pool StartPHPFPM started.
type FPMPool struct {
	PID    int
	Dir    string
	Sock   string
	Script string
	Log    string // FPM's error_log
}

// StartPHPFPM runs php-fpmX.Y in the foreground with a static pool of
// FPMWorkers on a Unix socket, and waits until its workers are forked and
// the socket exists. It never connects to the socket: the first connection
// is the test's, made once workerstats watches.
func StartPHPFPM(t testing.TB) *FPMPool {
	t.Helper()
	return StartPHPFPMIn(t, nil)
}

// StartPHPFPMIn is StartPHPFPM in container c (on the host when nil): PID
// is its master's host pid; its socket, in its directory, is seen at the
// same path inside.
func StartPHPFPMIn(t testing.TB, c *Container) *FPMPool {
	t.Helper()
	bins, _ := filepath.Glob("/usr/sbin/php-fpm*")
	sort.Strings(bins)
	if len(bins) == 0 {
		testutil.SkipOrFail(t, "php-fpm is not installed (apt-get install php-fpm)")
	}
	bin := bins[len(bins)-1]
	dir := t.TempDir()
	p := &FPMPool{
		Dir:    dir,
		Sock:   filepath.Join(dir, "fpm.sock"),
		Script: filepath.Join(dir, "app.php"),
		Log:    filepath.Join(dir, "fpm.log"),
	}
	if err := os.WriteFile(p.Script, []byte(fpmScript), 0o644); err != nil {
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
`, filepath.Join(dir, "fpm.pid"), p.Log, p.Sock, FPMWorkers)
	confPath := filepath.Join(dir, "fpm.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd := exec.Command(bin, "-F", "-y", confPath, "-R")
	cmd.Stdout, cmd.Stderr = &out, &out
	// SIGTERM: FPM's immediate shutdown of master and workers.
	var exited <-chan struct{}
	p.PID, exited = StartGroupIn(t, c, cmd, syscall.SIGTERM, func() string {
		flog, _ := os.ReadFile(p.Log)
		return fmt.Sprintf("%s output:\n%s\nFPM log:\n%s", filepath.Base(bin), out.String(), flog)
	}, dir)
	WaitFor(t, testutil.Patience(30*time.Second), "PHP-FPM's workers to start", func() error {
		select {
		case <-exited:
			flog, _ := os.ReadFile(p.Log)
			t.Fatalf("%s exited early:\n%s\n%s", bin, out.String(), flog)
		default:
		}
		if _, err := os.Stat(p.Sock); err != nil {
			return fmt.Errorf("%w (master %s)", err, ProcState(p.PID))
		}
		kids, err := observer.Procfs{Root: "/proc"}.Children(p.PID)
		if err != nil {
			return err
		}
		if len(kids) != FPMWorkers {
			return fmt.Errorf("%d workers (master %s)", len(kids), ProcState(p.PID))
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

// FPMGet builds a GET of scriptName?query, served from file.
func FPMGet(p *FPMPool, file, scriptName, query string) []byte {
	uri := scriptName
	if query != "" {
		uri += "?" + query
	}
	return fcgiRequest([][2]string{
		{"GATEWAY_INTERFACE", "CGI/1.1"},
		{"SERVER_SOFTWARE", "workerstats-test"},
		{"SCRIPT_FILENAME", file},
		{"SCRIPT_NAME", scriptName},
		{"DOCUMENT_ROOT", p.Dir},
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

// FPMExchange is one FastCGI request on its own connection.
type FPMExchange struct {
	Sent, Received int64 // bytes on the socket
	Stdout         []byte
	Stderr         []byte
}

// FPMDo sends req on a new connection and reads records until
// FCGI_END_REQUEST, then to EOF: FPM shuts its side down after the end
// record, and nothing may follow it.
func FPMDo(p *FPMPool, req []byte) (*FPMExchange, error) {
	c, err := net.Dial("unix", p.Sock)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(req); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	ex := &FPMExchange{Sent: int64(len(req))}
	cr := &CountingConn{Conn: c}
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
			ex.Stdout = append(ex.Stdout, content...)
		case fcgiStderr:
			ex.Stderr = append(ex.Stderr, content...)
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
			ex.Received = cr.N
			return ex, nil
		default:
			return nil, fmt.Errorf("unexpected record type %d", h[1])
		}
	}
}

// FPMBody splits a CGI response into its headers and body.
func FPMBody(stdout []byte) (head string, body []byte, err error) {
	i := bytes.Index(stdout, []byte("\r\n\r\n"))
	if i < 0 {
		return "", nil, fmt.Errorf("no end of headers in %q", Truncate(stdout))
	}
	head = string(stdout[:i])
	if strings.Contains(head, "Status:") && !strings.Contains(head, "Status: 200") {
		return head, nil, fmt.Errorf("status not 200: %q", head)
	}
	return head, stdout[i+4:], nil
}

// FPMTraffic is what the test's clients moved on FPM's socket.
type FPMTraffic struct {
	OK, Idle, Status int64 // completed app requests, connections closed without data, status reads
	Sent, Received   int64 // bytes of completed requests, status reads included
	ServedBy         map[int]uint64
}

// Add counts an exchange's bytes.
func (a *FPMTraffic) Add(ex *FPMExchange) {
	atomic.AddInt64(&a.Sent, ex.Sent)
	atomic.AddInt64(&a.Received, ex.Received)
}

// FPMDrive sends n requests to the app and idle connections, from conc
// concurrent clients, one request per connection. With n == 0 it makes only
// the idle connections.
func FPMDrive(t testing.TB, p *FPMPool, tr *FPMTraffic, n, conc, idle int) {
	t.Helper()
	n, idle = testutil.Scale(n), testutil.Scale(idle)
	total, idleEvery := n, 0
	if n == 0 {
		total, idleEvery = idle, 1
	} else if idle > 0 {
		idleEvery = n / idle
	}
	Parallel(t, total, conc, func(i int) error {
		if idleEvery > 0 && i%idleEvery == 0 {
			if err := IdleConn("unix", p.Sock, i%(2*idleEvery) == 0 || (n == 0 && i%10 == 0)); err != nil {
				return err
			}
			atomic.AddInt64(&tr.Idle, 1)
		}
		if n == 0 {
			return nil
		}
		size := ResponseSize(i)
		ex, err := FPMDo(p, FPMGet(p, p.Script, "/app.php", fmt.Sprintf("n=%d", size)))
		if err == nil {
			var body []byte
			if _, body, err = FPMBody(ex.Stdout); err == nil &&
				(len(body) != size || bytes.Count(body, []byte("y")) != size || len(ex.Stderr) != 0) {
				err = fmt.Errorf("body of %d bytes for n=%d, stderr %q", len(body), size, ex.Stderr)
			}
		}
		if err != nil {
			return fmt.Errorf("request %d: %w", i, err)
		}
		atomic.AddInt64(&tr.OK, 1)
		tr.Add(ex)
		return nil
	})
}

// FPMStatus is FPM's /status?full&json.
type FPMStatus struct {
	Pool         string `json:"pool"`
	AcceptedConn uint64 `json:"accepted conn"`
	Processes    []struct {
		PID        int    `json:"pid"`
		State      string `json:"state"`
		Requests   uint64 `json:"requests"`
		RequestURI string `json:"request uri"`
	} `json:"processes"`
}

// Total is FPM's requests, all its workers'.
func (s *FPMStatus) Total() (n uint64) {
	for _, p := range s.Processes {
		n += p.Requests
	}
	return n
}

// Requests maps each worker pid to FPM's count.
func (s *FPMStatus) Requests() map[int]uint64 {
	m := map[int]uint64{}
	for _, p := range s.Processes {
		m[p.PID] = p.Requests
	}
	return m
}

// Serving returns the pid of the one worker rendering this page: the only
// one running, on the status URI.
func (s *FPMStatus) Serving() (int, error) {
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

// FPMReadStatus reads FPM's status page through FastCGI. It is a request
// for FPM and for workerstats alike; which worker served it is on the page.
func FPMReadStatus(p *FPMPool, tr *FPMTraffic) (*FPMStatus, error) {
	ex, err := FPMDo(p, FPMGet(p, filepath.Join(p.Dir, "status"), "/status", "full&json"))
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	tr.Status++
	tr.Add(ex)
	_, body, err := FPMBody(ex.Stdout)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	var st FPMStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("status %q: %w", Truncate(body), err)
	}
	srv, err := st.Serving()
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	if tr.ServedBy == nil {
		tr.ServedBy = map[int]uint64{}
	}
	tr.ServedBy[srv]++
	return &st, nil
}

// FPMStatusAfter reads the status until FPM has counted every connection the
// clients made (a worker counts a connection just after accepting it, so the
// last few may be a moment behind). Each read is one more request, counted
// in its own page.
func FPMStatusAfter(t testing.TB, p *FPMPool, tr *FPMTraffic) *FPMStatus {
	t.Helper()
	var st *FPMStatus
	WaitFor(t, 10*time.Second, "FPM to count every connection", func() error {
		var err error
		if st, err = FPMReadStatus(p, tr); err != nil {
			return err
		}
		if want := uint64(tr.OK + tr.Idle + tr.Status); st.Total() != want || st.AcceptedConn != want {
			return fmt.Errorf("FPM counts %d requests (accepted conn %d), clients made %d connections", st.Total(), st.AcceptedConn, want)
		}
		return nil
	})
	return st
}
