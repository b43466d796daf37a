package observer

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A pool in another network namespace, without the eBPF kernel's reader
// (procfs mode): its listeners as /proc/PID/net shows them, the tables of
// the process's own network namespace, which anyone may read. They give a
// listener's name and its accept queue, not its backlog nor its drops.

// procNetMax bounds what is read of one /proc/PID/net table: a container's
// are small, and a listener past the bound is left out, never a daemon
// that grows.
const procNetMax = 4 << 20

// ListeningInNetNSOf returns the listening sockets among inodes, read from
// the tables of pid's network namespace: TCP over IPv4 and IPv6, then Unix,
// each sorted by name, as ListeningByInode has them but for MaxQueue and
// Drops, which those tables do not hold (0).
func (p Procfs) ListeningInNetNSOf(pid int, inodes map[uint64]bool) ([]Socket, error) {
	dir := filepath.Join(p.Root, strconv.Itoa(pid), "net")
	read := func(name string) ([]byte, error) {
		b, err := readBounded(filepath.Join(dir, name), procNetMax)
		if err != nil {
			return nil, fmt.Errorf("listeners of pid %d's network namespace: %w", pid, err)
		}
		return b, nil
	}
	var tcp []Socket
	for _, t := range []struct {
		name   string
		family uint8
	}{{"tcp", unix.AF_INET}, {"tcp6", unix.AF_INET6}} {
		b, err := read(t.name)
		if err != nil {
			return nil, err
		}
		tcp = append(tcp, parseProcNetTCP(b, t.family, inodes)...)
	}
	b, err := read("unix")
	if err != nil {
		return nil, err
	}
	return append(sortByName(tcp), sortByName(parseProcNetUnix(b, inodes))...), nil
}

// sortByName sorts socks by name, as the dump lists them, and returns it.
func sortByName(socks []Socket) []Socket {
	sort.Slice(socks, func(i, j int) bool { return socks[i].Name < socks[j].Name })
	return socks
}

// readBounded reads at most max bytes of a file.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(io.LimitReader(f, max))
	return b.Bytes(), err
}

// parseProcNetTCP reads /proc/net/tcp or tcp6 (family): the LISTEN
// sockets (st 0A) among inodes, their accept queue from rx_queue.
func parseProcNetTCP(b []byte, family uint8, inodes map[uint64]bool) []Socket {
	var out []Socket
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 512), 4096)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
		if len(f) < 10 || f[3] != "0A" {
			continue
		}
		inode, err := strconv.ParseUint(f[9], 10, 64)
		if err != nil || !inodes[inode] {
			continue
		}
		ip, port, ok := parseHexAddr(f[1], family)
		_, rx, ok2 := strings.Cut(f[4], ":")
		queue, err := strconv.ParseUint(rx, 16, 32)
		if !ok || !ok2 || err != nil {
			continue
		}
		out = append(out, Socket{Name: TCPSocketName(family, ip, port), Proto: "tcp", Queue: queue})
	}
	return out
}

// parseHexAddr reads a table's "ADDR:PORT": the address as the kernel
// prints it, 32-bit words in host order (one for IPv4, four for IPv6),
// the port in hex.
func parseHexAddr(s string, family uint8) (ip []byte, port uint16, ok bool) {
	a, p, found := strings.Cut(s, ":")
	words := 1
	if family == unix.AF_INET6 {
		words = 4
	}
	raw, err := hex.DecodeString(a)
	pn, perr := strconv.ParseUint(p, 16, 16)
	if !found || err != nil || perr != nil || len(raw) != 4*words {
		return nil, 0, false
	}
	ip = make([]byte, len(raw))
	for w := range words {
		binary.NativeEndian.PutUint32(ip[4*w:], binary.BigEndian.Uint32(raw[4*w:]))
	}
	return ip, uint16(pn), true
}

// parseProcNetUnix reads /proc/net/unix: the listening stream sockets
// (flag __SO_ACCEPTCON, type SOCK_STREAM) among inodes, named as uWSGI
// names them (the kernel prints an abstract name's leading NUL as '@').
func parseProcNetUnix(b []byte, inodes map[uint64]bool) []Socket {
	const acceptCon = 0x10000
	var out []Socket
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 512), 4096)
	for sc.Scan() {
		// Num: RefCount Protocol Flags Type St Inode [Path]: the inode
		// padded, the path last and as it is (spaces and all).
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) < 8 {
			continue // no path: an unbound socket
		}
		flags, err1 := strconv.ParseUint(f[3], 16, 32)
		typ, err2 := strconv.ParseUint(f[4], 16, 16)
		inode, err3 := strconv.ParseUint(f[6], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || flags&acceptCon == 0 || typ != unix.SOCK_STREAM || !inodes[inode] {
			continue
		}
		path := strings.TrimPrefix(line[fieldEnd(line, 7):], " ")
		out = append(out, Socket{Name: path, Proto: "unix"})
	}
	return out
}

// fieldEnd is the offset just past line's n-th space-separated field (the
// whole line if it has fewer).
func fieldEnd(line string, n int) int {
	i := 0
	for range n {
		for i < len(line) && line[i] == ' ' {
			i++
		}
		for i < len(line) && line[i] != ' ' {
			i++
		}
	}
	return i
}
