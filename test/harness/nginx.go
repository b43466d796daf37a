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
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// nginx: Debian's real nginx as a pre-fork pool of two workers serving
// static files, loaded by keep-alive clients, and its own view of each
// Request to compare workerstats' counts with: its access log, written by
// the worker that served the request, with the worker's $pid, the bytes it
// sent ($bytes_sent) and read ($request_length).

// NginxFile is a static file nginx serves.
type NginxFile struct {
	Name string
	Size int
}

// NginxFiles are the static files served, by name and size: empty, smaller
// than a packet, a page, several pages, and a few hundred KB.
var NginxFiles = []NginxFile{
	{"empty.txt", 0},
	{"one.txt", 1},
	{"small.txt", 100},
	{"page.txt", 4096},
	{"odd.txt", 12345},
	{"medium.txt", 65537},
	{"large.txt", 300001},
}

// NginxHugeFile is asked for first on the slow connections: through a send
// buffer of 32 KiB, nginx's sendfile and writev return short counts and
// -EAGAIN, and the response goes out over many calls and epoll events.
var NginxHugeFile = NginxFile{"huge.txt", 3000007}

// nginxLogFormat is nginx's own per-request accounting, one line per request.
const nginxLogFormat = `$pid $connection $connection_requests $status $bytes_sent $request_length`

const nginxConf = `user root;
worker_processes 2;
pid {{DIR}}/nginx.pid;
error_log {{DIR}}/error.log notice;
events {
	worker_connections 1024;
}
http {
	default_type text/plain;
	log_format workerstats '{{FORMAT}}';
	access_log {{DIR}}/access.log workerstats;
	client_body_temp_path {{DIR}}/client_body;
	proxy_temp_path {{DIR}}/proxy;
	fastcgi_temp_path {{DIR}}/fastcgi;
	uwsgi_temp_path {{DIR}}/uwsgi;
	scgi_temp_path {{DIR}}/scgi;
	sendfile {{SENDFILE}};
	tcp_nopush off;
	keepalive_requests 1000;
	keepalive_timeout 60s;
	server {
		listen 127.0.0.1:{{PORT}};
		listen 127.0.0.1:{{SLOWPORT}} sndbuf=32k;
		root {{DIR}}/www;
		location / {
		}
		location = /moved {
			return 302 /small.txt;
		}
		location = /unavailable {
			return 503;
		}
	}
}
`

// NginxServer is an nginx StartNginx started.
type NginxServer struct {
	PID     int    // the master's
	Addr    string // host:port it serves
	Slow    string // host:port it serves with a send buffer of 32 KiB
	Dir     string
	Workers []int
}

