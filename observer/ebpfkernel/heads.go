package ebpfkernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// HeadMax and ResponseHeadMax are how many first bytes of a request and
// of a response are captured (the C file's HEAD_MAX, RESPONSE_HEAD_MAX): a
// response's status is at its start.
const (
	HeadMax         = 512
	ResponseHeadMax = 128
)

// headFixed is the size of struct head before its data.
const headFixed = 40

// HeadKind is what a Head says of its connection (the C file's enum
// head_kind).
type HeadKind uint32

const (
	// HeadRequest: a request began, and so the previous one on the
	// connection, answered, is over (its last byte went at LastTxNs).
	HeadRequest HeadKind = 0
	// HeadResponse: the request's response began.
	HeadResponse HeadKind = 1
	// HeadClose: the connection closed in the middle of a request,
	// answered (Answered) or not.
	HeadClose HeadKind = 2
)

// connResponding is the C file's CONN_RESPONDING: a close's request was
// answered.
const connResponding = 2

// Head is the first bytes of a request a watched worker received, or of
// the response it began to send, or a close in the middle of a request,
// as the kernel captured them (Options.CaptureHeads). A connection's heads
// come in the order they happened.
type Head struct {
	Socket   uint64 // the connection: its kernel socket address
	PID      int    // the worker
	Kind     HeadKind
	TimeNs   uint64 // bpf_ktime_get_ns() when the request or response began, or at the close
	LastTxNs uint64 // the connection's last response byte before this head, 0 if none
	Answered bool   // HeadClose: the request's response had begun
	Total    int    // bytes the syscall moved
	Data     []byte // the first of them, at most HeadMax (ResponseHeadMax)
}

// Truncated says the syscall moved more than Data holds: the head may go on.
func (h Head) Truncated() bool { return h.Total > len(h.Data) }

// HeadReader reads captured heads as the kernel writes them.
type HeadReader struct{ r *ringbuf.Reader }

// ErrHeadsClosed is returned by Read once the reader is closed.
var ErrHeadsClosed = errors.New("head reader closed")

// Heads opens a reader of the captured heads. Only one reader should be
// open at a time: each head goes to one of them.
func (k *Kernel) Heads() (*HeadReader, error) {
	r, err := ringbuf.NewReader(k.objs.Heads)
	if err != nil {
		return nil, fmt.Errorf("open the captured heads: %w", err)
	}
	return &HeadReader{r: r}, nil
}

// HeadPoll is how often Read looks for heads: the kernel wakes the
// reader only when its ring is half full, since waking it for each head
// would cost more than capturing it.
const HeadPoll = 20 * time.Millisecond

// Read waits for the next head.
func (hr *HeadReader) Read() (Head, error) {
	for {
		hr.r.SetDeadline(time.Now().Add(HeadPoll))
		rec, err := hr.r.Read()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return Head{}, ErrHeadsClosed
		case err != nil:
			return Head{}, fmt.Errorf("read a captured head: %w", err)
		}
		return decodeHead(rec.RawSample)
	}
}

// Close ends Read, at once.
func (hr *HeadReader) Close() error { return hr.r.Close() }

// decodeHead decodes a struct head (little-endian, as bpf2go builds).
func decodeHead(b []byte) (Head, error) {
	if len(b) < headFixed {
		return Head{}, fmt.Errorf("a captured head of %d bytes, shorter than its header", len(b))
	}
	le := binary.LittleEndian
	n := int(le.Uint32(b[32:]))
	if n > HeadMax || headFixed+n > len(b) {
		return Head{}, fmt.Errorf("a captured head claims %d bytes in a record of %d", n, len(b))
	}
	h := Head{
		Socket:   le.Uint64(b[0:]),
		TimeNs:   le.Uint64(b[8:]),
		LastTxNs: le.Uint64(b[16:]),
		PID:      int(le.Uint32(b[24:])),
		Kind:     HeadKind(le.Uint32(b[28:])),
		Data:     append([]byte(nil), b[headFixed:headFixed+n]...),
	}
	total := le.Uint32(b[36:])
	if h.Kind == HeadClose {
		h.Answered = total == connResponding
	} else {
		h.Total = int(total)
	}
	return h, nil
}
