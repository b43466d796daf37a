package observer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/observer/proto"
	"github.com/workerstats/workerstats/observer/requests"
)

// Request following (request capture on): the daemon's one Follower reads
// the heads the kernel side captures and keeps, for every pool, what each
// worker is serving now and how its requests ended. The kernel side only
// hands the heads over (a HeadSource); the pools ask the Follower.

// HeadSource gives the heads the kernel side captures, in the order it
// wrote them: the eBPF kernel's capture ring (ebpfkernel.HeadReader).
// Their times are on CLOCK_MONOTONIC's clock (bpf_ktime_get_ns()).
type HeadSource interface {
	// Read waits for the next head. Once the source is closed it returns
	// an error wrapping ErrHeadsClosed; any other error is one head lost.
	Read() (requests.Head, error)
	// Close ends Read, at once.
	Close() error
}

// ErrHeadsClosed is what a HeadSource's Read returns once it is closed.
var ErrHeadsClosed = errors.New("head reader closed")

// RequestFollower is what a Pool asks of the daemon's request follower (a
// *Follower; tests use a fake).
type RequestFollower interface {
	// Serving lists the requests worker pid is in now whose response has
	// not begun, which the dump shows as its cores.
	Serving(pid int) []Serving
	// LastRequest is the vars of the request pid began last, in flight
	// or over: for a worker that died in a request, the one it died in.
	LastRequest(pid int) []string
	// Summary is how the requests of pid that were followed ended.
	Summary(pid int) requests.Summary
	// Forget drops what is held of pid, an exited worker whose counts its
	// slot holds now.
	Forget(pid int)
}

// Serving is one request a worker is in, its response not begun.
type Serving struct {
	Vars  []string  // as uWSGI writes a core's vars: "KEY=VALUE"
	Start time.Time // its first byte; zero if unknown
	// Truncated: the request's head was longer than the capture, and
	// Vars are those of its first bytes.
	Truncated bool
}

// Follower follows every watched worker's requests from the heads a
// HeadSource gives, into a requests.Tracker. One serves every pool of a
// daemon, as the kernel's capture ring is host-wide. A nil *Follower
// follows nothing.
type Follower struct {
	src     HeadSource
	tracker *requests.Tracker
	log     *slog.Logger
	done    chan struct{} // closed when the reader has returned
	// unwatch stops ctx's end from closing src, once Close has.
	unwatch func() bool

	closeOnce sync.Once
	closing   atomic.Bool // src is closed or being closed: Read's errors end the reader
	closeErr  error
}

// Follow starts reading src's heads into tracker until ctx ends or Close,
// and returns the Follower that answers from it. tracker's MaxConns should
// be as many connections as the kernel side tracks. The Follower owns src
// and tracker from then on.
func Follow(ctx context.Context, src HeadSource, tracker *requests.Tracker, log *slog.Logger) *Follower {
	if log == nil {
		log = slog.Default()
	}
	f := &Follower{src: src, tracker: tracker, log: log, done: make(chan struct{})}
	f.unwatch = context.AfterFunc(ctx, f.closeSource)
	go f.read()
	return f
}

// read adds each head to the tracker until the source is closed.
func (f *Follower) read() {
	defer close(f.done)
	bad := 0
	for {
		h, err := f.src.Read()
		if errors.Is(err, ErrHeadsClosed) || (err != nil && f.closing.Load()) {
			return
		}
		if err != nil {
			if bad++; bad == 1 { // said once: the next would say the same
				f.log.Warn("a captured head could not be read; its request is not followed", "error", err)
			}
			continue
		}
		f.tracker.Add(h)
	}
}

// closeSource closes the source, once.
func (f *Follower) closeSource() {
	f.closeOnce.Do(func() {
		f.closing.Store(true)
		if err := f.src.Close(); err != nil {
			f.closeErr = fmt.Errorf("close the captured heads: %w", err)
		}
	})
}

// Close stops the reading: no head is read after it returns. What was
// followed is still answered. Close it before the kernel side whose heads
// it reads.
func (f *Follower) Close() error {
	if f == nil {
		return nil
	}
	f.unwatch()
	f.closeSource()
	<-f.done
	return f.closeErr
}

// Serving implements RequestFollower: the requests pid is in now whose
// response has not begun, with their vars as uWSGI writes them. One whose
// response has begun may be over: the kernel cannot see where a response
// ends, and a kept-alive connection then waits for its next request.
func (f *Follower) Serving(pid int) []Serving {
	if f == nil {
		return nil
	}
	inFlight := f.tracker.Worker(pid).InFlight
	if len(inFlight) == 0 {
		return nil
	}
	toUnix, err := monoToUnix()
	if err != nil {
		f.log.Debug("request start times unknown", "error", err)
	}
	var out []Serving
	for _, r := range inFlight {
		if !r.Answered {
			out = append(out, Serving{Vars: varStrings(r.Vars), Start: toUnix(r.StartNs), Truncated: r.Truncated})
		}
	}
	return out
}

// LastRequest implements RequestFollower.
func (f *Follower) LastRequest(pid int) []string {
	if f == nil {
		return nil
	}
	r, ok := f.tracker.Latest(pid)
	if !ok {
		return nil
	}
	return varStrings(r.Vars)
}

// Summary implements RequestFollower.
func (f *Follower) Summary(pid int) requests.Summary {
	if f == nil {
		return requests.Summary{}
	}
	return f.tracker.Summary(pid)
}

// Forget implements RequestFollower.
func (f *Follower) Forget(pid int) {
	if f != nil {
		f.tracker.Forget(pid)
	}
}

// varStrings writes vars as uWSGI writes a core's: "KEY=VALUE".
func varStrings(vars []proto.Var) []string {
	out := make([]string, len(vars))
	for i, v := range vars {
		out[i] = v.Key + "=" + v.Value
	}
	return out
}

// monoToUnix converts CLOCK_MONOTONIC times (bpf_ktime_get_ns()'s) to
// wall-clock times.
func monoToUnix() (func(uint64) time.Time, error) {
	var mono unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono); err != nil {
		return func(uint64) time.Time { return time.Time{} }, fmt.Errorf("read the monotonic clock: %w", err)
	}
	now, monoNow := time.Now(), uint64(mono.Nano())
	return func(ns uint64) time.Time {
		return now.Add(-time.Duration(monoNow - min(ns, monoNow)))
	}, nil
}
