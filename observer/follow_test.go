package observer

import (
	"context"
	"errors"
	"fmt"
	"reflect"
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

// fakeHeads is a HeadSource fed by the test. Read takes one item at a
// time from an unbuffered channel, so once feed returns the head before
// it has been added to the tracker (see sync).
type fakeHeads struct {
	items  chan headOrError
	closed chan struct{}
	// closedErr is what Read returns once closed: ErrHeadsClosed wrapped,
	// or (a source that says it otherwise) any error.
	closedErr error
	closeErr  error // what Close returns

	mu     sync.Mutex
	closes int
}

type headOrError struct {
	h   requests.Head
	err error
}

func newFakeHeads() *fakeHeads {
	return &fakeHeads{items: make(chan headOrError), closed: make(chan struct{}),
		closedErr: fmt.Errorf("read a captured head: %w", ErrHeadsClosed)}
}

func (s *fakeHeads) Read() (requests.Head, error) {
	select {
	case it := <-s.items:
		return it.h, it.err
	case <-s.closed:
		return requests.Head{}, s.closedErr
	}
}

func (s *fakeHeads) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closes++; s.closes == 1 {
		close(s.closed)
	}
	return s.closeErr
}

// feed hands the follower h, and then an empty close of a connection no
// one follows: once that is taken, h has been added.
func (s *fakeHeads) feed(t *testing.T, hs ...requests.Head) {
	t.Helper()
	for _, h := range hs {
		s.send(t, headOrError{h: h})
	}
	s.sync(t)
}

func (s *fakeHeads) sync(t *testing.T) {
	t.Helper()
	s.send(t, headOrError{h: requests.Head{Kind: requests.Close}})
}

func (s *fakeHeads) send(t *testing.T, it headOrError) {
	t.Helper()
	select {
	case s.items <- it:
	case <-time.After(5 * time.Second):
		t.Fatal("the follower did not read the next head within 5 s")
	}
}

func (s *fakeHeads) closeCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closes
}

