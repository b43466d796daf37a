package proto

import "encoding/binary"

// The uwsgi protocol (what nginx's uwsgi_pass speaks): a 4-byte header,
// modifier1, the size of what follows (16 bits, little-endian) and
// modifier2, then for modifier1 0 (WSGI) the request's vars, each a 16-bit
// key length, the key, a 16-bit value length and the value.

// isUWSGIPacket says b starts with a WSGI vars packet: modifier1 and 2
// zero, a size that holds a var, and a first key of CGI letters.
func isUWSGIPacket(b []byte) bool {
	if len(b) < 6 || b[0] != 0 || b[3] != 0 || binary.LittleEndian.Uint16(b[1:3]) < 4 {
		return false
	}
	klen := int(binary.LittleEndian.Uint16(b[4:6]))
	if klen == 0 || klen > 64 || len(b) < 6+klen {
		return false
	}
	for _, c := range b[6 : 6+klen] {
		if !('A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// parseUWSGI reads the vars of a uwsgi packet, as far as b holds them.
func parseUWSGI(b []byte) Request {
	var r Request
	if len(b) < 4 {
		return r
	}
	size := int(binary.LittleEndian.Uint16(b[1:3]))
	body := b[4:]
	r.Complete = len(body) >= size
	body = body[:min(size, len(body))]
	for len(body) >= 2 {
		key, rest, ok := lenPrefixed(body)
		if !ok {
			break
		}
		val, rest, ok := lenPrefixed(rest)
		if !ok {
			break
		}
		r.Vars = append(r.Vars, Var{string(key), string(val)})
		body = rest
	}
	return r
}

// lenPrefixed cuts a 16-bit little-endian length and that many bytes.
func lenPrefixed(b []byte) (field, rest []byte, ok bool) {
	if len(b) < 2 {
		return nil, b, false
	}
	n := int(binary.LittleEndian.Uint16(b))
	if len(b) < 2+n {
		return nil, b, false
	}
	return b[2 : 2+n], b[2+n:], true
}
