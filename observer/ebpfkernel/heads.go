package ebpfkernel

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/requests"
)

// Request capture (Options.CaptureHeads): the programs keep the head of
// each connection's latest request in req_heads (bpf/capture.c), and the
// daemon reads the in-flight ones when a dump asks. Kernel implements
// observer.HeadSource.

// HeadMax is how many first bytes of a request's head the programs keep
// (enum capture_size in bpf/lib/types.h): requests.HeadMax.
const HeadMax = int(bpf.ObserverCaptureSizeHEAD_MAX)

var _ = [1]struct{}{}[HeadMax-requests.HeadMax]

// tableBatch is how many entries a batched read of a table takes.
const tableBatch = 1024

// InFlight implements observer.HeadSource: the heads of the requests the
// watched workers' connections are in, those whose first bytes the
// programs kept (a connection whose request began before the programs
// were attached, or after HEADS_TABLE others, has none).
func (k *Kernel) InFlight() ([]observer.RequestHead, error) {
	var out []observer.RequestHead
	var h bpf.ObserverReqHead
	err := eachEntry(k.objs.Conns, func(sk uint64, c bpf.ObserverConn) {
		if bpf.ObserverConnState(c.State) == bpf.ObserverConnStateCONN_IDLE {
			return
		}
		if k.objs.ReqHeads.Lookup(sk, &h) != nil || h.StartNs != c.ReqStartNs || h.Tgid != c.Owner {
			return
		}
		r := requestHead(sk, &h)
		r.Answered = bpf.ObserverConnState(c.State) == bpf.ObserverConnStateCONN_RESPONDING
		out = append(out, r)
	})
	if err != nil {
		return nil, fmt.Errorf("read the requests in flight: %w", err)
	}
	return out, nil
}

// Latest implements observer.HeadSource: the head kept of the request pid
// began last, found among every connection's (a worker that has exited
// has none left open).
func (k *Kernel) Latest(pid int) (observer.RequestHead, bool, error) {
	var (
		best  observer.RequestHead
		found bool
	)
	err := eachEntry(k.objs.ReqHeads, func(sk uint64, h bpf.ObserverReqHead) {
		if int(h.Tgid) == pid && (!found || h.StartNs > best.StartNs) {
			best, found = requestHead(sk, &h), true
		}
	})
	if err != nil {
		return observer.RequestHead{}, false, fmt.Errorf("read worker %d's last request: %w", pid, err)
	}
	return best, found, nil
}

// requestHead is entry h of connection sk, its bytes copied out and
// bounded by HeadMax whatever its length says.
func requestHead(sk uint64, h *bpf.ObserverReqHead) observer.RequestHead {
	n := min(int(h.Len), HeadMax)
	return observer.RequestHead{PID: int(h.Tgid), Conn: sk, StartNs: h.StartNs,
		Data: append([]byte(nil), h.Data[:n]...), Cut: h.Cut != 0 || int(h.Len) > HeadMax}
}

// eachEntry calls f with each entry of m, read in batches (Linux 5.6+), a
// system call per tableBatch entries, or one by one where the kernel
// cannot batch.
func eachEntry[K, V any](m *ebpf.Map, f func(K, V)) error {
	keys, vals := make([]K, tableBatch), make([]V, tableBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			f(keys[i], vals[i])
		}
		switch {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			return nil // the last batch
		case errors.Is(err, ebpf.ErrNotSupported):
			return eachOne(m, f)
		case err != nil:
			return err
		}
	}
}

// eachOne is eachEntry one entry at a time.
func eachOne[K, V any](m *ebpf.Map, f func(K, V)) error {
	var (
		key K
		val V
	)
	it := m.Iterate()
	for it.Next(&key, &val) {
		f(key, val)
	}
	return it.Err()
}
