package observer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer/requests"
)

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

func TestPoolStartWatchesChildrenInStartOrder(t *testing.T) {
	p, k := testPool(t)
	if !k.watched {
		t.Fatal("Start did not ask the kernel to watch the master")
	}
	if want := (Proc{PID: testMaster, StartTicks: 900}); k.master != want {
		t.Errorf("watched master %+v, want %+v", k.master, want)
	}
	wantKids := []Proc{{4001, 1000}, {4003, 1234}, {4002, 1500}}
	if !reflect.DeepEqual(k.initial, wantKids) {
		t.Errorf("watched workers %v, want %v", k.initial, wantKids)
	}

	st := snapshot(t, p)
	var got []int
	for _, w := range st.Workers {
		got = append(got, w.ID, w.PID)
	}
	if want := []int{1, 4001, 2, 4003, 3, 4002}; !reflect.DeepEqual(got, want) {
		t.Errorf("(id, pid) pairs = %v, want %v", got, want)
	}
}

func TestPoolStartMissingMaster(t *testing.T) {
	p := &Pool{Target: Target{PID: 4242}, Proc: newProcfs(t), Kernel: newFakeKernel(), Log: testutil.NewLog(t).Logger}
	if err := p.Start(context.Background()); !errors.Is(err, ErrNoTarget) {
		t.Fatalf("Start with a missing master: err = %v, want ErrNoTarget", err)
	}
}

func TestPoolSnapshotSchema(t *testing.T) {
	p, k := testPool(t)
	k.set(Counters{PID: 4001, Master: testMaster, Start: TicksToNs(1000),
		Accepts: 12, Requests: 10, Closes: 11, RX: 7000, TX: 50000,
		RunNs: 2_500_000, AvgRTNs: 123_456, InProgress: 1})
	k.set(Counters{PID: 4003, Master: testMaster, Start: TicksToNs(1234),
		Accepts: 3, Requests: 3, Closes: 3, RX: 900, TX: 3000,
		RunNs: 999_999, AvgRTNs: 5_000})
	st := snapshot(t, p)

	if st.Version != Version {
		t.Errorf("version = %q, want %q", st.Version, Version)
	}
	if st.PID != testMaster || st.UID != 1000 || st.GID != 2000 || st.CWD != "/srv/app" {
		t.Errorf("master pid/uid/gid/cwd = %d/%d/%d/%q, want %d/1000/2000/\"/srv/app\"", st.PID, st.UID, st.GID, st.CWD, testMaster)
	}
	if st.Load != 1 {
		t.Errorf("load = %d, want 1 (one busy worker)", st.Load)
	}
	wantInfo := k.info
	wantInfo.Target = "pid 4000"
	if !reflect.DeepEqual(st.Observer, wantInfo) {
		t.Errorf("observer = %+v, want the kernel's Info with the target %+v", st.Observer, wantInfo)
	}
	if len(st.Workers) != 3 {
		t.Fatalf("%d workers, want 3", len(st.Workers))
	}

	page := uint64(os.Getpagesize())
	tests := []struct {
		id, pid            int
		requests, tx, rx   uint64
		accepted, closed   uint64
		runningUs, avgRTUs uint64
		status             string
		inRequest          int
		rssPages, vszPages uint64
		startTicks         uint64
	}{
		{1, 4001, 10, 50000, 7000, 12, 11, 2500, 123, "busy", 1, 1200, 40000, 1000},
		{2, 4003, 3, 3000, 900, 3, 3, 999, 5, "idle", 0, 1400, 42000, 1234},
		{3, 4002, 0, 0, 0, 0, 0, 0, 0, "idle", 0, 1300, 41000, 1500},
	}
	first := workerBySlot(t, st, 1)
	for _, tt := range tests {
		w := workerBySlot(t, st, tt.id)
		check := func(name string, got, want any) {
			t.Helper()
			if got != want {
				t.Errorf("worker %d: %s = %v, want %v", tt.id, name, got, want)
			}
		}
		check("pid", w.PID, tt.pid)
		check("requests", w.Requests, tt.requests)
		check("delta_requests", w.DeltaRequests, tt.requests)
		check("tx", w.TX, tt.tx)
		check("rx", w.RX, tt.rx)
		check("accepted", w.Accepted, tt.accepted)
		check("closed", w.Closed, tt.closed)
		check("running_time", w.RunningTime, tt.runningUs)
		check("avg_rt", w.AvgRT, tt.avgRTUs)
		check("status", w.Status, tt.status)
		check("accepting", w.Accepting, 1)
		check("respawn_count", w.RespawnCount, uint64(1))
		check("rss", w.RSS, tt.rssPages*page)
		check("vsz", w.VSZ, tt.vszPages*page)
		// last_spawn is boot time + start/100; the boot time itself is
		// checked by TestPoolLastSpawnIsBtimePlusStart.
		check("last_spawn - slot 1's", w.LastSpawn-first.LastSpawn, int64(tt.startTicks/100)-int64(1000/100))
		if len(w.Apps) != 1 {
			t.Errorf("worker %d: %d apps, want 1", tt.id, len(w.Apps))
		} else {
			check("apps[0].requests", w.Apps[0].Requests, tt.requests)
		}
		if len(w.Cores) != 1 {
			t.Errorf("worker %d: %d cores, want 1", tt.id, len(w.Cores))
		} else {
			check("cores[0].requests", w.Cores[0].Requests, tt.requests)
			check("cores[0].in_request", w.Cores[0].InRequest, tt.inRequest)
		}
	}

	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	js := string(b)
	for _, tt := range []struct {
		text string
		n    int
	}{
		{`"vars":[]`, 3},     // one per core
		{`"req_info":{}`, 3}, // one per core
		{`"locks":[{"snapshot":0}]`, 1},
		{`"sockets":[]`, 1},
		{"null", 0},
	} {
		if n := strings.Count(js, tt.text); n != tt.n {
			t.Errorf("JSON has %s %d times, want %d: %s", tt.text, n, tt.n, js)
		}
	}
}