// StartNginx runs nginx in the foreground with a config of its own in a
// temporary directory, and waits until its two workers are forked.
func StartNginx(t testing.TB, sendfile bool) *NginxServer {
	t.Helper()
	bin := testutil.RequireCommand(t, "nginx", "nginx")
	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	if err := os.Mkdir(www, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range append(NginxFiles[:len(NginxFiles):len(NginxFiles)], NginxHugeFile) {
		if err := os.WriteFile(filepath.Join(www, f.Name), bytes.Repeat([]byte("z"), f.Size), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := &NginxServer{Dir: dir, Addr: FreeAddr(t), Slow: FreeAddr(t)}
	sf := "off"
	if sendfile {
		sf = "on"
	}
	conf := strings.NewReplacer(
		"{{DIR}}", dir,
		"{{FORMAT}}", nginxLogFormat,
		"{{SENDFILE}}", sf,
		"{{PORT}}", strings.TrimPrefix(s.Addr, "127.0.0.1:"),
		"{{SLOWPORT}}", strings.TrimPrefix(s.Slow, "127.0.0.1:"),
	).Replace(nginxConf)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command(bin, "-p", dir+"/", "-e", filepath.Join(dir, "error.log"), "-c", confPath, "-g", "daemon off;")
	cmd.Stdout, cmd.Stderr = &log, &log
	// SIGTERM: nginx's fast shutdown of master and workers.
	exited := StartGroup(t, cmd, syscall.SIGTERM, func() string {
		errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return fmt.Sprintf("nginx output:\n%s\nnginx error.log:\n%s", log.String(), errLog)
	})
	s.PID = cmd.Process.Pid
	// The master opens the listening socket before it forks the workers, so
	// once both exist a connection is served. None is made before
	// workerstats watches.
	WaitFor(t, testutil.Patience(20*time.Second), "nginx's workers to start", func() error {
		select {
		case <-exited:
			errLog, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx exited early:\n%s\n%s", log.String(), errLog)
		default:
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", s.PID, s.PID))
		if err != nil {
			return err
		}
		s.Workers = s.Workers[:0]
		for _, f := range strings.Fields(string(b)) {
			pid, _ := strconv.Atoi(f)
			s.Workers = append(s.Workers, pid)
		}
		if len(s.Workers) != 2 {
			return fmt.Errorf("master %d has children %v", s.PID, s.Workers)
		}
		if _, err := os.Stat(filepath.Join(dir, "nginx.pid")); err != nil {
			return err
		}
		return nil
	})
	sort.Ints(s.Workers)
	return s
}

// NginxWorkerLog is nginx's own count for one worker, from its access log.
type NginxWorkerLog struct {
	Requests uint64
	TX, RX   uint64          // sums of $bytes_sent and $request_length
	Conns    map[string]bool // $connection serials
	Statuses observer.Statuses
}

// ReadAccessLog sums the access log per worker pid. Only complete lines
// count: a worker may be writing the last one.
func (s *NginxServer) ReadAccessLog() (map[int]*NginxWorkerLog, uint64, error) {
	b, err := os.ReadFile(filepath.Join(s.Dir, "access.log"))
	if err != nil {
		return nil, 0, err
	}
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	per := map[int]*NginxWorkerLog{}
	var total uint64
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 6 {
			return nil, 0, fmt.Errorf("access log line %q: want 6 fields", line)
		}
		var n [6]uint64
		for i, s := range f {
			if n[i], err = strconv.ParseUint(s, 10, 64); err != nil {
				return nil, 0, fmt.Errorf("access log line %q: %w", line, err)
			}
		}
		pid := int(n[0])
		w := per[pid]
		if w == nil {
			w = &NginxWorkerLog{Conns: map[string]bool{}}
			per[pid] = w
		}
		w.Requests++
		w.Conns[f[1]] = true
		w.TX += n[4]
		w.RX += n[5]
		CountStatus(&w.Statuses, int(n[3]))
		total++
	}
	return per, total, nil
}

// NginxLoad is what the clients saw.
type NginxLoad struct {
	Requests       int64 // completed: the whole response read
	Conns, Idle    int64 // connections that sent requests; that sent nothing
	Sent, Received int64 // bytes of the completed requests
	NotFound       int64
}

// DriveNginx makes conns keep-alive connections from conc clients, each
// sending between 1 and 40 requests one after the other, and idle
// connections that close without sending. One connection in three ends with
// "Connection: close" (nginx closes it), the others are closed by the client
// after their last response. One request in 50 is for a missing file (404).
// One connection in ten is slow: to nginx's second port, where its send
// buffer is 32 KiB, with a 16 KiB receive buffer, and a first request for a
// file of 3 MB.
func DriveNginx(t testing.TB, s *NginxServer, conns, conc int) NginxLoad {
	t.Helper()
	conns = testutil.Scale(conns)
	var (
		res NginxLoad
		seq atomic.Int64
	)
	Parallel(t, conns, conc, func(k int) error {
		if k%10 == 0 {
			if err := IdleConn("tcp", s.Addr, k%20 == 0); err != nil {
				return err
			}
			atomic.AddInt64(&res.Idle, 1)
		}
		if err := nginxConn(s, int64(k), &seq, &res); err != nil {
			return fmt.Errorf("connection %d: %w", k, err)
		}
		return nil
	})
	return res
}

// nginxConn runs connection k's requests, counting each one completed.
func nginxConn(s *NginxServer, k int64, seq *atomic.Int64, res *NginxLoad) error {
	slow := k%10 == 5
	var dialer net.Dialer
	addr := s.Addr
	if slow {
		addr = s.Slow
		dialer.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
			})
			return errors.Join(err, serr)
		}
	}
	c, err := dialer.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	atomic.AddInt64(&res.Conns, 1)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReaderSize(c, 64<<10)
	n := int(1 + (k*7)%40)
	serverCloses := k%3 == 0
	for j := range n {
		i := seq.Add(1)
		path, want := "/missing", -1
		if slow && j == 0 {
			path, want = "/"+NginxHugeFile.Name, NginxHugeFile.Size
		} else if i%50 != 0 {
			f := NginxFiles[i%int64(len(NginxFiles))]
			path, want = "/"+f.Name, f.Size
		}
		last := j == n-1
		conn := "keep-alive"
		if last && serverCloses {
			conn = "close"
		}
		req := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: test\r\nUser-Agent: workerstats-test\r\nConnection: %s\r\n\r\n", path, conn)
		if _, err := io.WriteString(c, req); err != nil {
			return fmt.Errorf("request %d: %w", j, err)
		}
		h, err := ReadHTTPResponse(r)
		if err != nil {
			return fmt.Errorf("response %d (%s): %w", j, path, err)
		}
		status, bodyLen := h.Status, len(h.Body)
		switch {
		case want < 0 && status != 404:
			return fmt.Errorf("%s: status %d, want 404", path, status)
		case want >= 0 && (status != 200 || bodyLen != want):
			return fmt.Errorf("%s: status %d body %d, want 200 and %d", path, status, bodyLen, want)
		case h.Closing != (conn == "close"):
			return fmt.Errorf("%s: server closing %v after Connection: %s", path, h.Closing, conn)
		}
		atomic.AddInt64(&res.Requests, 1)
		atomic.AddInt64(&res.Sent, int64(len(req)))
		atomic.AddInt64(&res.Received, int64(h.Size))
		if status == 404 {
			atomic.AddInt64(&res.NotFound, 1)
		}
	}
	if serverCloses {
		// nginx closes after the response: the next read is EOF.
		if b, err := r.ReadByte(); err != io.EOF {
			return fmt.Errorf("after Connection: close: read %q, %v; want EOF", b, err)
		}
	}
	return nil
}

