package proto

import (
	"bytes"
	"encoding/binary"
)

// FastCGI (what PHP-FPM speaks): records of an 8-byte header (version 1,
// type, request id, content length, padding length, reserved), content and
// padding. A request is BEGIN_REQUEST, then its name-value pairs in PARAMS
// records ended by an empty one, then STDIN; the response is STDOUT
// records, CGI headers first, and END_REQUEST.

const (
	fcgiBeginRequest = 1
	fcgiEndRequest   = 3
	fcgiParams       = 4
	fcgiStdout       = 6
	fcgiHeader       = 8
)

// fcgiRecord is one record's type and content; cut says the capture ended
// inside its content, so it has less than its header declares.
type fcgiRecord struct {
	typ     byte
	content []byte
	cut     bool
}

// nextRecord cuts the first record off b; ok is false when b does not hold
// its header (or its version is not 1). A record the capture cut short
// has the content there is, and nothing follows it.
func nextRecord(b []byte) (rec fcgiRecord, rest []byte, ok bool) {
	if len(b) < fcgiHeader || b[0] != 1 {
		return rec, b, false
	}
	n := int(binary.BigEndian.Uint16(b[4:6]))
	end := fcgiHeader + n + int(b[6])
	rec = fcgiRecord{typ: b[1], content: b[fcgiHeader:min(fcgiHeader+n, len(b))], cut: len(b) < fcgiHeader+n}
	return rec, b[min(end, len(b)):], true
}

// isFastCGIBegin says b starts with a BEGIN_REQUEST record for the
// responder, authorizer or filter role.
func isFastCGIBegin(b []byte) bool {
	if len(b) < fcgiHeader+2 || b[0] != 1 || b[1] != fcgiBeginRequest || binary.BigEndian.Uint16(b[4:6]) != 8 {
		return false
	}
	role := binary.BigEndian.Uint16(b[8:10])
	return role >= 1 && role <= 3
}

// parseFastCGIParams reads the PARAMS of a request, as far as b holds
// them; pairs may straddle records, so the records' contents are joined
// first (never more than b's length).
func parseFastCGIParams(b []byte) Request {
	var r Request
	var params []byte
	for {
		rec, rest, ok := nextRecord(b)
		if !ok {
			break
		}
		b = rest
		if rec.typ != fcgiParams {
			continue
		}
		if len(rec.content) == 0 && !rec.cut {
			r.Complete = true
			break
		}
		params = append(params, rec.content...)
	}
	for len(params) > 0 {
		name, value, rest, ok := nameValue(params)
		if !ok {
			break
		}
		r.Vars = append(r.Vars, Var{string(name), string(value)})
		params = rest
	}
	return r
}

// nameValue cuts one FastCGI name-value pair: two lengths of 1 byte, or 4
// with the top bit set, then the name and the value.
func nameValue(b []byte) (name, value, rest []byte, ok bool) {
	nlen, b, ok1 := pairLength(b)
	vlen, b, ok2 := pairLength(b)
	if !ok1 || !ok2 || uint64(len(b)) < uint64(nlen)+uint64(vlen) {
		return nil, nil, nil, false
	}
	return b[:nlen], b[nlen : nlen+vlen], b[nlen+vlen:], true
}

func pairLength(b []byte) (int, []byte, bool) {
	if len(b) < 1 {
		return 0, b, false
	}
	if b[0]>>7 == 0 {
		return int(b[0]), b[1:], true
	}
	if len(b) < 4 {
		return 0, b, false
	}
	return int(binary.BigEndian.Uint32(b) & 0x7fffffff), b[4:], true
}

// fastCGIStatus reads the status of a FastCGI response from its STDOUT
// headers: the Status header's code, or 200 when the headers end without
// one. A capture may end inside the headers: PHP writes Status first when
// it writes one, so headers cut short after a whole first line that is not
// Status are a 200 too; without a whole line the status is unknown.
func fastCGIStatus(b []byte) (int, bool) {
	var out []byte
	for {
		rec, rest, ok := nextRecord(b)
		if !ok || rec.typ == fcgiEndRequest {
			break
		}
		b = rest
		if rec.typ == fcgiStdout {
			out = append(out, rec.content...)
		}
	}
	head := out
	end := bytes.Index(out, []byte("\r\n\r\n"))
	if end < 0 {
		end = bytes.Index(out, []byte("\n\n"))
	}
	if end >= 0 {
		head = out[:end]
	}
	lines := bytes.Split(head, []byte("\n"))
	if end < 0 {
		lines = lines[:len(lines)-1] // the last is cut short
	}
	for _, line := range lines {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(name), []byte("Status")) {
			v := bytes.TrimSpace(value)
			return threeDigits(v[:min(3, len(v))])
		}
	}
	if end >= 0 || len(lines) > 0 {
		return 200, true
	}
	return 0, false
}
