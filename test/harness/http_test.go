package harness

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestReadHTTPResponse holds the reader to what its callers rely on: a whole
// response is read to its last byte and counted; a response cut anywhere is
// io.ErrUnexpectedEOF (none at all is io.EOF), which ParseResponse takes for
// a cut response; anything else is an error.
func TestReadHTTPResponse(t *testing.T) {
	const resp = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Worker: 42\r\nConnection: close\r\n\r\nyyyyy"
	for n := 0; n <= len(resp); n++ {
		h, err := ReadHTTPResponse(bufio.NewReader(strings.NewReader(resp[:n])))
		r := ParseResponse([]byte(resp[:n]), 5)
		switch {
		case n == 0 && (!errors.Is(err, io.EOF) || r.Cut || r.Complete):
			t.Errorf("no bytes: %v, %+v; want io.EOF, neither cut nor complete", err, r)
		case n > 0 && n < len(resp) && (!errors.Is(err, io.ErrUnexpectedEOF) || !r.Cut || r.Complete):
			t.Errorf("cut after %d bytes: %v, %+v; want io.ErrUnexpectedEOF, cut", n, err, r)
		case n == len(resp) && (err != nil || !r.Complete || r.PID != 42):
			t.Errorf("whole response: %v, %+v; want complete from pid 42", err, r)
		case n == len(resp) && (h.Proto != "HTTP/1.1" || h.Status != 200 || string(h.Body) != "yyyyy" || h.Size != len(resp) || !h.Closing):
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
		_, err := ReadHTTPResponse(bufio.NewReader(strings.NewReader(bad)))
		if err == nil || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			t.Errorf("%q: %v; want an error other than a cut", bad, err)
		}
	}
	if r := ParseResponse([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Worker: 42\r\n\r\nyyyyyy"), 5); r.Complete || r.Cut {
		t.Errorf("a byte after the body: %+v; want neither complete nor cut", r)
	}
}
