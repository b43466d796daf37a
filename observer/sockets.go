package observer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ListeningSockets returns the listening sockets the process pid holds
// (TCP over IPv4 and IPv6, and Unix stream sockets), named as uWSGI names
// them, each with its current accept queue and its backlog.
//
// It takes the socket inodes from <Root>/PID/fd and looks them up in the
// kernel's sock_diag dumps (one dump each for TCP/IPv4, TCP/IPv6 and Unix).
// Names follow uWSGI's own rendering of a bound socket (core/socket.c,
// uwsgi_getsockname and uwsgi_add_socket_from_fd): "127.0.0.1:9090", ":9090"
// for 0.0.0.0, "[::1]:9090" and "[::]:9090" for IPv6, the path of a Unix
// socket, and "@name" for a Linux abstract one. Proto is "tcp" or "unix":
// the application protocol cannot be seen from outside. Queue is the number
// of connections waiting to be accepted, MaxQueue the listen backlog (as
// capped by net.core.somaxconn). The result lists TCP before Unix, each
// sorted by name.
//
// Limitation: sock_diag answers for the network namespace of the caller
// only, and Root is only used for the fd table. A process in another network
// namespace (a container) holds sockets this call cannot see, and it then
// returns none of them; the daemon runs in the host namespace.
//
// With alsoHeldBy, only the sockets those processes hold too are listed: a
// master's sockets shared with a worker are the ones the pool serves on,
// which leaves out the master's own (uWSGI's stats socket, say). A process
// that cannot be read, having exited meanwhile, filters nothing.
func (p Procfs) ListeningSockets(pid int, alsoHeldBy ...int) ([]Socket, error) {
	inodes, err := p.SharedSocketInodes(pid, alsoHeldBy...)
	if err != nil {
		return nil, err
	}
	return p.ListeningByInode(inodes)
}

// SharedSocketInodes returns the inodes of the sockets process pid holds
// that every process of alsoHeldBy holds too (see ListeningSockets). It
// needs ptrace read access to each: without it the error wraps
// fs.ErrPermission.
func (p Procfs) SharedSocketInodes(pid int, alsoHeldBy ...int) (map[uint64]bool, error) {
	inodes, err := p.socketInodes(pid)
	if err != nil {
		return nil, err
	}
	for _, other := range alsoHeldBy {
		theirs, err := p.socketInodes(other)
		if errors.Is(err, fs.ErrPermission) {
			return nil, err
		}
		if err != nil {
			continue
		}
		for ino := range inodes {
			if !theirs[ino] {
				delete(inodes, ino)
			}
		}
	}
	return inodes, nil
}

// ListeningByInode returns the listening sockets among inodes, as
// ListeningSockets does.
func (p Procfs) ListeningByInode(inodes map[uint64]bool) ([]Socket, error) {
	if len(inodes) == 0 {
		return []Socket{}, nil
	}
	var tcp, unixSocks []Socket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := retryDump(func() ([]tcpListener, error) { return tcpListeners(family) })
		if err != nil {
			return nil, fmt.Errorf("sock_diag dump of TCP (family %d): %w", family, err)
		}
		for _, s := range socks {
			if !inodes[uint64(s.inode)] {
				continue
			}
			tcp = append(tcp, Socket{
				Name:     TCPSocketName(s.family, s.addr, s.port),
				Proto:    "tcp",
				Queue:    uint64(s.rqueue),
				MaxQueue: uint64(s.wqueue),
				Drops:    uint64(s.drops),
			})
		}
	}
	usocks, err := retryDump(netlink.UnixSocketDiagInfo)
	if err != nil {
		return nil, fmt.Errorf("sock_diag dump of Unix sockets: %w", err)
	}
	for _, u := range usocks {
		m := u.DiagMsg
		if m == nil || m.Type != unix.SOCK_STREAM || m.State != netlink.TCP_LISTEN || !inodes[uint64(m.INode)] {
			continue
		}
		s := Socket{Proto: "unix"}
		if u.Name != nil {
			s.Name = unixSocketName(*u.Name)
		}
		if u.Queue != nil {
			// UNIX_DIAG_RQLEN of a listener: pending connections, backlog.
			s.Queue, s.MaxQueue = uint64(u.Queue.RQueue), uint64(u.Queue.WQueue)
		}
		unixSocks = append(unixSocks, s)
	}
	byName := func(s []Socket) {
		sort.Slice(s, func(i, j int) bool { return s[i].Name < s[j].Name })
	}
	byName(tcp)
	byName(unixSocks)
	return append(append(make([]Socket, 0, len(tcp)+len(unixSocks)), tcp...), unixSocks...), nil
}

