package observer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer/requests"
)

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
