package statsock

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// DefaultMaxConns caps the connections served at once; more are
	// closed as soon as they are accepted.
	DefaultMaxConns = 1024
	// DefaultTimeout bounds a whole connection: a client that never sends
	// its request, or never reads its answer, is dropped after it.
	DefaultTimeout = 5 * time.Second
	// MaxRequestBytes bounds an HTTP request head.
	MaxRequestBytes = 8 << 10
)

// Server serves dumps on a listener.
type Server struct {
	Source Source
	// Catalog, when set, serves several pools instead of Source: in HTTP
	// mode GET / answers their list and GET /pools/ID each one's dump
	// (see Catalog); in raw mode the list is written.
	Catalog Catalog
	// HTTP selects HTTP mode (uWSGI's --stats-http): GET / answers the
	// JSON, GET /metrics is passed to Metrics.
	HTTP    bool
	Metrics http.Handler
	// MaxConns and Timeout default to DefaultMaxConns and DefaultTimeout.
	MaxConns int
	Timeout  time.Duration
	Log      *slog.Logger

	refused atomic.Uint64
}

// Refused returns how many connections were closed unserved because
// MaxConns were being served.
func (s *Server) Refused() uint64 { return s.refused.Load() }

// Serve answers connections on ln until ctx is done, then closes ln and
// waits for the clients being served. Each client is served on its own, so
// none waits on another.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	maxConns := s.MaxConns
	if maxConns <= 0 {
		maxConns = DefaultMaxConns
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	slots := make(chan struct{}, maxConns)
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on stats socket: %w", err)
			}
			// Out of file descriptors or memory, a connection reset
			// before accept: wait and go on, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn("accept on stats socket failed; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case slots <- struct{}{}:
		default:
			s.refused.Add(1)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			defer c.Close()
			c.SetDeadline(time.Now().Add(timeout))
			if s.HTTP {
				s.serveHTTP(ctx, c, log)
			} else {
				s.serveRaw(ctx, c, log)
			}
		}()
	}
}

// serveRaw writes the dump (a Catalog's list) and closes, never reading:
// uWSGI's raw mode.
func (s *Server) serveRaw(ctx context.Context, c net.Conn, log *slog.Logger) {
	src, _ := s.source("/")
	b, err := src.Dump(ctx)
	if err != nil {
		log.Error("cannot build stats dump", "error", err)
		return
	}
	if _, err := c.Write(b); err != nil {
		log.Debug("stats client went away", "error", err)
	}
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// uwsgiHeaders are exactly the headers uWSGI's --stats-http sends.
var uwsgiHeaders = [][2]string{
	{"Connection", "close"},
	{"Access-Control-Allow-Origin", "*"},
	{"Content-Type", "application/json"},
}

// serveHTTP reads one request, bounded in size by MaxRequestBytes and in
// time by the connection deadline, and answers it.
func (s *Server) serveHTTP(ctx context.Context, c net.Conn, log *slog.Logger) {
	cr := &countingReader{r: io.LimitReader(c, MaxRequestBytes)}
	req, err := http.ReadRequest(bufio.NewReader(cr))
	if err != nil {
		var ne net.Error
		switch {
		case cr.n == 0:
			// Connected and said nothing, or timed out silent: close.
		case cr.n >= MaxRequestBytes:
			writeError(c, http.StatusRequestHeaderFieldsTooLarge, nil, false)
		case errors.As(err, &ne) && ne.Timeout():
			// The deadline has passed: give the answer a moment of its own.
			c.SetWriteDeadline(time.Now().Add(time.Second))
			writeError(c, http.StatusRequestTimeout, nil, false)
		default:
			writeError(c, http.StatusBadRequest, nil, false)
		}
		return
	}
	head := req.Method == http.MethodHead
	if req.Method != http.MethodGet && !head {
		writeError(c, http.StatusMethodNotAllowed, [][2]string{{"Allow", "GET, HEAD"}}, false)
		return
	}
	if req.URL.Path == "/metrics" {
		s.serveMetricsRequest(ctx, c, req, head, log)
		return
	}
	src, ok := s.source(req.URL.Path)
	if !ok {
		writeError(c, http.StatusNotFound, nil, head)
		return
	}
	b, err := src.Dump(ctx)
	if err != nil {
		log.Error("cannot build stats dump", "error", err)
		writeError(c, http.StatusInternalServerError, nil, head)
		return
	}
	writeResponse(c, http.StatusOK, uwsgiHeaders, b, head)
}

// serveMetricsRequest answers GET /metrics from Metrics, 404 without.
func (s *Server) serveMetricsRequest(ctx context.Context, c net.Conn, req *http.Request, head bool, log *slog.Logger) {
	if s.Metrics == nil {
		writeError(c, http.StatusNotFound, nil, head)
		return
	}
	rec := &recorder{header: http.Header{}}
	if !serveMetrics(s.Metrics, rec, req.WithContext(ctx), log) {
		writeError(c, http.StatusInternalServerError, nil, head)
		return
	}
	writeResponse(c, rec.status(), rec.headers(), rec.body.Bytes(), head)
}

// serveMetrics runs the metrics handler; a panic in it fails this request,
// not the daemon.
func serveMetrics(h http.Handler, w http.ResponseWriter, r *http.Request, log *slog.Logger) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("metrics handler panicked", "panic", p)
			ok = false
		}
	}()
	h.ServeHTTP(w, r)
	return true
}

func writeError(w io.Writer, code int, extra [][2]string, head bool) {
	body := []byte(http.StatusText(code) + "\n")
	h := append([][2]string{
		{"Connection", "close"},
		{"Content-Type", "text/plain; charset=utf-8"},
		{"Content-Length", strconv.Itoa(len(body))},
	}, extra...)
	writeResponse(w, code, h, body, head)
}

// writeResponse writes an HTTP/1.0 response, as uWSGI's stats server does.
func writeResponse(w io.Writer, code int, headers [][2]string, body []byte, head bool) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.0 %d %s\r\n", code, http.StatusText(code))
	for _, h := range headers {
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	b.WriteString("\r\n")
	if !head {
		b.Write(body)
	}
	w.Write(b.Bytes())
}

// recorder is the http.ResponseWriter handed to the metrics handler; its
// answer is sent as HTTP/1.0 once complete.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}

func (r *recorder) Write(p []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(p)
}

func (r *recorder) status() int {
	if r.code == 0 {
		return http.StatusOK
	}
	return r.code
}

func (r *recorder) headers() [][2]string {
	var h [][2]string
	for k, vs := range r.header {
		if k == "Connection" || k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			h = append(h, [2]string{k, v})
		}
	}
	sort.Slice(h, func(i, j int) bool { return h[i][0] < h[j][0] })
	return append(h, [2]string{"Connection", "close"}, [2]string{"Content-Length", strconv.Itoa(r.body.Len())})
}
