package statsock

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
)

func TestParseAddrAccepted(t *testing.T) {
	path107 := "/" + strings.Repeat("p", 106)
	abstract107 := "@" + strings.Repeat("a", 107) // sun_path holds 108 bytes; the leading NUL is one of them
	tests := []struct {
		in       string
		network  string
		address  string
		wildcard bool
		abstract bool
		path     bool
	}{
		{in: "127.0.0.1:1717", network: "tcp", address: "127.0.0.1:1717"},
		{in: "127.0.0.1:0", network: "tcp", address: "127.0.0.1:0"},
		{in: "10.0.0.1:65535", network: "tcp", address: "10.0.0.1:65535"},
		{in: ":5050", network: "tcp", address: ":5050", wildcard: true},
		{in: ":0", network: "tcp", address: ":0", wildcard: true},
		{in: "0.0.0.0:1717", network: "tcp", address: "0.0.0.0:1717", wildcard: true},
		{in: "[::]:1717", network: "tcp", address: "[::]:1717", wildcard: true},
		{in: "[::1]:1717", network: "tcp", address: "[::1]:1717"},
		{in: "[::1]:0", network: "tcp", address: "[::1]:0"},
		{in: "[fe80::1]:80", network: "tcp", address: "[fe80::1]:80"},
		{in: "[::ffff:127.0.0.1]:80", network: "tcp", address: "[::ffff:127.0.0.1]:80"},
		{in: "localhost:1717", network: "tcp", address: "localhost:1717"},
		{in: "stats.example.com:1717", network: "tcp", address: "stats.example.com:1717"},
		{in: "/run/workerstats/app.sock", network: "unix", address: "/run/workerstats/app.sock", path: true},
		{in: "./stats.sock", network: "unix", address: "./stats.sock", path: true},
		{in: "run/stats.sock", network: "unix", address: "run/stats.sock", path: true},
		{in: path107, network: "unix", address: path107, path: true},
		{in: "@name", network: "unix", address: "@name", abstract: true},
		{in: "@workerstats/app", network: "unix", address: "@workerstats/app", abstract: true},
		{in: "@a", network: "unix", address: "@a", abstract: true},
		{in: abstract107, network: "unix", address: abstract107, abstract: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			a, err := ParseAddr(tt.in)
			if err != nil {
				t.Fatalf("ParseAddr(%q): %v", tt.in, err)
			}
			if a.Network != tt.network || a.Address != tt.address || a.Wildcard != tt.wildcard {
				t.Errorf("ParseAddr(%q) = %+v, want Network %q Address %q Wildcard %v", tt.in, a, tt.network, tt.address, tt.wildcard)
			}
			if a.Abstract() != tt.abstract || a.Path() != tt.path {
				t.Errorf("ParseAddr(%q): Abstract() = %v, Path() = %v; want %v, %v", tt.in, a.Abstract(), a.Path(), tt.abstract, tt.path)
			}
			if a.String() != tt.address {
				t.Errorf("String() = %q, want %q", a.String(), tt.address)
			}
		})
	}
}

func TestParseAddrRefused(t *testing.T) {
	tests := []struct {
		in   string
		why  string // a fragment the error should carry
		note string
	}{
		{in: "", why: "empty"},
		{in: "localhost", why: "missing port"},
		{in: "127.0.0.1", why: "missing port"},
		{in: "stats.sock", why: "missing port", note: "a bare name is neither a path nor host:port"},
		{in: "host:", why: "port"},
		{in: ":", why: "port"},
		{in: ":99999", why: "port"},
		{in: ":65536", why: "port"},
		{in: ":-1", why: "port"},
		{in: ":+80", why: "port"},
		{in: ":0x50", why: "port"},
		{in: ":http", why: "port", note: "service names are not resolved"},
		{in: ":0123", why: "port", note: "a leading zero could be read as octal"},
		{in: ":00", why: "port"},
		{in: ": 80", why: "port"},
		{in: "[::1]", why: "missing port"},
		{in: "::1:80", why: "too many colons"},
		{in: "::1", why: "too many colons"},
		{in: "host:9191:1", why: "too many colons"},
		{in: "[::1]:80:80", why: ""},
		{in: "[::1:80", why: "missing ']'"},
		{in: "::1]:80", why: ""},
		{in: "[fe80::1%eth0]:80", why: "host"},
		{in: "[127.0.0.1:80]", why: ""},
		{in: "[:::]:80", why: "host"},
		{in: "[::g]:80", why: "host"},
		{in: "a b:80", why: "host"},
		{in: "@", why: "no name"},
		{in: "@" + strings.Repeat("a", 108), why: "longer than 107"},
		{in: "/", why: "directory"},
		{in: "/run/workerstats/", why: "directory"},
		{in: "./", why: "directory"},
		{in: "/" + strings.Repeat("p", 107), why: "longer than 107"},
		{in: "/run/stats\x00.sock", why: "control character"},
		{in: "127.0.0.1:80\x00", why: "control character"},
		{in: "@name\x00", why: "control character"},
		{in: "\x00", why: "control character"},
		{in: "/run/a\nb.sock", why: "control character"},
		{in: "127.0.0.1:80\r\n", why: "control character"},
	}
	for _, tt := range tests {
		t.Run(strconv.Quote(tt.in), func(t *testing.T) {
			a, err := ParseAddr(tt.in)
			if err == nil {
				t.Fatalf("ParseAddr(%q) = %+v, want an error (%s)", tt.in, a, tt.note)
			}
			if a != (Addr{}) {
				t.Errorf("ParseAddr(%q) returned %+v with its error, want the zero Addr", tt.in, a)
			}
			msg := err.Error()
			// One clear error: it names the input and the accepted forms,
			// and says what is wrong, on one line.
			if !strings.Contains(msg, strconv.Quote(tt.in)) {
				t.Errorf("error %q does not quote the input", msg)
			}
			if !strings.Contains(msg, "host:port") || !strings.Contains(msg, "@name") {
				t.Errorf("error %q does not list the accepted forms", msg)
			}
			if !strings.Contains(msg, tt.why) {
				t.Errorf("error %q does not say %q", msg, tt.why)
			}
			if strings.ContainsAny(msg, "\n\r") {
				t.Errorf("error %q spans lines", msg)
			}
		})
	}
}