func TestPoolLastSpawnIsBtimePlusStart(t *testing.T) {
	p, _ := testPool(t)
	st := snapshot(t, p)
	for _, tt := range []struct {
		id    int
		ticks int64
	}{{1, 1000}, {2, 1234}, {3, 1500}} {
		if got, want := workerBySlot(t, st, tt.id).LastSpawn, fixtureBtime+tt.ticks/100; got != want {
			t.Errorf("worker %d: last_spawn = %d, want btime + %d/100 = %d", tt.id, got, tt.ticks, want)
		}
	}
}

func TestPoolRespawnKeepsSlot(t *testing.T) {
	p, k := testPool(t)
	k.update(4001, func(c *Counters) {
		c.Requests, c.TX, c.RX, c.RunNs, c.Accepts, c.Closes = 10, 1000, 100, 4_000_000, 10, 10
	})
	k.update(4003, func(c *Counters) { c.Requests, c.TX = 7, 700 })
	before := snapshot(t, p)

	// 4001 served two more requests and exited; the master respawned it
	// as 4007.
	// Three requests it received it never answered (say it died in one).
	k.update(4001, func(c *Counters) {
		c.Requests, c.TX, c.RX, c.RunNs, c.Accepts, c.Closes = 12, 1200, 120, 5_000_000, 12, 12
		c.Unanswered, c.Exited = 3, true
	})
	addProc(t, p.Proc.Root, worker(4007, 9000, 1100, 39000))
	k.set(Counters{PID: 4007, Master: testMaster, Start: TicksToNs(9000),
		Requests: 5, Unanswered: 1, TX: 300, RX: 50, RunNs: 1_000_000, Accepts: 5, Closes: 4, InProgress: 1})

	for _, round := range []string{"after respawn", "next snapshot"} {
		st := snapshot(t, p)
		if len(st.Workers) != 3 {
			t.Fatalf("%s: %d workers, want 3 (the new process reuses slot 1)", round, len(st.Workers))
		}
		w := workerBySlot(t, st, 1)
		// Unanswered requests are requests, and exceptions.
		got := []any{w.PID, w.RespawnCount, w.Requests, w.DeltaRequests, w.Exceptions, w.TX, w.RX, w.RunningTime, w.Accepted, w.Closed, w.Status, w.Accepting,
			w.Apps[0].Requests, w.Apps[0].Exceptions, w.Cores[0].Requests, w.RSS}
		want := []any{4007, uint64(2), uint64(21), uint64(6), uint64(4), uint64(1500), uint64(170), uint64(6000), uint64(17), uint64(16), "busy", 1,
			uint64(21), uint64(4), uint64(21), 1100 * uint64(os.Getpagesize())}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: slot 1 [pid respawn_count requests delta_requests exceptions tx rx running_time accepted closed status accepting apps apps.exceptions cores rss]\n got %v\nwant %v",
				round, got, want)
		}
		if d := w.LastSpawn - workerBySlot(t, before, 1).LastSpawn; d != (9000-1000)/100 {
			t.Errorf("%s: last_spawn moved by %d s, want %d (the new process's start)", round, d, (9000-1000)/100)
		}
		if o := workerBySlot(t, st, 2); o.PID != 4003 || o.RespawnCount != 1 || o.Requests != 7 {
			t.Errorf("%s: slot 2 = pid %d respawn_count %d requests %d, want 4003 1 7 (untouched)", round, o.PID, o.RespawnCount, o.Requests)
		}
		if st.Load != 1 {
			t.Errorf("%s: load = %d, want 1", round, st.Load)
		}
	}
	// 4001's entry stays in the kernel as slot 1's history (for a daemon
	// restarted on pinned maps): the slot's sums before 4007, one process.
	if got := k.forgot(); len(got) != 0 {
		t.Errorf("kernel asked to forget %v, want nothing", got)
	}
	k.mu.Lock()
	h := k.counters[4001]
	k.mu.Unlock()
	if !h.Exited || h.Spawns != 1 || h.Requests != 12 || h.Unanswered != 3 || h.TX != 1200 || h.Closes != 12 {
		t.Errorf("4001's entry = %+v, want slot 1's history: spawns 1, requests 12, unanswered 3, tx 1200", h)
	}
}

