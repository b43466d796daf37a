package observer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sync"
)

// MarshalStats encodes a dump. By default it is laid out like uWSGI's own:
// one key per line, tab-indented, no space after the colon, keys in uWSGI's
// order. minified gives the compact form. Unlike uWSGI, strings are always
// escaped, so the output is valid JSON whatever a path or name holds.
//
// The workers, nearly all of a big pool's dump, are written field by field
// (layout.go); the rest goes through encoding/json. Either way the bytes
// are encoding/json's compact form, laid out (TestMarshalStatsLikeEncodingJSON).
func MarshalStats(st *Stats, minified bool) ([]byte, error) {
	l := layout{b: make([]byte, 0, 4096+900*len(st.Workers)), minified: minified}
	l.stats(st)
	if l.err != nil {
		return nil, fmt.Errorf("encode stats: %w", l.err)
	}
	return l.b, nil
}

// compactBuffers keep encoding/json's scratch buffer between values.
var compactBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// appendJSON appends v's compact encoding/json form to out, HTML left
// unescaped as uWSGI leaves it.
func appendJSON(out []byte, v any) ([]byte, error) {
	buf := compactBuffers.Get().(*bytes.Buffer)
	defer compactBuffers.Put(buf)
	buf.Reset()
	enc := json.NewEncoder(buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return out, err
	}
	return append(out, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...), nil
}

// appendIndented appends compact JSON src laid out one value per line,
// indented with tabs, with "key":value and no space, as uWSGI's stats
// server does, as a value nested depth levels deep. Empty arrays and
// objects stay on one line. Runs of plain bytes (numbers, and strings,
// which hold no raw control bytes) are copied whole.
func appendIndented(out, src []byte, depth int) []byte {
	for i := 0; i < len(src); {
		if n := plainRun(src[i:]); n > 0 {
			out = append(out, src[i:i+n]...)
			i += n
			continue
		}
		c := src[i]
		switch c {
		case '"':
			n := stringLen(src[i:])
			out = append(out, src[i:i+n]...)
			i += n
			continue
		case '{', '[':
			if i+1 < len(src) && (src[i+1] == '}' || src[i+1] == ']') {
				out = append(out, c, src[i+1])
				i += 2
				continue
			}
			out = append(out, c)
			depth++
			out = appendNewline(out, depth)
		case '}', ']':
			depth--
			out = appendNewline(out, depth)
			out = append(out, c)
		case ',':
			out = append(out, c)
			out = appendNewline(out, depth)
		}
		i++
	}
	return out
}

// appendNewline appends a newline and depth tabs.
func appendNewline(out []byte, depth int) []byte {
	if depth < len(newlineTabs) {
		return append(out, newlineTabs[:depth+1]...)
	}
	out = append(out, '\n')
	for range depth {
		out = append(out, '\t')
	}
	return out
}

// newlineTabs is a newline and the tabs of the deepest levels a dump has.
const newlineTabs = "\n\t\t\t\t\t\t\t\t"

// structural marks the bytes that end a plain run in compact JSON.
var structural = [256]bool{'"': true, '{': true, '}': true, '[': true, ']': true, ',': true}

// plainRun is how many bytes at the start of b are not structural.
func plainRun(b []byte) int {
	n := 0
	for n < len(b) && !structural[b[n]] {
		n++
	}
	return n
}

// stringLen is the length of the JSON string that b starts with, quotes
// included (all of b if it is not closed).
func stringLen(b []byte) int {
	for i := 1; i < len(b); {
		j := bytes.IndexByte(b[i:], '"')
		if j < 0 {
			return len(b)
		}
		i += j
		if escapedAt(b, i) {
			i++
			continue
		}
		return i + 1
	}
	return len(b)
}

// escapedAt says whether b[i] follows an odd run of backslashes.
func escapedAt(b []byte, i int) bool {
	n := 0
	for i-n-1 > 0 && b[i-n-1] == '\\' {
		n++
	}
	return n%2 == 1
}

// JSONSource serves a pool's snapshots as JSON; it is a statsock.Source.
// Readers sharing a snapshot (Pool.MaxAge) share its encoding too.
type JSONSource struct {
	Pool     *Pool
	Minified bool

	mu   sync.Mutex
	st   *Stats
	json []byte
}

// Dump returns the current snapshot's JSON.
func (s *JSONSource) Dump(ctx context.Context) ([]byte, error) {
	st, err := s.Pool.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if st != s.st {
		b, err := MarshalStats(st, s.Minified)
		if err != nil {
			return nil, err
		}
		s.st, s.json = st, b
	}
	return s.json, nil
}