// retryDump runs a sock_diag dump again when the kernel reports that the
// socket table changed while it was being dumped (NLM_F_DUMP_INTR), in which
// case the result may miss sockets.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	var (
		res []T
		err error
	)
	for range 3 {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return res, err
}

// socketInodes returns the inodes of the sockets process pid holds: the
// "socket:[INODE]" targets of <Root>/PID/fd/*.
func (p Procfs) socketInodes(pid int) (map[uint64]bool, error) {
	dir := filepath.Join(p.Root, strconv.Itoa(pid), "fd")
	f, err := os.Open(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return nil, fmt.Errorf("fds of pid %d: %w", pid, err)
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("fds of pid %d: %w", pid, err)
	}
	inodes := make(map[uint64]bool)
	for _, n := range names {
		target, err := os.Readlink(filepath.Join(dir, n))
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("fds of pid %d: %w", pid, err)
		}
		if err != nil {
			continue // closed since the directory was read
		}
		if ino, ok := socketInode(target); ok {
			inodes[ino] = true
		}
	}
	return inodes, nil
}

// socketInode parses the target of a /proc/PID/fd link to a socket,
// "socket:[INODE]".
func socketInode(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(s, 10, 64)
	return ino, err == nil
}

// TCPSocketName names a TCP socket of family (AF_INET, AF_INET6) bound to
// ip:port as uWSGI does: ":PORT" for 0.0.0.0, "[ADDR]:PORT" for IPv6
// (with inet_ntop's text, so "[::]:PORT" for the wildcard and
// "[::ffff:1.2.3.4]:PORT" for a mapped address). An IPv4 ip may be 4 or
// 16 bytes.
func TCPSocketName(family uint8, ip []byte, port uint16) string {
	p := strconv.Itoa(int(port))
	a, _ := netip.AddrFromSlice(ip)
	if family == unix.AF_INET6 {
		return "[" + a.String() + "]:" + p
	}
	a = a.Unmap() // netlink hands IPv4 addresses in their 16-byte form
	if !a.IsValid() || a.IsUnspecified() {
		return ":" + p
	}
	return a.String() + ":" + p
}

// unixSocketName names a Unix socket from its UNIX_DIAG_NAME bytes, as
// UnixSocketName does once an abstract name's over-read is trimmed
// (trimDiagOverread).
func unixSocketName(raw string) string {
	if raw != "" && raw[0] == 0 {
		raw = trimDiagOverread(raw)
	}
	return UnixSocketName(raw)
}

// UnixSocketName names a Unix socket from its bound name (sun_path's
// bytes, as many as the kernel holds) as uWSGI does: the path, or "@name"
// for an abstract socket (whose kernel name starts with a NUL byte).
//
// Pathnames end at the first NUL: the kernel's name includes the
// terminating one. Abstract names have no terminator; uWSGI binds "@name"
// with a trailing NUL, which is dropped here as uWSGI reads the name as a C
// string. Other NULs inside an abstract name are shown as '@', as ss and
// /proc/net/unix show them.
func UnixSocketName(raw string) string {
	if raw == "" {
		return ""
	}
	if raw[0] != 0 {
		if i := strings.IndexByte(raw, 0); i >= 0 {
			raw = raw[:i]
		}
		return raw
	}
	return "@" + strings.ReplaceAll(strings.TrimRight(raw[1:], "\x00"), "\x00", "@")
}