// fakeFollower is a RequestFollower that answers what tests set, by pid,
// and forgets as the tracker does.
type fakeFollower struct {
	mu        sync.Mutex
	serving   map[int][]Serving
	last      map[int][]string
	summaries map[int]requests.Summary
	forgotten []int
}

func newFakeFollower() *fakeFollower {
	return &fakeFollower{serving: map[int][]Serving{}, last: map[int][]string{}, summaries: map[int]requests.Summary{}}
}

func (f *fakeFollower) Serving(pid int) []Serving {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.serving[pid]
}

func (f *fakeFollower) LastRequest(pid int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last[pid]
}

func (f *fakeFollower) Summary(pid int) requests.Summary {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.summaries[pid]
}

func (f *fakeFollower) Forget(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.forgotten = append(f.forgotten, pid)
	delete(f.serving, pid)
	delete(f.last, pid)
	delete(f.summaries, pid)
}

// set stores how pid's followed requests ended.
func (f *fakeFollower) set(pid int, s requests.Summary) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.summaries[pid] = s
}

// forgot returns the pids Forget was called for, each once, in order.
func (f *fakeFollower) forgot() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int
	for _, pid := range f.forgotten {
		if !slices.Contains(out, pid) {
			out = append(out, pid)
		}
	}
	return out
}

