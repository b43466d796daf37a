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
func MarshalStats(st *Stats, minified bool) ([]byte, error) {
	compact := compactBuffers.Get().(*bytes.Buffer)
	defer compactBuffers.Put(compact)
	compact.Reset()
	enc := json.NewEncoder(compact)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(st); err != nil {
		return nil, fmt.Errorf("encode stats: %w", err)
	}
	src := bytes.TrimSuffix(compact.Bytes(), []byte("\n"))
	if minified {
		return bytes.Clone(src), nil
	}
	return indentLikeUWSGI(src), nil
}

// compactBuffers keep the compact encoding's buffer between dumps: a big
// pool's is hundreds of KB, grown anew on every dump otherwise.
var compactBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// indentLikeUWSGI lays out compact JSON one value per line, indented with
// tabs, with "key":value and no space, as uWSGI's stats server does. Empty
// arrays and objects stay on one line. Runs of plain bytes (numbers, and
// strings, which hold no raw control bytes) are copied whole.
func indentLikeUWSGI(src []byte) []byte {
	lines := bytes.Count(src, []byte{','}) + 2*bytes.Count(src, []byte{'{'}) + 2*bytes.Count(src, []byte{'['})
	out := make([]byte, 0, len(src)+lines*8)
	depth := 0
	newline := func() {
		if depth < len(newlineTabs) {
			out = append(out, newlineTabs[:depth+1]...)
			return
		}
		out = append(out, '\n')
		for range depth {
			out = append(out, '\t')
		}
	}
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
			newline()
		case '}', ']':
			depth--
			newline()
			out = append(out, c)
		case ',':
			out = append(out, c)
			newline()
		}
		i++
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
