package proto

import (
	"bytes"
	"strings"
)

// httpMethods are the request methods Detect takes for HTTP/1.x.
var httpMethods = []string{"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"}

// isHTTPRequest says b starts with an HTTP/1.x method and a space ("PRI *"
// of HTTP/2's preface is not one).
func isHTTPRequest(b []byte) bool {
	for _, m := range httpMethods {
		if len(b) > len(m) && string(b[:len(m)]) == m && b[len(m)] == ' ' {
			return true
		}
	}
	return false
}

// parseHTTPRequest reads a request line and headers.
func parseHTTPRequest(b []byte) Request {
	var r Request
	line, rest, ok := cutLine(b)
	if !ok {
		return r // not even the request line
	}
	method, target, proto := splitRequestLine(line)
	if method == "" {
		return r
	}
	path, query, _ := strings.Cut(target, "?")
	r.Vars = append(r.Vars,
		Var{"REQUEST_METHOD", method},
		Var{"PATH_INFO", unescapePath(path)},
		Var{"REQUEST_URI", target},
		Var{"QUERY_STRING", query},
		Var{"SERVER_PROTOCOL", proto})
	for {
		line, rest, ok = cutLine(rest)
		if !ok {
			return r
		}
		if len(line) == 0 {
			r.Complete = true
			return r
		}
		name, value, found := bytes.Cut(line, []byte(":"))
		if !found || len(name) == 0 {
			continue
		}
		r.Vars = append(r.Vars, Var{headerVar(name), string(bytes.TrimSpace(value))})
	}
}

// cutLine cuts b at its first line end (CRLF, or a bare LF); ok is false
// when b holds no whole line.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, b, false
	}
	line = b[:i]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, b[i+1:], true
}

// splitRequestLine splits "METHOD TARGET PROTOCOL"; method is "" when the
// line is not one.
func splitRequestLine(line []byte) (method, target, proto string) {
	f := bytes.Fields(line)
	if len(f) < 2 || len(f) > 3 {
		return "", "", ""
	}
	method, target = string(f[0]), string(f[1])
	if len(f) == 3 {
		proto = string(f[2])
	} else {
		proto = "HTTP/0.9"
	}
	return method, target, proto
}

// headerVar is a header's CGI name: HTTP_ and the name upper-cased with
// '-' as '_'; Content-Type and Content-Length lose the prefix, as CGI has
// them.
func headerVar(name []byte) string {
	var sb strings.Builder
	sb.Grow(len(name) + 5)
	up := strings.ToUpper(string(name))
	if up != "CONTENT-TYPE" && up != "CONTENT-LENGTH" {
		sb.WriteString("HTTP_")
	}
	for _, c := range []byte(up) {
		if c == '-' {
			c = '_'
		}
		sb.WriteByte(c)
	}
	return sb.String()
}

// unescapePath decodes %XX escapes as uWSGI does for PATH_INFO; a bad
// escape is kept as it is.
func unescapePath(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]) {
			out = append(out, unhex(p[i+1])<<4|unhex(p[i+2]))
			i += 2
			continue
		}
		out = append(out, p[i])
	}
	return string(out)
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// httpStatus reads "HTTP/1.x NNN ..." at the start of b.
func httpStatus(b []byte) (int, bool) {
	if len(b) < 12 || string(b[:5]) != "HTTP/" {
		return 0, false
	}
	sp := bytes.IndexByte(b[:min(len(b), 16)], ' ')
	if sp < 0 || len(b) < sp+4 {
		return 0, false
	}
	return threeDigits(b[sp+1 : sp+4])
}

// threeDigits reads a status code, 100 to 999.
func threeDigits(d []byte) (int, bool) {
	if len(d) != 3 || d[0] < '1' || d[0] > '9' || d[1] < '0' || d[1] > '9' || d[2] < '0' || d[2] > '9' {
		return 0, false
	}
	return int(d[0]-'0')*100 + int(d[1]-'0')*10 + int(d[2]-'0'), true
}
