package ebpfkernel

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer"
)

// TestTransfersTableFull: the syscall hooks' in-flight table is sized by
// MaxTransfers (the raw hooks count at a syscall's exit alone, the sock
// hooks in the socket layer: neither keeps one). While it is full (of
// threads that are not there), a session's sends and receives are counted as untracked and add nothing
// to any worker's requests or bytes; once it has room again, the next
// session is counted exactly and nothing more is untracked.
func TestTransfersTableFull(t *testing.T) {
	testutil.RequireEBPF(t)
	const room = 8
	pool := forkpool.Start(t, 2, "")
	k, err := Load(Options{Hooks: HooksSyscall, MaxTransfers: room, Log: testutil.NewLog(t).Logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Unwatch(pool.Master); k.Close() })
	p := watch(t, k, pool)
	inflight := k.maps["inflight"]
	if n := inflight.MaxEntries(); n != room {
		t.Fatalf("in-flight table of %d entries, asked for %d", n, room)
	}
	before := settleOn(t, p, &forkpool.Tallies{})
	empty := fillTable(t, inflight, room)

	var lost forkpool.Tallies
	if err := pool.Session(&lost, 5, func(int) int { return 300 }, 0, 0); err != nil {
		t.Fatal(err)
	}
	full := waitFor(t, p, "the session's transfers untracked", func(st *observer.Stats) error {
		// A read and a write per request at least; and the worker's
		// read of the end and its close done (on 6.12 that read came
		// after the first dump that showed the rest).
		if accepted, closed, _, _, _ := sums(st); closed != accepted {
			return fmt.Errorf("%d of %d connections closed", closed, accepted)
		}
		if n := st.Observer.Dropped["transfers_untracked"]; n < 10 {
			return fmt.Errorf("transfers_untracked %d, want 10 or more", n)
		}
		return nil
	})
	t.Logf("a table of %d full: %d transfers of a 5-request session untracked", room, full.Observer.Dropped["transfers_untracked"])
	_, _, requests, tx, rx := sums(full)
	if _, _, r0, tx0, rx0 := sums(before); requests != r0 || tx != tx0 || rx != rx0 {
		t.Errorf("with the table full: requests %d, tx %d, rx %d; before it %d, %d, %d", requests, tx, rx, r0, tx0, rx0)
	}

	empty()
	var next forkpool.Tallies
	if err := pool.Session(&next, 5, func(int) int { return 300 }, 0, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(t, p, "the session after the table has room", func(st *observer.Stats) error {
		if n, m := st.Observer.Dropped["transfers_untracked"], full.Observer.Dropped["transfers_untracked"]; n != m {
			return fmt.Errorf("%d more transfers untracked", n-m)
		}
		return agreeSince(full, st, &next)
	})
}

// fillTable fills hash map m with n entries whose keys no thread has
// (tgid and tid above any pid), and returns what empties it again.
func fillTable(t *testing.T, m *ebpf.Map, n int) func() {
	t.Helper()
	value := make([]byte, m.ValueSize())
	keys := make([][]byte, n)
	for i := range keys {
		keys[i] = binary.NativeEndian.AppendUint64(nil, 0xffffffff_00000000|uint64(i))
		if err := m.Update(keys[i], value, ebpf.UpdateNoExist); err != nil {
			t.Fatalf("fill entry %d of %d: %v", i, n, err)
		}
	}
	empty := func() {
		for _, k := range keys {
			m.Delete(k)
		}
	}
	t.Cleanup(empty)
	return empty
}

// TestSizesOutOfRange: each size the kernel side cannot take is refused
// at load with its range, before anything is loaded.
func TestSizesOutOfRange(t *testing.T) {
	for _, o := range []Options{
		{MaxConnections: MaxConnectionsLimit + 1},
		{MaxWorkers: 1},
		{MaxTransfers: -1},
		{MaxTransfers: MaxTransfersLimit + 1},
	} {
		if err := checkSizes(o); err == nil {
			t.Errorf("%+v taken", o)
		}
	}
	if err := checkSizes(Options{MaxTransfers: 1, MaxWorkers: 2, MaxConnections: 1}); err != nil {
		t.Errorf("the least sizes refused: %v", err)
	}
}
