package ebpfkernel

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
)

// TestCapturedHeads: with capture on, each request a watched worker
// receives and each response it begins give one head, on every hook set,
// on the worker's pid and its connection, in order: a request's bytes
// whole (these are short), a response's first bytes, cut at
// ResponseHeadMax and said to be. A response's later writes and a request's later reads
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
	hr, err := k.Heads()
	if err != nil {
		t.Fatal(err)
	}
	heads := make(chan Head, 256)
	go func() {
		defer close(heads)
		for {
			h, err := hr.Read()
			if err != nil {
				return
			}
			heads <- h
		}
	}()
	defer hr.Close()

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

	// The sessions ran one after another, so their heads come in order;
	// a connection's socket address may be a closed one's again.
	var got []Head
	deadline := time.After(10 * time.Second)
	for len(got) < sessions*reqs*2 {
		select {
		case h := <-heads:
			got = append(got, h)
		case <-deadline:
			t.Fatalf("%d heads of %d captured", len(got), sessions*reqs*2)
		}
	}
	select {
	case h := <-heads:
		t.Fatalf("one head more than two per request: %+v", h)
	case <-time.After(200 * time.Millisecond):
	}
	for s := range sessions {
		hs := got[s*reqs*2 : (s+1)*reqs*2]
		for i := range reqs {
			if hs[2*i].Socket != hs[0].Socket || hs[2*i+1].Socket != hs[0].Socket {
				t.Errorf("session %d, request %d: heads on connections %x and %x, the session's first on %x",
					s, i, hs[2*i].Socket, hs[2*i+1].Socket, hs[0].Socket)
			}
			checkHeadPair(t, hs[0].Socket, i, hs[2*i], hs[2*i+1], size(i))
		}
	}
}

// checkHeadPair checks request i's two heads on connection sk.
func checkHeadPair(t *testing.T, sk uint64, i int, req, resp Head, size int) {
	t.Helper()
	wantReq := fmt.Sprintf("%d 0 0\n", size)
	if req.Response || string(req.Data) != wantReq || req.Truncated() {
		t.Errorf("connection %x, request %d: head %q (response %v, %d of %d bytes), want the request %q",
			sk, i, req.Data, req.Response, len(req.Data), req.Total, wantReq)
	}
	line := fmt.Sprintf("%d %d\n", resp.PID, size)
	total := len(line) + size
	want := min(total, ResponseHeadMax)
	if !resp.Response || resp.PID != req.PID || resp.Total != total || len(resp.Data) != want ||
		!bytes.HasPrefix(resp.Data, []byte(line)) || resp.Truncated() != (total > ResponseHeadMax) {
		t.Errorf("connection %x, request %d: response head of pid %d (request's %d), %d of %d bytes, starting %q; want %d of %d starting %q",
			sk, i, resp.PID, req.PID, len(resp.Data), resp.Total, resp.Data[:min(len(resp.Data), 16)], want, total, line)
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
	for _, id := range pinnedProgramIDs(t, dir) {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		pi, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
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
