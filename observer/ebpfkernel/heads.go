package ebpfkernel

import (
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/requests"
)

// HeadMax and ResponseHeadMax are how many first bytes of a request and
// of a response are captured (enum capture_size in bpf/lib/types.h): a
// response's status is at its start.
const (
	HeadMax         = int(bpf.ObserverCaptureSizeHEAD_MAX)
	ResponseHeadMax = int(bpf.ObserverCaptureSizeRESPONSE_HEAD_MAX)
)

// headFixed is the size of a struct head before its data: a close's whole
// record.
const headFixed = int(unsafe.Offsetof(bpf.ObserverHead{}.Data))

// headKinds are the records' enum head_kind, as requests.Kind says them.
var headKinds = [...]requests.Kind{
	bpf.ObserverHeadKindHEAD_REQUEST:  requests.Request,
	bpf.ObserverHeadKindHEAD_RESPONSE: requests.Response,
	bpf.ObserverHeadKindHEAD_CLOSE:    requests.Close,
	bpf.ObserverHeadKindHEAD_MORE:     requests.More,
}

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

// decodeHead decodes a struct head record: a request's (HeadMax bytes of
// room), a response's (ResponseHeadMax), or a close's (none). The record
// is in the host's byte order, as bpf.ObserverHead is: it is copied into
// one, zeroed and aligned, whatever the ring's alignment of its bytes.
func decodeHead(b []byte) (requests.Head, error) {
	var rec bpf.ObserverHead
	if len(b) < headFixed || len(b) > int(unsafe.Sizeof(rec)) {
		return requests.Head{}, fmt.Errorf("a captured head of %d bytes, where a record has %d to %d", len(b), headFixed, unsafe.Sizeof(rec))
	}
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&rec)), unsafe.Sizeof(rec)), b)
	n := int(rec.Len)
	if headFixed+n > len(b) {
		return requests.Head{}, fmt.Errorf("a captured head claims %d bytes in a record of %d", n, len(b))
	}
	if rec.Kind >= uint32(len(headKinds)) {
		return requests.Head{}, fmt.Errorf("a captured head of kind %d", rec.Kind)
	}
	h := requests.Head{
		Conn:     rec.Sk,
		TimeNs:   rec.TsNs,
		LastTxNs: rec.LastTxNs,
		PID:      int(rec.Tgid),
		Kind:     headKinds[rec.Kind],
		Data:     append([]byte(nil), rec.Data[:n]...),
	}
	if h.Kind == requests.Close {
		h.Answered = bpf.ObserverConnState(rec.Total) == bpf.ObserverConnStateCONN_RESPONDING
	} else {
		h.Total = int(rec.Total)
		h.Truncated = h.Total > n
	}
	return h, nil
}