// TestPoolShowsFollowedRequests: with request capture, a slot shows its
// requests by status class and their durations, as the follower saw them,
// summed across the processes it had; its exceptions are the 5xx answers
// and the requests never answered, the latter as the kernel counted them.
// An exited process is forgotten by the follower once its slot holds its
// counts, and its slot's history entry adds nothing of its own after.
func TestPoolShowsFollowedRequests(t *testing.T) {
	p, k := testPool(t)
	if w := workerBySlot(t, snapshot(t, p), 1); w.Statuses != nil || w.Durations != nil {
		t.Fatalf("without capture: statuses %+v durations %+v, want neither", w.Statuses, w.Durations)
	}
	f := newFakeFollower()
	p.Follower = f
	followed := func(s2xx, s5xx uint64, ms ...uint64) requests.Summary {
		var s requests.Summary
		s.Ended[requests.Status2xx], s.Ended[requests.Status5xx] = s2xx, s5xx
		for _, d := range ms {
			s.Durations.Observe(d * 1e6)
		}
		return s
	}
	k.update(4001, func(c *Counters) { c.Requests, c.Unanswered, c.Exited = 6, 1, true })
	f.set(4001, followed(5, 1, 3, 3, 3, 3, 3, 700))
	addProc(t, p.Proc.Root, worker(4007, 9000, 1100, 39000))
	k.set(Counters{PID: 4007, Master: testMaster, Start: TicksToNs(9000), Requests: 2, Unanswered: 2})
	f.set(4007, followed(2, 0, 40, 40))
	for _, round := range []string{"after the respawn", "next snapshot"} {
		w := workerBySlot(t, snapshot(t, p), 1)
		want := Statuses{S2xx: 7, S5xx: 1, Unanswered: 3}
		if w.Statuses == nil || *w.Statuses != want || w.Exceptions != 4 || w.Apps[0].Exceptions != 4 || w.Requests != 11 {
			t.Errorf("%s: slot 1: statuses %+v exceptions %d (app %d) requests %d; want %+v, 4 exceptions, 11 requests",
				round, w.Statuses, w.Exceptions, w.Apps[0].Exceptions, w.Requests, want)
		}
		d := w.Durations
		// 5 of 3 ms (≤ 5 ms), 2 of 40 ms (≤ 50 ms), 1 of 700 ms (≤ 1 s).
		wantCounts := make([]uint64, len(requests.Bounds)+1)
		wantCounts[0], wantCounts[3], wantCounts[7] = 5, 2, 1
		if d == nil || d.Count != 8 || d.SumUs != 795_000 || !reflect.DeepEqual(d.Counts, wantCounts) || len(d.BoundsUs) != len(requests.Bounds) || d.BoundsUs[0] != 5000 {
			t.Errorf("%s: slot 1's durations %+v, want 8 requests, 795 ms, counts %v", round, d, wantCounts)
		}
		if got := f.forgot(); !slices.Equal(got, []int{4001}) {
			t.Errorf("%s: follower asked to forget %v, want [4001] (folded into slot 1)", round, got)
		}
	}
	if w := workerBySlot(t, snapshot(t, p), 2); w.Statuses == nil || *w.Statuses != (Statuses{}) || w.Durations == nil || w.Durations.Count != 0 {
		t.Errorf("slot 2, no request followed: statuses %+v durations %+v, want both there and 0", w.Statuses, w.Durations)
	}
}

// TestPoolFollowerForgetsWhatTheKernelDoes: every exited process the pool
// folds is forgotten by the follower, whether its entry becomes its slot's
// history or is dropped (the history it replaced, or one the kernel could
// not keep); a live worker never is.
func TestPoolFollowerForgetsWhatTheKernelDoes(t *testing.T) {
	p, k := testPool(t)
	f := newFakeFollower()
	p.Follower = f
	k.update(4001, func(c *Counters) { c.Exited = true })
	addProc(t, p.Proc.Root, worker(4007, 9000, 1000, 40000))
	k.set(Counters{PID: 4007, Master: testMaster, Start: TicksToNs(9000)})
	snapshot(t, p)
	k.update(4007, func(c *Counters) { c.Exited = true })
	snapshot(t, p)
	k.rememberErr = errors.New("map busy")
	k.update(4003, func(c *Counters) { c.Exited = true })
	snapshot(t, p)
	// 4001 became slot 1's history, then 4007 did and 4001's entry went;
	// 4003's could not be kept.
	if got, want := f.forgot(), []int{4001, 4007, 4003}; !slices.Equal(got, want) {
		t.Errorf("follower asked to forget %v, want %v", got, want)
	}
	if got, want := k.forgot(), []int{4001, 4003}; !slices.Equal(got, want) {
		t.Errorf("kernel asked to forget %v, want %v", got, want)
	}
}

// TestPoolLastExitNamesItsRequest: a worker that died in a request says
// which, as the follower last saw it begin; one that died between
// requests says none.
func TestPoolLastExitNamesItsRequest(t *testing.T) {
	p, k := testPool(t)
	f := newFakeFollower()
	f.last[4001] = []string{"REQUEST_METHOD=POST", "REQUEST_URI=/slow?x=1", "HTTP_HOST=app"}
	f.last[4003] = []string{"REQUEST_METHOD=GET", "REQUEST_URI=/done"}
	p.Follower = f
	k.update(4001, func(c *Counters) {
		c.Exited, c.ExitStatus, c.KillSig, c.Killer, c.ExitedInRequest = true, 9, 9, testMaster, true
	})
	k.update(4003, func(c *Counters) { c.Exited = true })
	st := snapshot(t, p)
	if e := workerBySlot(t, st, 1).LastExit; e == nil || e.Request != "POST /slow?x=1" || e.InRequest != 1 {
		t.Errorf("slot 1's last_exit %+v, want in_request 1 and request \"POST /slow?x=1\"", e)
	}
	if e := workerBySlot(t, st, 2).LastExit; e == nil || e.Request != "" || e.InRequest != 0 {
		t.Errorf("slot 2's last_exit %+v, want no request: it exited between two", e)
	}
}