// nginxDiffs compares, per worker pid, workerstats' requests, tx and rx with
// nginx's access log, and the pool's accepted and closed connections with
// what the clients made.
func nginxDiffs(s *NginxServer, ours *observer.Stats, theirs map[int]*NginxWorkerLog, load NginxLoad) error {
	var diffs []string
	byPID := WorkersByPID(ours)
	accepted, closed := SumConns(ours)
	for _, pid := range s.Workers {
		o, ok := byPID[pid]
		n := theirs[pid]
		if n == nil {
			n = &NginxWorkerLog{}
		}
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("nginx worker pid %d missing from the dump", pid))
		case o.Requests != n.Requests || o.TX != n.TX || o.RX != n.RX:
			diffs = append(diffs, fmt.Sprintf("pid %d: requests %d/%d tx %d/%d (%+d) rx %d/%d (ours/nginx's)",
				pid, o.Requests, n.Requests, o.TX, n.TX, int64(o.TX)-int64(n.TX), o.RX, n.RX))
		}
	}
	if len(ours.Workers) != len(s.Workers) {
		diffs = append(diffs, fmt.Sprintf("%d workers in the dump, nginx has %d", len(ours.Workers), len(s.Workers)))
	}
	if want := uint64(load.Conns + load.Idle); accepted != want || closed != want {
		diffs = append(diffs, fmt.Sprintf("accepted %d closed %d, clients made %d connections", accepted, closed, want))
	}
	if len(diffs) > 0 {
		return errors.New(strings.Join(diffs, "; "))
	}
	return nil
}

// SettleNginx waits until nginx has logged every completed request and then
// until workerstats agrees with the log, worker by worker. It returns the
// last dump, log and difference (nil when they agree).
func SettleNginx(t testing.TB, s *NginxServer, d *Daemon, load NginxLoad) (*observer.Stats, map[int]*NginxWorkerLog, error) {
	t.Helper()
	var theirs map[int]*NginxWorkerLog
	WaitFor(t, 20*time.Second, "nginx to log every completed request", func() error {
		var (
			total uint64
			err   error
		)
		theirs, total, err = s.ReadAccessLog()
		if err != nil {
			return err
		}
		if total != uint64(load.Requests) {
			return fmt.Errorf("access log has %d requests, clients completed %d", total, load.Requests)
		}
		return nil
	})
	var ours *observer.Stats
	diff := Poll(5*time.Second, func() error {
		var err error
		if ours, err = ReadStats(d.Addr); err != nil {
			t.Fatal(err)
		}
		return nginxDiffs(s, ours, theirs, load)
	})
	return ours, theirs, diff
}
