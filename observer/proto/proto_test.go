package proto

import (
	"encoding/binary"
	"strings"
	"testing"
)

// uwsgiPacket builds what nginx's uwsgi_pass sends: the header and vars.
func uwsgiPacket(vars ...string) []byte {
	var body []byte
	for _, s := range vars {
		body = binary.LittleEndian.AppendUint16(body, uint16(len(s)))
		body = append(body, s...)
	}
	head := []byte{0, 0, 0, 0}
	binary.LittleEndian.PutUint16(head[1:3], uint16(len(body)))
	return append(head, body...)
}

// fcgiRec builds one FastCGI record of request 1.
func fcgiRec(typ byte, content []byte) []byte {
	h := []byte{1, typ, 0, 1, 0, 0, byte(len(content) % 3), 0}
	binary.BigEndian.PutUint16(h[4:6], uint16(len(content)))
	rec := append(h, content...)
	return append(rec, make([]byte, int(h[6]))...) // padding
}

// fcgiPairs encodes name-value pairs, the long form for long values.
func fcgiPairs(kv ...string) []byte {
	var b []byte
	length := func(n int) {
		if n < 128 {
			b = append(b, byte(n))
			return
		}
		b = binary.BigEndian.AppendUint32(b, uint32(n)|1<<31)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		length(len(kv[i]))
		length(len(kv[i+1]))
		b = append(b, kv[i]...)
		b = append(b, kv[i+1]...)
	}
	return b
}

// fcgiRequest is what nginx's fastcgi_pass sends for a GET: BEGIN_REQUEST
// (responder, keep the connection), PARAMS split over two records, the
// empty PARAMS, the empty STDIN.
func fcgiRequest(kv ...string) []byte {
	pairs := fcgiPairs(kv...)
	half := len(pairs) / 2
	b := fcgiRec(fcgiBeginRequest, []byte{0, 1, 1, 0, 0, 0, 0, 0})
	b = append(b, fcgiRec(fcgiParams, pairs[:half])...)
	b = append(b, fcgiRec(fcgiParams, pairs[half:])...)
	b = append(b, fcgiRec(fcgiParams, nil)...)
	return append(b, fcgiRec(5, nil)...)
}