// TestPoolShowsServingAsCores: a worker in requests shows one core per
// request, busy, with its vars and start in unix seconds (none when the
// start is unknown, rather than 1970), and a head longer than the capture
// marked; its requests stay on the first core, and each core is load.
func TestPoolShowsServingAsCores(t *testing.T) {
	p, k := testPool(t)
	k.update(4001, func(c *Counters) { c.Requests = 9 })
	start := time.Unix(1_796_000_000, 0)
	f := newFakeFollower()
	f.serving[4001] = []Serving{
		{Vars: []string{"REQUEST_METHOD=GET", "REQUEST_URI=/a"}, Start: start},
		{Vars: []string{"REQUEST_METHOD=POST"}, Truncated: true},
	}
	p.Follower = f
	st := snapshot(t, p)
	w := workerBySlot(t, st, 1)
	if w.Status != "busy" || len(w.Cores) != 2 {
		t.Fatalf("slot 1: status %q, %d cores; want busy with 2", w.Status, len(w.Cores))
	}
	a, b := w.Cores[0], w.Cores[1]
	if a.InRequest != 1 || a.Requests != 9 || !slices.Equal(a.Vars, []string{"REQUEST_METHOD=GET", "REQUEST_URI=/a"}) ||
		a.ReqInfo["request_start"] != start.Unix() || a.ReqInfo["head_truncated"] != nil {
		t.Errorf("first core %+v", a)
	}
	if b.ID != 1 || b.InRequest != 1 || b.ReqInfo["request_start"] != nil || b.ReqInfo["head_truncated"] != 1 {
		t.Errorf("second core %+v, want no request_start and head_truncated 1", b)
	}
	if st.Load != 2 {
		t.Errorf("load %d, want 2", st.Load)
	}
}

func TestPoolWorkerForkedAndExitedBetweenSnapshots(t *testing.T) {
	p, k := testPool(t)
	snapshot(t, p)

	// The master forked 4009, which served 3 requests and exited before the
	// next read.
	k.set(Counters{PID: 4009, Master: testMaster, Start: TicksToNs(5000), Exited: true,
		Requests: 3, TX: 900, RX: 80, RunNs: 3_000_000, AvgRTNs: 1_000_000, Accepts: 3, Closes: 3})

	for _, round := range []string{"first seen", "next snapshot"} {
		st := snapshot(t, p)
		if len(st.Workers) != 4 {
			t.Fatalf("%s: %d workers, want 4 (the short-lived worker holds a slot)", round, len(st.Workers))
		}
		w := workerBySlot(t, st, 4)
		got := []any{w.PID, w.Requests, w.DeltaRequests, w.TX, w.RX, w.RunningTime, w.AvgRT, w.RespawnCount, w.Status, w.Accepting, w.Cores[0].InRequest, w.RSS, w.VSZ}
		// Its slot has no process now: uWSGI shows such a slot as pid 0,
		// "cheap".
		want := []any{0, uint64(3), uint64(0), uint64(900), uint64(80), uint64(3000), uint64(1000), uint64(1), "cheap", 0, 0, uint64(0), uint64(0)}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: slot 4 [pid requests delta_requests tx rx running_time avg_rt respawn_count status accepting in_request rss vsz]\n got %v\nwant %v",
				round, got, want)
		}
	}
	if got := k.forgot(); len(got) != 0 || !reflect.DeepEqual(k.remembered, []int{4009}) {
		t.Errorf("kernel asked to forget %v and keep as history %v, want nothing and [4009]", got, k.remembered)
	}

	// The next worker the master spawns takes the free slot.
	addProc(t, p.Proc.Root, worker(4011, 6000, 1000, 40000))
	k.set(Counters{PID: 4011, Master: testMaster, Start: TicksToNs(6000), Requests: 2, TX: 100})
	st := snapshot(t, p)
	if len(st.Workers) != 4 {
		t.Fatalf("%d workers, want 4", len(st.Workers))
	}
	w := workerBySlot(t, st, 4)
	if w.PID != 4011 || w.RespawnCount != 2 || w.Requests != 5 || w.DeltaRequests != 2 || w.TX != 1000 || w.Accepting != 1 {
		t.Errorf("slot 4 after respawn: pid %d respawn_count %d requests %d delta %d tx %d accepting %d, want 4011 2 5 2 1000 1",
			w.PID, w.RespawnCount, w.Requests, w.DeltaRequests, w.TX, w.Accepting)
	}

	// Its successor exits too and is replaced: the slot sums all three.
	k.update(4011, func(c *Counters) { c.Requests, c.TX, c.Exited = 4, 200, true })
	addProc(t, p.Proc.Root, worker(4013, 7000, 1000, 40000))
	k.set(Counters{PID: 4013, Master: testMaster, Start: TicksToNs(7000), Requests: 1, TX: 10})
	st = snapshot(t, p)
	w = workerBySlot(t, st, 4)
	if len(st.Workers) != 4 || w.PID != 4013 || w.RespawnCount != 3 || w.Requests != 8 || w.DeltaRequests != 1 || w.TX != 1110 {
		t.Errorf("%d workers, slot 4 after second respawn: pid %d respawn_count %d requests %d delta %d tx %d, want 4 workers, 4013 3 8 1 1110",
			len(st.Workers), w.PID, w.RespawnCount, w.Requests, w.DeltaRequests, w.TX)
	}
	// The slot keeps one history entry: 4011's now, 4009's dropped.
	if got := k.forgot(); !reflect.DeepEqual(got, []int{4009}) || k.has(4009) || !k.has(4011) {
		t.Errorf("kernel asked to forget %v, want [4009] (4011 holds slot 4's history)", got)
	}
}