// trimDiagOverread undoes an over-read of github.com/vishvananda/netlink
// (v1.3.1): UnixSocketDiagInfo slices the UNIX_DIAG_NAME attribute's value
// with the attribute's length, which counts the 4-byte attribute header, so
// the name carries 4 bytes too many: the padding to a 4-byte boundary, then
// the start of the next attribute's header (UNIX_DIAG_RQLEN follows the name
// in the kernel's reply). Pathnames are safe either way (they end at their
// NUL), but an abstract name has no terminator, so this is applied to
// abstract names only. The 4 bytes are dropped only when they look exactly
// like such padding and header, so a netlink release that fixes the slice
// keeps working.
func trimDiagOverread(raw string) string {
	n := len(raw) - 4
	if n < 1 {
		return raw
	}
	tail := raw[n:]
	pad := (4 - n%4) % 4
	for i := 0; i < pad; i++ {
		if tail[i] != 0 {
			return raw
		}
	}
	hdr := tail[pad:] // a prefix of struct nlattr {u16 nla_len; u16 nla_type}
	if len(hdr) >= 2 {
		if l := binary.NativeEndian.Uint16([]byte(hdr[:2])); l < 4 || l > 4096 {
			return raw
		}
	}
	if len(hdr) == 4 {
		if typ := binary.NativeEndian.Uint16([]byte(hdr[2:])); typ == 0 || typ > 32 {
			return raw
		}
	}
	return raw[:n]
}

// AcceptedConnections counts, for each pid, the connections it holds that
// were accepted on one of the listening sockets: established (or closed by
// the peer and not yet by the process) sockets whose local address is a
// listening socket's. A process's outbound connections are not counted.
func (p Procfs) AcceptedConnections(pids []int, listening []Socket) (map[int]int, error) {
	owner := map[uint64]int{}
	for _, pid := range pids {
		inodes, err := p.socketInodes(pid)
		if err != nil {
			continue // exited meanwhile
		}
		for ino := range inodes {
			owner[ino] = pid
		}
	}
	names := map[string]bool{}
	for _, s := range listening {
		names[s.Name] = true
	}
	// A listener on all interfaces (":PORT", "[::]:PORT") accepts on any
	// local address with its port.
	wildcard := func(name string) bool {
		i := strings.LastIndexByte(name, ':')
		return i >= 0 && (names[name[i:]] || names["[::]"+name[i:]])
	}
	out := map[int]int{}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := retryDump(func() ([]*netlink.Socket, error) { return netlink.SocketDiagTCP(family) })
		if err != nil {
			return nil, fmt.Errorf("sock_diag dump of TCP (family %d): %w", family, err)
		}
		for _, s := range socks {
			pid, ok := owner[uint64(s.INode)]
			if !ok || (s.State != netlink.TCP_ESTABLISHED && s.State != netlink.TCP_CLOSE_WAIT) {
				continue
			}
			if name := TCPSocketName(s.Family, s.ID.Source, s.ID.SourcePort); names[name] || wildcard(name) {
				out[pid]++
			}
		}
	}
	usocks, err := retryDump(netlink.UnixSocketDiagInfo)
	if err != nil {
		return nil, fmt.Errorf("sock_diag dump of Unix sockets: %w", err)
	}
	for _, u := range usocks {
		m := u.DiagMsg
		if m == nil || m.Type != unix.SOCK_STREAM || m.State != netlink.TCP_ESTABLISHED || u.Name == nil {
			continue
		}
		// An accepted Unix socket carries its listener's name.
		if pid, ok := owner[uint64(m.INode)]; ok && names[unixSocketName(*u.Name)] {
			out[pid]++
		}
	}
	return out, nil
}
