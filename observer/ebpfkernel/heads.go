package ebpfkernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/requests"
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

// connResponding is the C file's CONN_RESPONDING: a close's request was
// answered.
const connResponding = 2

// HeadReader reads captured heads as the kernel writes them.
type HeadReader struct{ r *ringbuf.Reader }

// ErrHeadsClosed is returned by Read once the reader is closed: it is
// observer.ErrHeadsClosed, at which an observer.Follower stops.
var ErrHeadsClosed = observer.ErrHeadsClosed

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
func (hr *HeadReader) Read() (requests.Head, error) {
	for {
		hr.r.SetDeadline(time.Now().Add(HeadPoll))
		rec, err := hr.r.Read()
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return requests.Head{}, ErrHeadsClosed
		case err != nil:
			return requests.Head{}, fmt.Errorf("read a captured head: %w", err)
		}
		return decodeHead(rec.RawSample)
	}
}

// Close ends Read, at once.
func (hr *HeadReader) Close() error { return hr.r.Close() }

// decodeHead decodes a struct head (little-endian, as bpf2go builds). The
// C file's enum head_kind is requests.Kind.
func decodeHead(b []byte) (requests.Head, error) {
	if len(b) < headFixed {
		return requests.Head{}, fmt.Errorf("a captured head of %d bytes, shorter than its header", len(b))
	}
	le := binary.LittleEndian
	n := int(le.Uint32(b[32:]))
	if n > HeadMax || headFixed+n > len(b) {
		return requests.Head{}, fmt.Errorf("a captured head claims %d bytes in a record of %d", n, len(b))
	}
	kind := le.Uint32(b[28:])
	if kind > uint32(requests.More) {
		return requests.Head{}, fmt.Errorf("a captured head of kind %d", kind)
	}
	h := requests.Head{
		Conn:     le.Uint64(b[0:]),
		TimeNs:   le.Uint64(b[8:]),
		LastTxNs: le.Uint64(b[16:]),
		PID:      int(le.Uint32(b[24:])),
		Kind:     requests.Kind(kind),
		Data:     append([]byte(nil), b[headFixed:headFixed+n]...),
	}
	total := le.Uint32(b[36:])
	if h.Kind == requests.Close {
		h.Answered = total == connResponding
	} else {
		h.Total = int(total)
		h.Truncated = h.Total > n
	}
	return h, nil
}
