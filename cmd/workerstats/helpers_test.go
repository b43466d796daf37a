package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/observer"
)

// The helpers in this file are the one copy of what the tests against real
// servers share: reading an HTTP response, idle connections, polling,
// counting bytes, and looking at a dump.

// httpReply is one HTTP/1.x response as a client read it.
type httpReply struct {
	proto   string            // "HTTP/1.1", say
	status  int               // 200, say
	header  map[string]string // by lower-case name, the last value of each
	length  int               // Content-Length once the headers are read, -1 before
	body    []byte            // all of it, or what arrived of it
	size    int               // bytes read: status line, headers and body
	closing bool              // the server said Connection: close
}

// int returns header name as an integer, 0 if it is missing or not one.
func (h *httpReply) int(name string) int {
	n, _ := strconv.Atoi(h.header[name])
	return n
}

// readHTTPResponse reads one HTTP/1.x response from r: the status line, the
// headers and a body of Content-Length bytes (a response without one is an
// error). When r ends before a byte of the response the error wraps io.EOF;
// when it ends in the middle, it wraps io.ErrUnexpectedEOF and h holds what
// was read.
func readHTTPResponse(r *bufio.Reader) (h *httpReply, err error) {
	h = &httpReply{header: map[string]string{}, length: -1}
	if err := h.readStatus(r); err != nil {
		return h, err
	}
	length, err := h.readHeaders(r)
	if err != nil {
		return h, err
	}
	h.length = length
	h.body = make([]byte, length)
	n, err := io.ReadFull(r, h.body)
	h.body, h.size = h.body[:n], h.size+n
	if err != nil {
		return h, fmt.Errorf("body: %d of %d bytes: %w", n, length, midResponse(err))
	}
	return h, nil
}

// midResponse is err met in the middle of a response: io.EOF there is
// io.ErrUnexpectedEOF.
func midResponse(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readStatus reads the status line. A line cut short is io.ErrUnexpectedEOF
// only if what arrived can begin one.
func (h *httpReply) readStatus(r *bufio.Reader) error {
	line, err := r.ReadString('\n')
	h.size += len(line)
	if err != nil {
		if line == "" {
			return fmt.Errorf("no response: %w", err)
		}
		if !strings.HasPrefix(line, "HTTP/1.") && !strings.HasPrefix("HTTP/1.", line) {
			return fmt.Errorf("bad status line %q", line)
		}
		return fmt.Errorf("status line %q: %w", line, midResponse(err))
	}
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[0], "HTTP/1.") {
		return fmt.Errorf("bad status line %q", line)
	}
	if h.status, err = strconv.Atoi(f[1]); err != nil {
		return fmt.Errorf("bad status line %q", line)
	}
	h.proto = f[0]
	return nil
}