func TestDetect(t *testing.T) {
	for _, c := range []struct {
		name string
		in   []byte
		want Kind
	}{
		{"http get", []byte("GET / HTTP/1.1\r\n"), HTTP},
		{"http post", []byte("POST /x HTTP/1.0\r\n"), HTTP},
		{"uwsgi", uwsgiPacket("REQUEST_METHOD", "GET"), UWSGI},
		{"fastcgi", fcgiRequest("SCRIPT_FILENAME", "/x.php"), FastCGI},
		{"tls client hello", []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}, Unknown},
		{"http/2 preface", []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Unknown},
		{"lowercase method", []byte("get / HTTP/1.1\r\n"), Unknown},
		{"method alone", []byte("GET"), Unknown},
		{"empty", nil, Unknown},
		{"forkpool line", []byte("512 0 0\n"), Unknown},
		{"uwsgi lowercase key", uwsgiPacket("request_method", "GET"), Unknown},
	} {
		if got := Detect(c.in); got != c.want {
			t.Errorf("%s: Detect = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestParseHTTPRequest(t *testing.T) {
	head := "GET /caf%C3%A9/x?a=1&b=%20 HTTP/1.1\r\nHost: example.org\r\nUser-Agent: curl/8\r\nContent-Type: text/plain\r\nCookie: session=s3cret\r\nX-Forwarded-For:  10.0.0.1 \r\n\r\nbody"
	r := ParseRequest(HTTP, []byte(head), false)
	if !r.Complete || r.Truncated {
		t.Errorf("complete %v truncated %v, want a complete head", r.Complete, r.Truncated)
	}
	for k, want := range map[string]string{
		"REQUEST_METHOD": "GET", "REQUEST_URI": "/caf%C3%A9/x?a=1&b=%20", "PATH_INFO": "/café/x",
		"QUERY_STRING": "a=1&b=%20", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "example.org",
		"HTTP_USER_AGENT": "curl/8", "CONTENT_TYPE": "text/plain", "HTTP_X_FORWARDED_FOR": "10.0.0.1",
		"HTTP_COOKIE": "session=s3cret",
	} {
		if got := r.Var(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	// Cut anywhere before the blank line, the head is not complete; cut
	// by the capture bound, it is truncated, and what it holds is read.
	for n := range len(head) - len("\r\n\r\nbody") + 2 {
		r := ParseRequest(HTTP, []byte(head[:n]), true)
		if r.Complete || !r.Truncated {
			t.Fatalf("cut at %d: complete %v truncated %v", n, r.Complete, r.Truncated)
		}
		if n > len("GET /caf%C3%A9/x?a=1&b=%20 HTTP/1.1\r\n") && r.Var("REQUEST_METHOD") != "GET" {
			t.Fatalf("cut at %d: request line lost", n)
		}
	}
	if r := ParseRequest(HTTP, []byte("GET /\n\n"), false); !r.Complete || r.Var("SERVER_PROTOCOL") != "HTTP/0.9" {
		t.Errorf("bare LFs and no protocol: %+v", r)
	}
}

func TestParseUWSGI(t *testing.T) {
	pkt := uwsgiPacket("REQUEST_METHOD", "POST", "REQUEST_URI", "/slow?x=1", "PATH_INFO", "/slow",
		"QUERY_STRING", "x=1", "SERVER_PROTOCOL", "HTTP/1.1", "HTTP_HOST", "localhost", "HTTP_AUTHORIZATION", "Basic eDp5")
	r := ParseRequest(UWSGI, pkt, false)
	if !r.Complete || len(r.Vars) != 7 || r.Var("REQUEST_URI") != "/slow?x=1" || r.Var("HTTP_HOST") != "localhost" {
		t.Errorf("got %+v", r)
	}
	r = ParseRequest(UWSGI, pkt[:40], true)
	if r.Complete || !r.Truncated || r.Var("REQUEST_METHOD") != "POST" {
		t.Errorf("cut packet: %+v", r)
	}
}

func TestParseFastCGI(t *testing.T) {
	long := strings.Repeat("q", 300)
	req := fcgiRequest("SCRIPT_FILENAME", "/srv/slow.php", "REQUEST_METHOD", "GET",
		"REQUEST_URI", "/slow.php?"+long, "QUERY_STRING", long, "HTTP_COOKIE", "a=b")
	r := ParseRequest(FastCGI, req, false)
	if !r.Complete || r.Var("SCRIPT_FILENAME") != "/srv/slow.php" || r.Var("QUERY_STRING") != long || r.Var("HTTP_COOKIE") != "a=b" {
		t.Errorf("got complete %v, vars %d", r.Complete, len(r.Vars))
	}
	// Before the empty PARAMS record the request is not complete: FPM
	// waits for it too.
	cut := len(req) - 2*fcgiHeader
	if r := ParseRequest(FastCGI, req[:cut], true); r.Complete {
		t.Errorf("complete without the empty PARAMS record")
	}
	// Cut by the capture inside a PARAMS record: the whole pairs before
	// the cut, and not complete.
	short := fcgiRequest("SCRIPT_FILENAME", "/srv/slow.php", "REQUEST_METHOD", "GET", "REQUEST_URI", "/slow.php?"+long)
	if r := ParseRequest(FastCGI, short[:100], true); r.Complete || !r.Truncated || r.Var("SCRIPT_FILENAME") != "/srv/slow.php" || r.Var("REQUEST_URI") != "" {
		t.Errorf("cut inside PARAMS: complete %v truncated %v vars %v", r.Complete, r.Truncated, r.Vars)
	}
}

func TestStatus(t *testing.T) {
	stdout := func(s string) []byte { return fcgiRec(fcgiStdout, []byte(s)) }
	for _, c := range []struct {
		name string
		kind Kind
		in   []byte
		want int
		ok   bool
	}{
		{"http 200", HTTP, []byte("HTTP/1.1 200 OK\r\n"), 200, true},
		{"http 503", HTTP, []byte("HTTP/1.0 503 Service Unavailable\r\n"), 503, true},
		{"uwsgi answers in http", UWSGI, []byte("HTTP/1.1 500 Internal Server Error\r\n"), 500, true},
		{"http cut", HTTP, []byte("HTTP/1.1 2"), 0, false},
		{"http garbage", HTTP, []byte("HTTP/1.1 abc OK\r\n"), 0, false},
		{"fastcgi no status", FastCGI, stdout("Content-type: text/html\r\n\r\n<html>"), 200, true},
		{"fastcgi status", FastCGI, stdout("Status: 404 Not Found\r\nContent-type: text/html\r\n\r\n"), 404, true},
		{"fastcgi status split", FastCGI, append(stdout("X-Powered-By: PHP\r\nSta"), stdout("tus: 500 Oops\r\n\r\n")...), 500, true},
		{"fastcgi stderr first", FastCGI, append(fcgiRec(7, []byte("PHP Warning")), stdout("Status: 302 Found\r\n\r\n")...), 302, true},
		// PHP writes Status first or not at all: headers cut after a
		// whole other first line are a 200.
		{"fastcgi headers cut after a line", FastCGI, stdout("Expires: Thu, 01 Jan 1970 00:00:00 GMT\r\nCache-Con"), 200, true},
		{"fastcgi status first, headers cut", FastCGI, stdout("Status: 503 Busy\r\nContent-type: te"), 503, true},
		{"fastcgi first line cut", FastCGI, stdout("Content-ty"), 0, false},
		// FPM's status page: one STDOUT record of 696 bytes, captured 120.
		{"fastcgi record cut by the capture", FastCGI, stdout("Expires: Thu, 01 Jan 1970 00:00:00 GMT\r\nCache-Control: no-cache, no-store, must-revalidate, max-age=0\r\nContent-Type: application/json\r\n\r\n{}")[:120], 200, true},
		{"fastcgi end only", FastCGI, fcgiRec(fcgiEndRequest, make([]byte, 8)), 0, false},
		{"unknown", Unknown, []byte("HTTP/1.1 200 OK\r\n"), 0, false},
	} {
		got, ok := Status(c.kind, c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: Status = %d, %v; want %d, %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

func TestSecret(t *testing.T) {
	for _, k := range []string{"HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION"} {
		if !Secret(k) {
			t.Errorf("%s not secret", k)
		}
	}
	if Secret("HTTP_HOST") || Secret("QUERY_STRING") {
		t.Error("ordinary vars taken for secrets")
	}
}

// FuzzParse feeds any bytes to every parser: none may panic, and what a
// request yields cannot outgrow its bytes.
func FuzzParse(f *testing.F) {
	f.Add([]byte("GET /a?b HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add(uwsgiPacket("REQUEST_METHOD", "GET", "PATH_INFO", "/"))
	f.Add(fcgiRequest("SCRIPT_FILENAME", "/x.php", "REQUEST_METHOD", "GET"))
	f.Add(fcgiRec(fcgiStdout, []byte("Status: 404 Not Found\r\n\r\n")))
	f.Add([]byte("HTTP/1.1 200 OK\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, k := range []Kind{Detect(b), HTTP, UWSGI, FastCGI, Unknown} {
			r := ParseRequest(k, b, true)
			n := 0
			for _, v := range r.Vars {
				n += len(v.Key) + len(v.Value)
			}
			// HTTP's target is in three vars, and each var's name
			// is at most a fixed one or "HTTP_" and a header's.
			if n > 4*len(b)+32*len(r.Vars) || len(r.Vars) > len(b)/2+5 {
				t.Fatalf("%v: %d vars, %d bytes, from %d bytes", k, len(r.Vars), n, len(b))
			}
			if s, ok := Status(k, b); ok && (s < 100 || s > 999) {
				t.Fatalf("%v: status %d", k, s)
			}
		}
	})
}
