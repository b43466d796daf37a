package observer

import (
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// tcpListener is what a pool's dump needs of a listening TCP socket.
type tcpListener struct {
	family uint8
	addr   []byte // 4 or 16 bytes
	port   uint16
	rqueue uint32 // connections waiting in the accept queue
	wqueue uint32 // the backlog
	inode  uint32
	// drops are the packets the socket dropped (sk_drops): for a
	// listener, the connection attempts its full accept queue refused, a
	// SYN once and a handshake's last ACK twice (tcp_listendrop, then the
	// segment's discard), and any its backlog or a filter dropped.
	drops uint32
}

// tcpListeners dumps the listening TCP sockets of family through
// sock_diag, asking the kernel for the LISTEN state only and only the
// socket memory extension (for its drop count): a busy host's established
// and TIME_WAIT sockets, often hundreds of thousands, are neither sent nor
// parsed. (netlink's SocketDiagTCP asks for every state, and each socket's
// tcp_info.)
func tcpListeners(family uint8) ([]tcpListener, error) {
	req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
	req.AddData(listenRequest(family))
	var (
		out      []tcpListener
		parseErr error
	)
	err := req.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
		l, err := parseInetDiagMsg(msg)
		if err != nil {
			parseErr = err
			return false
		}
		out = append(out, l)
		return true
	})
	if parseErr != nil {
		return nil, parseErr
	}
	return out, err
}

// listenRequest is an inet_diag_req_v2 for the LISTEN TCP sockets of a
// family (linux/inet_diag.h): family, protocol, extensions (SKMEMINFO),
// padding, the states bitmask, and an all-zero socket id (48 bytes).
type listenRequest uint8

const (
	sizeofInetDiagReq = 56
	sizeofInetDiagMsg = 72
	inetDiagSKMemInfo = 7 // INET_DIAG_SKMEMINFO: u32 sk_meminfo[SK_MEMINFO_VARS]
	skMemInfoDrops    = 8 // SK_MEMINFO_DROPS
)

func (r listenRequest) Len() int { return sizeofInetDiagReq }

func (r listenRequest) Serialize() []byte {
	b := make([]byte, sizeofInetDiagReq)
	b[0], b[1], b[2] = uint8(r), unix.IPPROTO_TCP, 1<<(inetDiagSKMemInfo-1)
	binary.NativeEndian.PutUint32(b[4:8], 1<<netlink.TCP_LISTEN)
	return b
}

// parseInetDiagMsg reads an inet_diag_msg: family, state, timer, retrans,
// the socket id (ports big-endian, then 16 bytes of each address, the
// interface and the cookie), expires, rqueue, wqueue, uid, inode.
func parseInetDiagMsg(b []byte) (tcpListener, error) {
	if len(b) < sizeofInetDiagMsg {
		return tcpListener{}, fmt.Errorf("sock_diag: a %d-byte inet_diag_msg, want %d", len(b), sizeofInetDiagMsg)
	}
	l := tcpListener{
		family: b[0],
		port:   binary.BigEndian.Uint16(b[4:6]),
		rqueue: binary.NativeEndian.Uint32(b[56:60]),
		wqueue: binary.NativeEndian.Uint32(b[60:64]),
		inode:  binary.NativeEndian.Uint32(b[68:72]),
	}
	if b[1] != netlink.TCP_LISTEN {
		return tcpListener{}, fmt.Errorf("sock_diag: a socket in state %d, asked for LISTEN only", b[1])
	}
	l.addr = append([]byte(nil), b[8:8+16]...)
	if l.family == unix.AF_INET {
		l.addr = l.addr[:4]
	}
	l.drops = skDrops(b[sizeofInetDiagMsg:])
	return l, nil
}

// skDrops finds SK_MEMINFO_DROPS in the attributes after an inet_diag_msg
// (each a 4-byte length and type, the value, padded to 4 bytes); 0 when
// the kernel sent none.
func skDrops(attrs []byte) uint32 {
	for len(attrs) >= 4 {
		n := int(binary.NativeEndian.Uint16(attrs[0:2]))
		typ := binary.NativeEndian.Uint16(attrs[2:4])
		if n < 4 || n > len(attrs) {
			return 0
		}
		if typ == inetDiagSKMemInfo && n >= 4+4*(skMemInfoDrops+1) {
			return binary.NativeEndian.Uint32(attrs[4+4*skMemInfoDrops:])
		}
		attrs = attrs[min((n+3)&^3, len(attrs)):]
	}
	return 0
}