// readHeaders reads the headers up to the empty line and returns the
// Content-Length.
func (h *httpReply) readHeaders(r *bufio.Reader) (length int, err error) {
	for {
		line, err := r.ReadString('\n')
		h.size += len(line)
		if err != nil {
			return 0, fmt.Errorf("headers: %w", midResponse(err))
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		h.header[strings.ToLower(k)] = strings.TrimSpace(v)
	}
	h.closing = strings.EqualFold(h.header["connection"], "close")
	v, ok := h.header["content-length"]
	if !ok {
		return 0, errors.New("response without Content-Length")
	}
	if length, err = strconv.Atoi(v); err != nil || length < 0 {
		return 0, fmt.Errorf("bad Content-Length %q", v)
	}
	return length, nil
}

// idleConn connects to addr and closes the connection without sending a
// byte; slow holds it open 5 ms first, like a slow health checker.
func idleConn(network, addr string, slow bool) error {
	c, err := net.Dial(network, addr)
	if err != nil {
		return fmt.Errorf("idle connect: %w", err)
	}
	if slow {
		time.Sleep(5 * time.Millisecond)
	}
	return c.Close()
}

// countingConn counts every byte read from the connection.
type countingConn struct {
	net.Conn
	n int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n += int64(n)
	return n, err
}

// poll calls f every 50 ms until it returns nil, and returns nil; once d has
// passed it returns f's last error instead.
func poll(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls f until it returns nil, failing t if d passes first.
func waitFor(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	if err := poll(d, f); err != nil {
		t.Fatalf("timed out after %v waiting for %s: %v", d, what, err)
	}
}

// waitStats polls the stats socket addr (workerstats' or uWSGI's) until ok
// accepts a dump, and returns it; it fails t if none is accepted within d.
func waitStats(t testing.TB, addr string, d time.Duration, what string, ok func(st *observer.Stats) error) *observer.Stats {
	t.Helper()
	var st *observer.Stats
	waitFor(t, d, what, func() error {
		var err error
		if st, err = readStats(addr); err != nil {
			return err
		}
		return ok(st)
	})
	return st
}

// waitRequests waits until the dump at addr counts want requests in all
// (what the clients completed), and returns it; it fails t after d.
func waitRequests(t testing.TB, addr string, d time.Duration, what string, want int64) *observer.Stats {
	t.Helper()
	return waitStats(t, addr, d, what, func(st *observer.Stats) error {
		if req, _, _ := sumRequests(st); req != uint64(want) {
			return fmt.Errorf("%d requests counted, clients completed %d", req, want)
		}
		return nil
	})
}

// workersByPID indexes a dump's workers by pid.
func workersByPID(st *observer.Stats) map[int]observer.Worker {
	m := make(map[int]observer.Worker, len(st.Workers))
	for _, w := range st.Workers {
		m[w.PID] = w
	}
	return m
}

// dropped returns an error naming every count in the dump's
// observer.dropped that is not zero, or nil if none is. Up to stale
// connections_stale are allowed: a connection a killed worker held is never
// closed with close(2), so its entry stays until the daemon sweeps it, and
// an accept that reuses its socket address first finds it there (and
// replaces it; nothing is lost).
func dropped(st *observer.Stats, stale uint64) error {
	var drops []string
	for name, n := range st.Observer.Dropped {
		if n != 0 && (name != "connections_stale" || n > stale) {
			drops = append(drops, fmt.Sprintf("dropped %s = %d", name, n))
		}
	}
	if len(drops) == 0 {
		return nil
	}
	sort.Strings(drops)
	return errors.New(strings.Join(drops, "; "))
}

// checkDropped fails t if the kernel side lost anything (see dropped).
func checkDropped(t testing.TB, st *observer.Stats, stale uint64) {
	t.Helper()
	if err := dropped(st, stale); err != nil {
		t.Error(err)
	}
}

// TestReadHTTPResponse holds the reader to what its callers rely on: a whole
// response is read to its last byte and counted; a response cut anywhere is
// io.ErrUnexpectedEOF (none at all is io.EOF), which parseResponse takes for
// a cut response; anything else is an error.
func TestReadHTTPResponse(t *testing.T) {
	const resp = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Worker: 42\r\nConnection: close\r\n\r\nyyyyy"
	for n := 0; n <= len(resp); n++ {
		h, err := readHTTPResponse(bufio.NewReader(strings.NewReader(resp[:n])))
		r := parseResponse([]byte(resp[:n]), 5)
		switch {
		case n == 0 && (!errors.Is(err, io.EOF) || r.cut || r.complete):
			t.Errorf("no bytes: %v, %+v; want io.EOF, neither cut nor complete", err, r)
		case n > 0 && n < len(resp) && (!errors.Is(err, io.ErrUnexpectedEOF) || !r.cut || r.complete):
			t.Errorf("cut after %d bytes: %v, %+v; want io.ErrUnexpectedEOF, cut", n, err, r)
		case n == len(resp) && (err != nil || !r.complete || r.pid != 42):
			t.Errorf("whole response: %v, %+v; want complete from pid 42", err, r)
		case n == len(resp) && (h.proto != "HTTP/1.1" || h.status != 200 || string(h.body) != "yyyyy" || h.size != len(resp) || !h.closing):
			t.Errorf("whole response read as %+v", h)
		}
	}
	for _, bad := range []string{
		"HTTP/1.1 200 OK\r\n\r\n",                      // no Content-Length
		"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", // not a number
		"SSH-2.0-OpenSSH\r\n",                          // not HTTP
		"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",     // no status code
		"FTP", // cut, but not the beginning of HTTP
	} {
		_, err := readHTTPResponse(bufio.NewReader(strings.NewReader(bad)))
		if err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			t.Errorf("%q: %v; want an error other than a cut", bad, err)
		}
	}
	if r := parseResponse([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Worker: 42\r\n\r\nyyyyyy"), 5); r.complete || r.cut {
		t.Errorf("a byte after the body: %+v; want neither complete nor cut", r)
	}
}