func TestPoolIgnoresOtherMasters(t *testing.T) {
	p, k := testPool(t)
	k.set(Counters{PID: 5001, Master: 5000, Start: TicksToNs(2000), Requests: 99, InProgress: 1})
	k.set(Counters{PID: 5002, Master: 5000, Start: TicksToNs(2100), Requests: 42, Exited: true})
	for range 2 {
		st := snapshot(t, p)
		if len(st.Workers) != 3 {
			t.Fatalf("%d workers, want 3", len(st.Workers))
		}
		for _, w := range st.Workers {
			if w.PID == 5001 || w.PID == 5002 || w.Requests != 0 {
				t.Errorf("another master's worker leaked into the dump: %+v", w)
			}
		}
		if st.Load != 0 {
			t.Errorf("load = %d, want 0", st.Load)
		}
	}
	if got := k.forgot(); len(got) != 0 {
		t.Errorf("kernel asked to forget %v, another master's workers", got)
	}
}

func TestPoolKernelLostWorkerKeepsCounts(t *testing.T) {
	p, k := testPool(t)
	k.update(4002, func(c *Counters) { c.Requests, c.TX = 8, 800 })
	snapshot(t, p)

	// The entry disappears from the kernel map (removed, or never added
	// because the map was full): the slot keeps what was counted.
	k.mu.Lock()
	delete(k.counters, 4002)
	k.mu.Unlock()
	st := snapshot(t, p)
	w := workerBySlot(t, st, 3)
	if w.PID != 4002 || w.Requests != 8 || w.TX != 800 || w.Status != "idle" {
		t.Errorf("slot 3 = pid %d requests %d tx %d status %s, want 4002 8 800 idle", w.PID, w.Requests, w.TX, w.Status)
	}
}

func TestPoolSnapshotKernelError(t *testing.T) {
	p, k := testPool(t)
	boom := errors.New("map iteration failed")
	k.readErr = boom
	if _, err := p.Snapshot(context.Background()); !errors.Is(err, boom) {
		t.Errorf("Snapshot err = %v, want the kernel's error", err)
	}
	if err := p.Refresh(); !errors.Is(err, boom) {
		t.Errorf("Refresh err = %v, want the kernel's error", err)
	}
}

