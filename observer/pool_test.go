package observer

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
)

// The pool under test: an in-memory kernel, a master with three workers in
// a fixture procfs, and the helpers every pool test uses.

// fakeKernel is an in-memory Kernel: tests set what the kernel counted and
// read back what the pool asked of it.
type fakeKernel struct {
	mu          sync.Mutex
	watched     bool
	master      Proc
	initial     []Proc
	counters    map[int]Counters
	forgotten   []int
	remembered  []int
	forgetErr   error
	rememberErr error
	readErr     error
	info        ObserverInfo
	slots       map[Proc]int // as KeepSlot kept them
	// torn, when set, rewrites the next read's entries: one pass over a
	// kernel map running while processes fork and exit.
	torn func([]Counters) []Counters
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{
		counters: map[int]Counters{},
		info: ObserverInfo{
			Mode:    "fake",
			Hooks:   "sock",
			Dropped: map[string]uint64{"conns": 3, "workers": 0},
			Programs: []ProgramStats{
				{Name: "sock_accept", RunCount: 10, RunTimeNs: 12345, AvgNs: 1234},
			},
		},
	}
}

// Watch adds the master's current workers with zero counts, as the eBPF
// observer does (keeping any entry the kernel already has).
func (k *fakeKernel) Watch(master Proc, workers []Proc) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.watched, k.master, k.initial = true, master, append([]Proc(nil), workers...)
	for _, w := range workers {
		if _, ok := k.counters[w.PID]; !ok {
			k.counters[w.PID] = Counters{PID: w.PID, Master: master.PID, Start: TicksToNs(w.StartTicks)}
		}
	}
	return nil
}

// Workers returns the entries in descending pid order, so the pool cannot
// rely on the kernel's iteration order.
func (k *fakeKernel) Workers() ([]Counters, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.readErr != nil {
		return nil, k.readErr
	}
	out := make([]Counters, 0, len(k.counters))
	for _, c := range k.counters {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID > out[j].PID })
	if k.torn != nil {
		out, k.torn = k.torn(out), nil
	}
	return out, nil
}

func (k *fakeKernel) Forget(pid int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.forgotten = append(k.forgotten, pid)
	if k.forgetErr != nil {
		return k.forgetErr
	}
	delete(k.counters, pid)
	return nil
}

// Remember keeps an exited worker's entry as its slot's history, as the
// eBPF observer does: its start and exit stay, its counts become h's.
func (k *fakeKernel) Remember(master int, h Counters) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	c, ok := k.counters[h.PID]
	if k.rememberErr != nil {
		return k.rememberErr
	}
	if !ok || !c.Exited {
		return errors.New("no exited entry")
	}
	h.Start, h.Exited, h.ExitNs, h.Master, h.InProgress = c.Start, true, c.ExitNs, master, 0
	k.counters[h.PID] = h
	k.remembered = append(k.remembered, h.PID)
	return nil
}

func (k *fakeKernel) Info() ObserverInfo { return k.info }

func (k *fakeKernel) KeepSlot(p Proc, slot int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.slots == nil {
		k.slots = map[Proc]int{}
	}
	k.slots[p] = slot
	return nil
}

func (k *fakeKernel) KeptSlots() (map[Proc]int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return maps.Clone(k.slots), nil
}

// set stores a worker's counters as the kernel would report them.
func (k *fakeKernel) set(c Counters) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.counters[c.PID] = c
}

// update changes a worker's counters in place.
func (k *fakeKernel) update(pid int, f func(*Counters)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.counters[pid]
	f(&c)
	k.counters[pid] = c
}

func (k *fakeKernel) forgot() []int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]int(nil), k.forgotten...)
}

func (k *fakeKernel) has(pid int) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.counters[pid]
	return ok
}

const testMaster = 4000

// testPool is a master 4000 with three workers forked at ticks 1000 (4001),
// 1234 (4003) and 1500 (4002), listed out of order across two of the
// master's threads.
func testPool(t *testing.T) (*Pool, *fakeKernel) {
	t.Helper()
	fs := newProcfs(t,
		fakeProc{pid: testMaster, ppid: 1, comm: "uwsgi (master)", startTicks: 900, rssPages: 2000, vszPages: 30000,
			uid: 1000, gid: 2000, cwd: "/srv/app",
			tasks: map[int][]int{testMaster: {4003, 4001}, 4010: {4002}}},
		worker(4001, 1000, 1200, 40000),
		worker(4002, 1500, 1300, 41000),
		worker(4003, 1234, 1400, 42000),
	)
	k := newFakeKernel()
	p := &Pool{Target: Target{PID: testMaster}, Proc: fs, Kernel: k, Log: testutil.NewLog(t).Logger}
	if err := p.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return p, k
}

func worker(pid int, startTicks, rssPages, vszPages uint64) fakeProc {
	return fakeProc{pid: pid, ppid: testMaster, comm: "uwsgi (worker)", startTicks: startTicks,
		rssPages: rssPages, vszPages: vszPages, uid: 1000, gid: 2000}
}

func snapshot(t *testing.T, p *Pool) *Stats {
	t.Helper()
	st, err := p.Snapshot(context.Background())
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return st
}

func workerBySlot(t *testing.T, st *Stats, id int) Worker {
	t.Helper()
	for _, w := range st.Workers {
		if w.ID == id {
			return w
		}
	}
	t.Fatalf("no worker with id %d in %+v", id, st.Workers)
	return Worker{}
}

// removeProc takes a process out of a fixture tree: it exited.
func removeProc(t *testing.T, root string, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		if err := os.RemoveAll(filepath.Join(root, strconv.Itoa(pid))); err != nil {
			t.Fatal(err)
		}
	}
}

// writePIDFile writes a pidfile as a server does, dated after the fixture's
// processes started.
func writePIDFile(t *testing.T, path string, pid int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	at := time.Unix(fixtureBtime+1000, 0)
	if err := os.Chtimes(path, at, at); err != nil {
		t.Fatal(err)
	}
}

func refresh(t *testing.T, p *Pool) {
	t.Helper()
	if err := p.Refresh(); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
}

func slotPIDs(st *Stats) (ids, pids []int) {
	for _, w := range st.Workers {
		ids = append(ids, w.ID)
		pids = append(pids, w.PID)
	}
	return ids, pids
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