// A TCP address with a bracketed host starting with '@' becomes, once its
// brackets are dropped, an abstract Unix socket.
func TestParseAddrBracketedHostRoundTrip(t *testing.T) {
	for _, in := range []string{"[@x]:80", "[@workerstats]:1717"} {
		a, err := ParseAddr(in)
		if err != nil {
			continue // refusing them is fine
		}
		b, err := ParseAddr(a.Address)
		if err != nil || b != a {
			t.Errorf("ParseAddr(%q) = %s %q, but ParseAddr(%q) = %s %q (Abstract %v), %v", in, a.Network, a.Address, a.Address, b.Network, b.Address, b.Abstract(), err)
		}
	}
}

// checkAddrInvariants holds for every input: no panic, errors name the
// input, and an accepted address is consistent and round-trips.
func checkAddrInvariants(t *testing.T, s string) {
	a, err := ParseAddr(s)
	if err != nil {
		if a != (Addr{}) {
			t.Errorf("ParseAddr(%q) returned %+v with its error", s, a)
		}
		if !strings.Contains(err.Error(), strconv.Quote(s)) {
			t.Errorf("ParseAddr(%q) error %q does not name the input", s, err)
		}
		return
	}
	if s == "" || strings.ContainsAny(a.Address, "\x00\r\n") {
		t.Errorf("ParseAddr(%q) accepted %+v", s, a)
	}
	b, err := ParseAddr(a.Address)
	if err != nil {
		t.Fatalf("ParseAddr(%q) = %+v, but its Address does not parse: %v", s, a, err)
	}
	if b != a {
		t.Fatalf("ParseAddr(%q) = %+v, but ParseAddr(%q) = %+v", s, a, a.Address, b)
	}
	switch a.Network {
	case "tcp":
		if a.Abstract() || a.Path() {
			t.Errorf("TCP address %+v reports Abstract %v Path %v", a, a.Abstract(), a.Path())
		}
		host, port, err := net.SplitHostPort(a.Address)
		if err != nil {
			t.Fatalf("TCP address %q of %q does not split: %v", a.Address, s, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || strconv.FormatUint(n, 10) != port {
			t.Errorf("TCP address %q of %q has port %q, not a canonical number in 0-65535", a.Address, s, port)
		}
		ip := net.ParseIP(host)
		if want := host == "" || (ip != nil && ip.IsUnspecified()); a.Wildcard != want {
			t.Errorf("%q: Wildcard = %v for host %q", s, a.Wildcard, host)
		}
		if strings.Contains(host, ":") && ip == nil {
			t.Errorf("%q: host %q has a colon but is no IPv6 address", s, host)
		}
		if strings.Contains(a.Address, "/") {
			t.Errorf("%q: TCP address %q holds a '/'", s, a.Address)
		}
	case "unix":
		if a.Wildcard {
			t.Errorf("%q: a Unix address is Wildcard", s)
		}
		if a.Abstract() == a.Path() {
			t.Errorf("%q: Abstract %v and Path %v", s, a.Abstract(), a.Path())
		}
		if a.Address != s {
			t.Errorf("%q: Unix address rewritten to %q", s, a.Address)
		}
		limit := maxUnixPath
		if a.Abstract() {
			limit++
			if len(a.Address) < 2 {
				t.Errorf("%q: empty abstract name", s)
			}
		} else if strings.HasSuffix(a.Address, "/") || !strings.Contains(a.Address, "/") {
			t.Errorf("%q: accepted path %q", s, a.Address)
		}
		if len(a.Address) > limit {
			t.Errorf("%q: %d bytes do not fit sun_path", s, len(a.Address))
		}
	default:
		t.Errorf("ParseAddr(%q) = network %q", s, a.Network)
	}
}

func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1:1717", ":5050", "[::1]:1717", "/run/workerstats/app.sock", "@name",
		"", "localhost", "host:", ":99999", ":0123", "[::1]", "::1:80", "@", "/tmp/",
		"[::]:0", "0.0.0.0:80", "[fe80::1%lo]:80", "a:b:c", "[]:80", "x\x00:80",
		"/" + strings.Repeat("p", 107), "@" + strings.Repeat("a", 107),
		"[@x]:80", "[host]:80",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		checkAddrInvariants(t, s)
	})
}

// The invariants hold for a few hand-picked inputs too, fuzzing or not.
func TestParseAddrInvariants(t *testing.T) {
	for i := range 256 {
		for _, s := range []string{string(rune(i)), fmt.Sprintf(":%c", i), fmt.Sprintf("h%c:1", i), fmt.Sprintf("@%c", i), fmt.Sprintf("/%c", i)} {
			checkAddrInvariants(t, s)
		}
	}
}
