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
	var compact bytes.Buffer
	enc := json.NewEncoder(&compact)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(st); err != nil {
		return nil, fmt.Errorf("encode stats: %w", err)
	}
	src := bytes.TrimSuffix(compact.Bytes(), []byte("\n"))
	if minified {
		return src, nil
	}
	return indentLikeUWSGI(src), nil
}

// indentLikeUWSGI lays out compact JSON one value per line, indented with
// tabs, with "key":value and no space, as uWSGI's stats server does. Empty
// arrays and objects stay on one line.
func indentLikeUWSGI(src []byte) []byte {
	out := make([]byte, 0, len(src)+len(src)/2)
	depth := 0
	newline := func() {
		out = append(out, '\n')
		for range depth {
			out = append(out, '\t')
		}
	}
	inString, escaped := false, false
	for i := 0; i < len(src); i++ {
		c := src[i]
		if inString {
			out = append(out, c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
			out = append(out, c)
		case '{', '[':
			if i+1 < len(src) && (src[i+1] == '}' || src[i+1] == ']') {
				out = append(out, c, src[i+1])
				i++
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
		default:
			out = append(out, c)
		}
	}
	return out
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
