package statsock

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Addr is a parsed stats address, in uWSGI's --stats grammar:
//
//	127.0.0.1:1717        TCP on one interface
//	:5050                 TCP on all interfaces (reachable from the network)
//	[::1]:1717            TCP over IPv6
//	/run/workerstats.sock a Unix socket (any address with a '/')
//	@name                 a Linux abstract Unix socket
type Addr struct {
	Network string // "tcp" or "unix"
	Address string // what net.Listen/net.Dial take; abstract names keep their '@'
	// Wildcard is true for a TCP address on all interfaces.
	Wildcard bool
}

// Abstract reports whether a is a Linux abstract Unix socket.
func (a Addr) Abstract() bool { return a.Network == "unix" && strings.HasPrefix(a.Address, "@") }

// Path reports whether a is a Unix socket with a file in the filesystem.
func (a Addr) Path() bool { return a.Network == "unix" && !a.Abstract() }

func (a Addr) String() string { return a.Address }

// maxUnixPath is the room for a name in sockaddr_un.sun_path.
const maxUnixPath = 107

// ParseAddr parses a stats address. The error says what is wrong and what
// the accepted forms are.
func ParseAddr(s string) (Addr, error) {
	bad := func(why string) (Addr, error) {
		return Addr{}, fmt.Errorf("stats address %q %s: use host:port, :port, [ipv6]:port, /path/to.sock or @name", s, why)
	}
	switch {
	case s == "":
		return bad("is empty")
	case strings.ContainsAny(s, "\x00\n\r"):
		return bad("holds a control character")
	case strings.HasPrefix(s, "@"):
		if len(s) == 1 {
			return bad("has no name after '@'")
		}
		if len(s) > maxUnixPath+1 {
			return bad(fmt.Sprintf("is longer than %d bytes", maxUnixPath))
		}
		return Addr{Network: "unix", Address: s}, nil
	case strings.Contains(s, "/"):
		if len(s) > maxUnixPath {
			return bad(fmt.Sprintf("is a socket path longer than %d bytes", maxUnixPath))
		}
		if strings.HasSuffix(s, "/") {
			return bad("is a directory, not a socket path")
		}
		return Addr{Network: "unix", Address: s}, nil
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return bad("is neither host:port nor a socket path (" + ae.Err + ")")
		}
		return bad("is neither host:port nor a socket path")
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil || (len(port) > 1 && port[0] == '0') {
		return bad("has no valid port (0-65535)")
	}
	if !validHost(host, strings.HasPrefix(s, "[")) {
		return bad("has an invalid host")
	}
	wildcard := host == ""
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		wildcard = true
	}
	return Addr{Network: "tcp", Address: net.JoinHostPort(host, port), Wildcard: wildcard}, nil
}

// validHost accepts an IP address, or a host name of letters, digits, '-'
// and '.'; a bracketed host must be an IPv6 address.
func validHost(host string, bracketed bool) bool {
	if ip := net.ParseIP(host); ip != nil {
		return !bracketed || strings.Contains(host, ":")
	}
	if bracketed {
		return false
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}
