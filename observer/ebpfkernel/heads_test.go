package ebpfkernel

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer"
)

// TestKeptHeads: with capture on, on every hook set, the head of a
// request a watched worker is in is kept, and read when asked: its bytes
// whole (these are short), its worker and connection, its start, not
// answered while the worker sleeps on it; answered once its response has
// begun; replaced by the connection's next request; the worker's latest
// after its requests are over. Nothing reaches userspace in between, and
// no head is lost.
func TestKeptHeads(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) { testKeptHeads(t, hooks) })
	}
}

func testKeptHeads(t *testing.T, hooks string) {
	pool := forkpool.Start(t, 2, "")
	k, err := Load(Options{Hooks: hooks, CaptureHeads: true, Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	p := watch(t, k, pool)
	defer k.Unwatch(pool.Master)
	var ts forkpool.Tallies
	for range 3 { // requests over before the test looks
		if err := pool.Session(&ts, 4, func(int) int { return 100 }, 0, 0); err != nil {
			t.Fatal(err)
		}
	}

	c, err := net.Dial("tcp", pool.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	slow := fmt.Sprintf("%d %d 0\n", 100, sleepMS)
	before := monoNs(t)
	io.WriteString(c, slow)
	h := waitInFlight(t, k, slow, false)
	if h.Answered || h.Cut || h.StartNs < before || h.StartNs > monoNs(t) {
		t.Errorf("in flight: %+v; want not answered, whole, begun after %d", h, before)
	}
	if err := forkpool.ReadAnswer(r, &ts, len(slow)); err != nil {
		t.Fatal(err)
	}
	// The programs see the response once its send returns: the client
	// may have read it before.
	if a := waitInFlight(t, k, slow, true); a.PID != h.PID || a.Conn != h.Conn {
		t.Errorf("once answered: %+v; want the same request, answered", a)
	}
	next := "7 0 0\n"
	io.WriteString(c, next)
	if err := forkpool.ReadAnswer(r, &ts, len(next)); err != nil {
		t.Fatal(err)
	}
	if n := waitInFlight(t, k, next, true); n.Conn != h.Conn || n.StartNs <= h.StartNs {
		t.Errorf("the next request on the connection: %+v; want it on %x after %d", n, h.Conn, h.StartNs)
	}
	last, ok, err := k.Latest(h.PID)
	if err != nil || !ok || string(last.Data) != next {
		t.Errorf("worker %d's latest: %+v (found %v, %v); want %q", h.PID, last, ok, err, next)
	}
	c.Close()
	st := settleOn(t, p, &ts)
	noDrops(t, st)
	if n := st.Observer.Dropped["heads_lost"]; n != 0 {
		t.Errorf("%d heads lost", n)
	}
}

// sleepMS is how long the test's slow request keeps its worker.
const sleepMS = 4000

// waitInFlight waits until k keeps want as a head in flight, its response
// begun as answered says, and returns it.
func waitInFlight(t *testing.T, k *Kernel, want string, answered bool) observer.RequestHead {
	t.Helper()
	deadline := time.Now().Add(sleepMS * time.Millisecond / 2)
	for {
		hs, err := k.InFlight()
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs {
			if string(h.Data) == want && h.Answered == answered {
				return h
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no head %q in flight, answered %v: %+v", want, answered, hs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// monoNs is CLOCK_MONOTONIC now, the heads' clock.
func monoNs(t *testing.T) uint64 {
	t.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
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
