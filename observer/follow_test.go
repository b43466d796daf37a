package observer

import (
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer/requests"
)

// Request following (follow.go): the Follower on a fake HeadSource, and
// the pool with a fake follower.

// fakeHeads is a HeadSource that answers what the test set, counting the
// reads.
type fakeHeads struct {
	mu       sync.Mutex
	inFlight []RequestHead
	latest   map[int]RequestHead
	err      error
	reads    int
}

func (s *fakeHeads) InFlight() ([]RequestHead, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	return slices.Clone(s.inFlight), s.err
}

func (s *fakeHeads) Latest(pid int) (RequestHead, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.latest[pid]
	return h, ok, s.err
}

func (s *fakeHeads) set(hs ...RequestHead) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.inFlight = hs
}

func (s *fakeHeads) readCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reads
}

// monoNow is CLOCK_MONOTONIC now: the heads' clock.
func monoNow(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

func httpHead(path string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: app\r\nCookie: s=secret\r\n\r\n")
}

// TestFollowerShowsInFlight: what a worker is serving is the heads in
// flight the source keeps for it whose response has not begun, in the
// order they began, with their vars as uWSGI writes them (a cookie never)
// and their start on the wall clock; a dump's questions within
// FollowerMaxAge share one read of the source, and a later one reads it
// again.
func TestFollowerShowsInFlight(t *testing.T) {
	now := monoNow(t)
	src := &fakeHeads{}
	src.set(
		RequestHead{PID: 10, Conn: 2, StartNs: now - 2e9, Data: httpHead("/second")},
		RequestHead{PID: 10, Conn: 1, StartNs: now - 3e9, Data: httpHead("/first?x=1")},
		RequestHead{PID: 10, Conn: 3, StartNs: now - 1e9, Data: httpHead("/answered"), Answered: true},
		RequestHead{PID: 11, Conn: 4, StartNs: now, Data: []byte("GET /other HTTP/1.1\r\nHost: a"), Cut: true},
	)
	f := NewFollower(src, requests.AllVars, testutil.NewLog(t).Logger)
	got := f.Serving(10)
	if len(got) != 2 || !slices.Contains(got[0].Vars, "REQUEST_URI=/first?x=1") || !slices.Contains(got[1].Vars, "REQUEST_URI=/second") {
		t.Fatalf("worker 10 serving %+v, want /first then /second (not the answered one)", got)
	}
	for _, s := range got {
		if strings.Contains(strings.Join(s.Vars, " "), "secret") {
			t.Errorf("a cookie is shown: %v", s.Vars)
		}
	}
	if d := time.Since(got[0].Start); d < 2900*time.Millisecond || d > 4*time.Second {
		t.Errorf("/first began %v ago, want about 3 s", d)
	}
	if o := f.Serving(11); len(o) != 1 || !o[0].Truncated || !slices.Contains(o[0].Vars, "REQUEST_URI=/other") {
		t.Errorf("worker 11 serving %+v, want /other, its head cut short", o)
	}
	if f.Serving(12) != nil || src.readCount() != 1 {
		t.Errorf("three questions within %v read the source %d times, want once", FollowerMaxAge, src.readCount())
	}
	src.set()
	time.Sleep(FollowerMaxAge)
	if got := f.Serving(10); got != nil || src.readCount() != 2 {
		t.Errorf("after %v and the requests over: serving %+v, %d reads; want none, a second read", FollowerMaxAge, got, src.readCount())
	}
}

// TestFollowerSaysAFailedReadOnce: a source that cannot be read leaves
// every worker serving nothing known, said once.
func TestFollowerSaysAFailedReadOnce(t *testing.T) {
	src := &fakeHeads{err: errors.New("map gone")}
	log := testutil.NewLog(t)
	f := NewFollower(src, requests.AllVars, log.Logger)
	for range 3 {
		if got := f.Serving(10); got != nil {
			t.Errorf("serving %+v from a failed read", got)
		}
		time.Sleep(FollowerMaxAge)
	}
	if n := strings.Count(log.String(), "could not be read"); n != 1 {
		t.Errorf("said %d times, want once:\n%s", n, log.String())
	}
}

// TestFollowerLastRequest: a worker's last request is the source's latest
// head of it, parsed under the vars policy; none when none is kept.
func TestFollowerLastRequest(t *testing.T) {
	src := &fakeHeads{latest: map[int]RequestHead{10: {PID: 10, Data: httpHead("/slow?x=1")}}}
	f := NewFollower(src, requests.NoQuery, testutil.NewLog(t).Logger)
	if got := f.LastRequest(10); !slices.Contains(got, "REQUEST_URI=/slow") || slices.Contains(got, "QUERY_STRING=x=1") {
		t.Errorf("last request %v, want /slow without its query", got)
	}
	if got := f.LastRequest(11); got != nil {
		t.Errorf("worker 11's last request %v, want none", got)
	}
}

// TestNilFollowerFollowsNothing: without request capture a nil Follower
// answers nothing.
func TestNilFollowerFollowsNothing(t *testing.T) {
	var f *Follower
	if f.Serving(1) != nil || f.LastRequest(1) != nil {
		t.Error("a nil Follower answered something")
	}
}

// fakeFollower is a RequestFollower that answers what tests set, by pid.
type fakeFollower struct {
	mu      sync.Mutex
	serving map[int][]Serving
	last    map[int][]string
}

func newFakeFollower() *fakeFollower {
	return &fakeFollower{serving: map[int][]Serving{}, last: map[int][]string{}}
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

// TestPoolShowsKernelStatuses: a slot shows its requests by status class
// and their durations, as the kernel counted them, summed across the
// processes it had; its exceptions are the 5xx answers and the requests
// never answered. Its history entry adds nothing of its own after.
func TestPoolShowsKernelStatuses(t *testing.T) {
	p, k := testPool(t)
	if w := workerBySlot(t, snapshot(t, p), 1); w.Statuses != nil || w.Durations != nil {
		t.Fatalf("with no counts from the kernel: statuses %+v durations %+v, want neither", w.Statuses, w.Durations)
	}
	counted := func(s2xx, s5xx, unanswered uint64, ms ...uint64) *requests.Summary {
		var s requests.Summary
		s.Ended[requests.Status2xx], s.Ended[requests.Status5xx], s.Ended[requests.Unanswered] = s2xx, s5xx, unanswered
		for _, d := range ms {
			s.Durations.Observe(d * 1e6)
		}
		return &s
	}
	k.update(4001, func(c *Counters) {
		c.Requests, c.Unanswered, c.Exited, c.Followed = 6, 1, true, counted(5, 1, 1, 3, 3, 3, 3, 3, 700)
	})
	k.update(4003, func(c *Counters) { c.Followed = counted(0, 0, 0) })
	addProc(t, p.Proc.Root, worker(4007, 9000, 1100, 39000))
	k.set(Counters{PID: 4007, Master: testMaster, Start: TicksToNs(9000), Requests: 2, Unanswered: 2, Followed: counted(2, 0, 2, 40, 40)})
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
		if d == nil || d.Count != 8 || d.SumUs != 795_000 || !slices.Equal(d.Counts, wantCounts) || len(d.BoundsUs) != len(requests.Bounds) || d.BoundsUs[0] != 5000 {
			t.Errorf("%s: slot 1's durations %+v, want 8 requests, 795 ms, counts %v", round, d, wantCounts)
		}
	}
	if w := workerBySlot(t, snapshot(t, p), 2); w.Statuses == nil || *w.Statuses != (Statuses{}) || w.Durations == nil || w.Durations.Count != 0 {
		t.Errorf("slot 2, no request answered: statuses %+v durations %+v, want both there and 0", w.Statuses, w.Durations)
	}
}

// TestPoolForgetsWhatItFolds: every exited process the pool folds whose
// entry does not become its slot's history is forgotten by the kernel
// (the history it replaced, or one the kernel could not keep); a live
// worker never is.
func TestPoolForgetsWhatItFolds(t *testing.T) {
	p, k := testPool(t)
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