func TestPoolForgetFailureDoesNotDoubleCount(t *testing.T) {
	p, k := testPool(t)
	k.forgetErr = errors.New("map busy")
	k.rememberErr = errors.New("map busy")
	k.update(4001, func(c *Counters) { c.Requests, c.TX, c.Exited = 10, 1000, true })
	var want Worker
	for i := range 3 {
		st := snapshot(t, p)
		w := workerBySlot(t, st, 1)
		if i == 0 {
			want = w
			if w.Requests != 10 || w.RespawnCount != 1 {
				t.Fatalf("slot 1 = requests %d respawn_count %d, want 10 1", w.Requests, w.RespawnCount)
			}
			continue
		}
		if len(st.Workers) != 3 || w.Requests != want.Requests || w.TX != want.TX || w.RespawnCount != want.RespawnCount {
			t.Errorf("read %d: %d workers, slot 1 requests %d tx %d respawn_count %d; want 3 workers, %d %d %d (unchanged)",
				i+1, len(st.Workers), w.Requests, w.TX, w.RespawnCount, want.Requests, want.TX, want.RespawnCount)
		}
	}
}

func TestPoolSnapshotJSONNumbersAreIntegers(t *testing.T) {
	p, k := testPool(t)
	// Nanosecond values that do not divide evenly into microseconds.
	k.update(4001, func(c *Counters) { c.Requests, c.RunNs, c.AvgRTNs, c.TX, c.InProgress = 3, 1_999_999, 333_333, 1, 2 })
	k.update(4003, func(c *Counters) { c.RunNs, c.AvgRTNs = 1, 999 })
	k.set(Counters{PID: 4012, Master: testMaster, Start: TicksToNs(7777), Exited: true, Requests: 1, RunNs: 1_500})
	st := snapshot(t, p)
	b, err := json.MarshalIndent(st, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	count := 0
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case json.Number:
			count++
			if strings.ContainsAny(v.String(), ".eE") {
				t.Errorf("%s = %s, not an integer", path, v)
			}
		case map[string]any:
			for k, e := range v {
				walk(path+"."+k, e)
			}
		case []any:
			for i, e := range v {
				walk(path+"["+strconv.Itoa(i)+"]", e)
			}
		}
	}
	walk("$", v)
	if count < 100 {
		t.Errorf("only %d numbers in the dump: %s", count, b)
	}
}

// TestPoolShowsHowWorkersEnded: a slot shows how its last process ended:
// killed by a signal and by whom (the master here, in a request: a
// harakiri, counted), or exited with a code after a signal it was asked to
// die by; a signal it handled and survived says nothing.
func TestPoolShowsHowWorkersEnded(t *testing.T) {
	p, k := testPool(t)
	k.update(4001, func(c *Counters) {
		c.Exited, c.ExitNs, c.ExitStatus, c.ExitedInRequest = true, TicksToNs(2000), 9, true
		c.KillSig, c.Killer = 9, testMaster
	})
	k.update(4003, func(c *Counters) {
		c.Exited, c.ExitNs, c.ExitStatus = true, TicksToNs(2100), 3<<8
		c.KillSig, c.Killer = 15, 777
	})
	k.update(4002, func(c *Counters) { c.KillSig, c.Killer = 1, testMaster }) // a SIGHUP it handled
	st := snapshot(t, p)
	boot := workerBySlot(t, st, 1).LastSpawn - 1000/100 // slot 1's process started at tick 1000
	want := map[int]*LastExit{
		1: {PID: 4001, At: boot + 20, Status: "killed", Signal: "SIGKILL", By: "master", ByPID: testMaster, InRequest: 1},
		2: {PID: 4003, At: boot + 21, Status: "exited", Code: 3, Signal: "SIGTERM", By: "pid 777", ByPID: 777},
	}
	for id, w := range want {
		if got := workerBySlot(t, st, id).LastExit; got == nil || *got != *w {
			t.Errorf("slot %d: last_exit %+v, want %+v", id, got, w)
		}
	}
	if e1, e2 := workerBySlot(t, st, 1).Exits, workerBySlot(t, st, 2).Exits; !maps.Equal(e1, map[string]uint64{"killed_by_master": 1}) ||
		!maps.Equal(e2, map[string]uint64{"exited_error": 1}) {
		t.Errorf("exits: slot 1 %v, slot 2 %v; want killed_by_master and exited_error", e1, e2)
	}
	if h := workerBySlot(t, st, 1).HarakiriCount; h != 1 {
		t.Errorf("slot 1: harakiri_count %d, want 1 (its master killed it in a request)", h)
	}
	if w := workerBySlot(t, st, 3); w.LastExit != nil || w.HarakiriCount != 0 {
		t.Errorf("slot 3 (alive, never exited): last_exit %+v harakiri %d", w.LastExit, w.HarakiriCount)
	}
}
