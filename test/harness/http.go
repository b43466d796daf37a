package harness

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/workerstats/workerstats/observer"
)

// HTTPReply is one HTTP/1.x response as a client read it.
type HTTPReply struct {
	Proto   string            // "HTTP/1.1", say
	Status  int               // 200, say
	Header  map[string]string // by lower-case name, the last value of each
	Length  int               // Content-Length once the headers are read, -1 before
	Body    []byte            // all of it, or what arrived of it
	Size    int               // bytes read: status line, headers and body
	Closing bool              // the server said Connection: close
}

// Int returns header name as an integer, 0 if it is missing or not one.
func (h *HTTPReply) Int(name string) int {
	n, _ := strconv.Atoi(h.Header[name])
	return n
}

// ReadHTTPResponse reads one HTTP/1.x response from r: the status line, the
// headers and a body of Content-Length bytes (a response without one is an
// error). When r ends before a byte of the response the error wraps io.EOF;
// when it ends in the middle, it wraps io.ErrUnexpectedEOF and h holds what
// was read.
func ReadHTTPResponse(r *bufio.Reader) (h *HTTPReply, err error) {
	h = &HTTPReply{Header: map[string]string{}, Length: -1}
	if err := h.readStatus(r); err != nil {
		return h, err
	}
	length, err := h.readHeaders(r)
	if err != nil {
		return h, err
	}
	h.Length = length
	h.Body = make([]byte, length)
	n, err := io.ReadFull(r, h.Body)
	h.Body, h.Size = h.Body[:n], h.Size+n
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
func (h *HTTPReply) readStatus(r *bufio.Reader) error {
	line, err := r.ReadString('\n')
	h.Size += len(line)
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
	if h.Status, err = strconv.Atoi(f[1]); err != nil {
		return fmt.Errorf("bad status line %q", line)
	}
	h.Proto = f[0]
	return nil
}

// readHeaders reads the headers up to the empty line and returns the
// Content-Length.
func (h *HTTPReply) readHeaders(r *bufio.Reader) (length int, err error) {
	for {
		line, err := r.ReadString('\n')
		h.Size += len(line)
		if err != nil {
			return 0, fmt.Errorf("headers: %w", midResponse(err))
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		k, v, _ := strings.Cut(line, ":")
		h.Header[strings.ToLower(k)] = strings.TrimSpace(v)
	}
	h.Closing = strings.EqualFold(h.Header["connection"], "close")
	v, ok := h.Header["content-length"]
	if !ok {
		return 0, errors.New("response without Content-Length")
	}
	if length, err = strconv.Atoi(v); err != nil || length < 0 {
		return 0, fmt.Errorf("bad Content-Length %q", v)
	}
	return length, nil
}

// GetOnce sends GET path on a connection of its own and reads the answer.
func GetOnce(addr, path string) (*HTTPReply, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: test\r\n\r\n", path); err != nil {
		return nil, err
	}
	r, err := ReadHTTPResponse(bufio.NewReader(c))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	return r, nil
}

// CountStatus counts an answer of status in s, by its class.
func CountStatus(s *observer.Statuses, status int) {
	switch status / 100 {
	case 2:
		s.S2xx++
	case 3:
		s.S3xx++
	case 4:
		s.S4xx++
	case 5:
		s.S5xx++
	default:
		s.Other++
	}
}
