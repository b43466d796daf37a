package ebpfkernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer/requests"
)

// TestCapturedHeads: with capture on, each request a watched worker
// receives and each response it begins give one head, and a connection
// closed with a request on it one more, on every hook set, on the
// worker's pid and its connection, in order: a request's bytes whole
// (these are short), a response's first bytes, cut at ResponseHeadMax and
// said to be, each request saying when the one before it was last
// answered. A response's later writes and a request's later reads
// capture nothing.
func TestCapturedHeads(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) { testCapturedHeads(t, hooks) })
	}
}

func testCapturedHeads(t *testing.T, hooks string) {
	pool := forkpool.Start(t, 2, "")
	k, err := Load(Options{Hooks: hooks, CaptureHeads: true, Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	p := watch(t, k, pool)
	defer k.Unwatch(pool.Master)
	heads := readHeads(t, k)

	size := func(i int) int { return []int{100, 2000, 0}[i%3] }
	const sessions, reqs = 3, 6
	var ts forkpool.Tallies
	for range sessions {
		if err := pool.Session(&ts, reqs, size, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	st := settleOn(t, p, &ts)
	noDrops(t, st)

	// A connection's heads come in order; its socket address may be a
	// closed one's again, but only after that one's close.
	const perSession = 2*reqs + 1
	bySocket := map[uint64][]requests.Head{}
	deadline := time.After(10 * time.Second)
	for n := 0; n < sessions*perSession; n++ {
		select {
		case h := <-heads:
			bySocket[h.Conn] = append(bySocket[h.Conn], h)
		case <-deadline:
			t.Fatalf("%d heads of %d captured", n, sessions*perSession)
		}
	}
	select {
	case h := <-heads:
		t.Fatalf("a head more than two per request and one per close: %+v", h)
	case <-time.After(200 * time.Millisecond):
	}
	seen := 0
	for sk, hs := range bySocket {
		for len(hs) > 0 {
			if len(hs) < perSession {
				t.Fatalf("connection %x: %d heads left, a session has %d", sk, len(hs), perSession)
			}
			checkSession(t, sk, hs[:perSession], size)
			hs = hs[perSession:]
			seen++
		}
	}
	if seen != sessions {
		t.Errorf("heads of %d sessions, want %d", seen, sessions)
	}

	// Followed by a tracker, every request ended answered, with no
	// status to read (this pool's protocol is none of proto's).
	var tr requests.Tracker
	var ended uint64
	for _, hs := range bySocket {
		for _, h := range hs {
			tr.Add(h)
		}
	}
	for pid, tally := range ts.ByPID() {
		w := tr.Worker(pid)
		ended += w.Ended[requests.StatusOther]
		if w.Ended[requests.StatusOther] != tally.Requests || w.Durations.Count != tally.Requests || len(w.InFlight) != 0 {
			t.Errorf("pid %d: tracker ended %v with %d durations, %d in flight; the clients had %d requests answered",
				pid, w.Ended, w.Durations.Count, len(w.InFlight), tally.Requests)
		}
	}
	if ended != sessions*reqs {
		t.Errorf("tracker ended %d requests, want %d", ended, sessions*reqs)
	}
}

// readHeads reads k's heads into a channel until t ends.
func readHeads(t *testing.T, k *Kernel) <-chan requests.Head {
	hr, err := k.Heads()
	if err != nil {
		t.Fatal(err)
	}
	heads := make(chan requests.Head, 256)
	go func() {
		for {
			h, err := hr.Read()
			if err != nil {
				return
			}
			heads <- h
		}
	}()
	t.Cleanup(func() { hr.Close() })
	return heads
}

// checkSession checks one session's heads on connection sk: its requests'
// and responses', then the close after its last answer.
func checkSession(t *testing.T, sk uint64, hs []requests.Head, size func(int) int) {
	t.Helper()
	var lastTx uint64
	for i := range (len(hs) - 1) / 2 {
		req, resp := hs[2*i], hs[2*i+1]
		checkHeadPair(t, sk, i, req, resp, size(i))
		if i > 0 && (req.LastTxNs < hs[2*i-1].TimeNs || req.LastTxNs > req.TimeNs) {
			t.Errorf("connection %x, request %d: the one before was last answered at %d, its response began at %d, this one at %d",
				sk, i, req.LastTxNs, hs[2*i-1].TimeNs, req.TimeNs)
		}
		lastTx = resp.TimeNs
	}
	c := hs[len(hs)-1]
	if c.Kind != requests.Close || !c.Answered || c.PID != hs[0].PID || c.LastTxNs < lastTx || c.TimeNs < c.LastTxNs || len(c.Data) != 0 {
		t.Errorf("connection %x: last head %+v, want an answered close by pid %d after %d", sk, c, hs[0].PID, lastTx)
	}
}

// checkHeadPair checks request i's two heads on connection sk.
func checkHeadPair(t *testing.T, sk uint64, i int, req, resp requests.Head, size int) {
	t.Helper()
	wantReq := fmt.Sprintf("%d 0 0\n", size)
	if req.Kind != requests.Request || string(req.Data) != wantReq || req.Truncated {
		t.Errorf("connection %x, request %d: head %q (kind %d, %d of %d bytes), want the request %q",
			sk, i, req.Data, req.Kind, len(req.Data), req.Total, wantReq)
	}
	line := fmt.Sprintf("%d %d\n", resp.PID, size)
	total := len(line) + size
	want := min(total, ResponseHeadMax)
	if resp.Kind != requests.Response || resp.PID != req.PID || resp.Total != total || len(resp.Data) != want ||
		!bytes.HasPrefix(resp.Data, []byte(line)) || resp.Truncated != (total > ResponseHeadMax) {
		t.Errorf("connection %x, request %d: response head (kind %d) of pid %d (request's %d), %d of %d bytes, starting %q; want %d of %d starting %q",
			sk, i, resp.Kind, resp.PID, req.PID, len(resp.Data), resp.Total, resp.Data[:min(len(resp.Data), 16)], want, total, line)
	}
	if resp.TimeNs < req.TimeNs {
		t.Errorf("connection %x, request %d: response captured before its request", sk, i)
	}
}

// TestPinnedProgramsFollowCapture: a daemon started with capture on, over
// the pins of one that ran without it, does not keep the pinned programs
// that do not capture: they have the same instructions but other
// constants, and every program left running has ours.
func TestPinnedProgramsFollowCapture(t *testing.T) {
	testutil.RequireEBPF(t)
	hooks := pinnable(t)
	dir := testPinPath(t)
	if err := loadPinned(t, hooks, dir, nil).Close(); err != nil {
		t.Fatal(err)
	}
	k, err := Load(Options{Hooks: hooks, PinPath: dir, CaptureHeads: true, Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	mapIDs, err := k.mapIDs()
	if err != nil {
		t.Fatal(err)
	}
	withConsts := 0
	for id, pi := range pinnedPrograms(t, dir) {
		ids, _ := pi.MapIDs()
		for _, m := range ids {
			if mapIDs[m] {
				continue
			}
			if !sameConstants(m, k.consts) {
				t.Errorf("pinned program %d (%s) runs with map %d: neither ours nor our constants", id, pi.Name, m)
			}
			withConsts++
		}
	}
	if withConsts == 0 {
		t.Errorf("no pinned program of the %s hooks reads the capture constant", hooks)
	}
}

// record is the ring's bytes of rec with room for data bytes of data.
func record(rec bpf.ObserverHead, data int) []byte {
	b := unsafe.Slice((*byte)(unsafe.Pointer(&rec)), unsafe.Sizeof(rec))
	return bytes.Clone(b[:headFixed+data])
}

// TestDecodeHead: a record of each kind, as long as the kernel makes it,
// decodes to what it holds.
func TestDecodeHead(t *testing.T) {
	fixed := bpf.ObserverHead{Sk: 0xffff8880deadbeef, TsNs: 200, LastTxNs: 100, Tgid: 4242}
	with := func(kind bpf.ObserverHeadKind, data string, total uint32) bpf.ObserverHead {
		rec := fixed
		rec.Kind, rec.Len, rec.Total = uint32(kind), uint32(len(data)), total
		copy(rec.Data[:], data)
		return rec
	}
	long := strings.Repeat("x", HeadMax)
	for _, c := range []struct {
		name string
		rec  []byte
		want requests.Head
	}{
		{"request", record(with(bpf.ObserverHeadKindHEAD_REQUEST, "GET / HTTP/1.1\r\n", 16), HeadMax),
			requests.Head{Kind: requests.Request, Data: []byte("GET / HTTP/1.1\r\n"), Total: 16}},
		{"request cut short", record(with(bpf.ObserverHeadKindHEAD_REQUEST, long, 9000), HeadMax),
			requests.Head{Kind: requests.Request, Data: []byte(long), Total: 9000, Truncated: true}},
		{"response", record(with(bpf.ObserverHeadKindHEAD_RESPONSE, long[:ResponseHeadMax], 2000), ResponseHeadMax),
			requests.Head{Kind: requests.Response, Data: []byte(long[:ResponseHeadMax]), Total: 2000, Truncated: true}},
		{"more", record(with(bpf.ObserverHeadKindHEAD_MORE, "\x01\x04", 2), HeadMax),
			requests.Head{Kind: requests.More, Data: []byte("\x01\x04"), Total: 2}},
		{"answered close", record(with(bpf.ObserverHeadKindHEAD_CLOSE, "", uint32(bpf.ObserverConnStateCONN_RESPONDING)), 0),
			requests.Head{Kind: requests.Close, Answered: true}},
		{"unanswered close", record(with(bpf.ObserverHeadKindHEAD_CLOSE, "", uint32(bpf.ObserverConnStateCONN_RECEIVING)), 0),
			requests.Head{Kind: requests.Close}},
	} {
		c.want.Conn, c.want.TimeNs, c.want.LastTxNs, c.want.PID = fixed.Sk, fixed.TsNs, fixed.LastTxNs, int(fixed.Tgid)
		got, err := decodeHead(c.rec)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if len(got.Data) == 0 {
			got.Data = nil // a close's, empty
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: decoded %+v, want %+v", c.name, got, c.want)
		}
	}
}

// TestDecodeBadHead: a record shorter than a head's header, longer than a
// head, claiming more data than it holds, or of no kind is an error, and
// no bytes make decodeHead panic.
func TestDecodeBadHead(t *testing.T) {
	ok := bpf.ObserverHead{Len: 10, Total: 10}
	claims := ok
	claims.Len = uint32(ResponseHeadMax + 1)
	kindless := ok
	kindless.Kind = uint32(len(headKinds))
	for name, b := range map[string][]byte{
		"empty":               nil,
		"short":               record(ok, 0)[:headFixed-1],
		"oversized":           append(record(ok, HeadMax), 0),
		"claims more":         record(claims, ResponseHeadMax),
		"claims a whole ring": record(bpf.ObserverHead{Len: 1 << 20}, HeadMax),
		"of no kind":          record(kindless, 10),
	} {
		if h, err := decodeHead(b); err == nil {
			t.Errorf("%s (%d bytes): decoded %+v, want an error", name, len(b), h)
		}
	}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		b := make([]byte, rnd.IntN(headFixed+HeadMax+16))
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		if lenAt := int(unsafe.Offsetof(ok.Len)); len(b) >= lenAt+4 && rnd.IntN(2) == 0 {
			binary.NativeEndian.PutUint32(b[lenAt:], uint32(rnd.IntN(len(b)+1)))
		}
		decodeHead(b) // must not panic
	}
}