// monoNow is CLOCK_MONOTONIC now: the heads' clock.
func monoNow(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

func startFollower(t *testing.T, ctx context.Context, src *fakeHeads) (*Follower, *testutil.Log) {
	t.Helper()
	log := testutil.NewLog(t)
	f := Follow(ctx, src, &requests.Tracker{MaxConns: 16}, log.Logger)
	t.Cleanup(func() { f.Close() })
	return f, log
}

// TestFollowerFollowsHeads: the heads a worker's requests make are
// followed: in flight it is serving the request, with its vars as uWSGI
// writes them (a cookie never) and its start on the wall clock; once
// answered it is not; closed, the request is summed by its status with its
// duration, and stays the worker's last; forgotten, nothing is left.
func TestFollowerFollowsHeads(t *testing.T) {
	src := newFakeHeads()
	f, _ := startFollower(t, context.Background(), src)
	start := monoNow(t) - uint64(3*time.Second)
	src.feed(t, requests.Head{Conn: 1, PID: 7, Kind: requests.Request, TimeNs: start,
		Data: []byte("GET /a?x=1 HTTP/1.1\r\nHost: app\r\nCookie: s=secret\r\n\r\n")})

	reqs := f.Serving(7)
	if len(reqs) != 1 {
		t.Fatalf("serving %+v, want one request", reqs)
	}
	r := reqs[0]
	for _, v := range []string{"REQUEST_METHOD=GET", "REQUEST_URI=/a?x=1", "QUERY_STRING=x=1", "HTTP_HOST=app"} {
		if !slices.Contains(r.Vars, v) {
			t.Errorf("vars %q lack %q", r.Vars, v)
		}
	}
	if strings.Contains(strings.Join(r.Vars, " "), "secret") || r.Truncated {
		t.Errorf("vars %q (truncated %v): a cookie shown, or a short head truncated", r.Vars, r.Truncated)
	}
	if ago := time.Since(r.Start); ago < 2*time.Second || ago > 10*time.Second {
		t.Errorf("request start %v, %v ago; want about 3 s ago", r.Start, ago)
	}
	if f.Serving(8) != nil {
		t.Errorf("pid 8 serving %+v, want nothing", f.Serving(8))
	}

	src.feed(t, requests.Head{Conn: 1, PID: 7, Kind: requests.Response, TimeNs: start + 40e6,
		Data: []byte("HTTP/1.1 503 Service Unavailable\r\n\r\n")})
	if reqs := f.Serving(7); len(reqs) != 0 {
		t.Errorf("serving %+v once its response began, want none", reqs)
	}
	src.feed(t, requests.Head{Conn: 1, PID: 7, Kind: requests.Close, TimeNs: start + 60e6, LastTxNs: start + 50e6, Answered: true})
	s := f.Summary(7)
	if s.Ended[requests.Status5xx] != 1 || s.Exceptions() != 1 || s.Durations.Count != 1 || s.Durations.SumNs != 50e6 {
		t.Errorf("summary %+v, want one 5xx of 50 ms", s)
	}
	if got := f.LastRequest(7); !slices.Contains(got, "REQUEST_URI=/a?x=1") {
		t.Errorf("last request %q, want /a?x=1's vars", got)
	}

	f.Forget(7)
	if s := f.Summary(7); s != (requests.Summary{}) || f.LastRequest(7) != nil {
		t.Errorf("after Forget: summary %+v, last request %q; want nothing", s, f.LastRequest(7))
	}
}

// TestFollowerSaysABadHeadOnce: a head that cannot be read is said once,
// however many follow, and the heads after it are followed.
func TestFollowerSaysABadHeadOnce(t *testing.T) {
	src := newFakeHeads()
	f, log := startFollower(t, context.Background(), src)
	for range 3 {
		src.send(t, headOrError{err: errors.New("a captured head of kind 9")})
	}
	src.feed(t, requests.Head{Conn: 2, PID: 9, Kind: requests.Request, Data: []byte("GET / HTTP/1.1\r\n\r\n")})
	if n := strings.Count(log.String(), "could not be read"); n != 1 {
		t.Errorf("a bad head said %d times, want once:\n%s", n, log)
	}
	if len(f.Serving(9)) != 1 {
		t.Errorf("the head after the bad ones is not followed: serving %+v", f.Serving(9))
	}
}

// TestFollowerStopsAtClose: Close closes the source, once, and returns
// once nothing is read any more, with the source's close error; what was
// followed is still answered. A source whose Read says its close with
// another error than ErrHeadsClosed stops the reader as well.
func TestFollowerStopsAtClose(t *testing.T) {
	for _, closedErr := range []error{ErrHeadsClosed, errors.New("file already closed")} {
		t.Run(closedErr.Error(), func(t *testing.T) {
			src := newFakeHeads()
			src.closedErr, src.closeErr = closedErr, errors.New("busy")
			f, _ := startFollower(t, context.Background(), src)
			src.feed(t, requests.Head{Conn: 3, PID: 5, Kind: requests.Request, Data: []byte("GET /kept HTTP/1.1\r\n\r\n")})
			if err := f.Close(); err == nil || !strings.Contains(err.Error(), "busy") {
				t.Errorf("Close: %v, want the source's close error", err)
			}
			if err := f.Close(); err == nil {
				t.Error("a second Close forgot the first's error")
			}
			if n := src.closeCount(); n != 1 {
				t.Errorf("source closed %d times, want once", n)
			}
			if len(f.Serving(5)) != 1 {
				t.Errorf("after Close: serving %+v, want the request followed before it", f.Serving(5))
			}
		})
	}
}

// TestFollowerStopsWhenItsContextEnds: the daemon's shutdown closes the
// source at once; Close after it returns.
func TestFollowerStopsWhenItsContextEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	src := newFakeHeads()
	f, _ := startFollower(t, ctx, src)
	src.sync(t)
	cancel()
	select {
	case <-src.closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the source was not closed within 5 s of the context's end")
	}
	done := make(chan error, 1)
	go func() { done <- f.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return within 5 s")
	}
	if n := src.closeCount(); n != 1 {
		t.Errorf("source closed %d times, want once", n)
	}
}

// TestNilFollowerFollowsNothing: a daemon without request capture has no
// Follower; a nil one answers nothing and closes.
func TestNilFollowerFollowsNothing(t *testing.T) {
	var f *Follower
	f.Forget(1)
	if f.Serving(1) != nil || f.LastRequest(1) != nil || f.Summary(1) != (requests.Summary{}) || f.Close() != nil {
		t.Error("a nil Follower answered something")
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
