package observer

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/observer/proto"
	"github.com/workerstats/workerstats/observer/requests"
)

// Request following (request capture on): the kernel side keeps the
// head of each connection's latest request; the daemon's one Follower
// reads the heads of the requests in flight when a dump asks, and parses
// them then, never per request. The kernel side only keeps the heads (a
// HeadSource); the pools ask the Follower.

// RequestHead is the head of a request, as the kernel side keeps it.
type RequestHead struct {
	PID      int    // the worker it came to
	Conn     uint64 // its connection (the kernel's socket address)
	StartNs  uint64 // its first byte, on CLOCK_MONOTONIC's clock
	Answered bool   // its response has begun
	Data     []byte // its first bytes, at most requests.HeadMax
	Cut      bool   // a read brought more than Data holds
}

// HeadSource gives the heads the kernel side keeps: the eBPF kernel's
// (ebpfkernel.Kernel).
type HeadSource interface {
	// InFlight returns the heads of the requests the watched workers'
	// connections are in now.
	InFlight() ([]RequestHead, error)
	// Latest returns the head of the request pid began last, in flight or
	// over; false when none is kept.
	Latest(pid int) (RequestHead, bool, error)
}

// RequestFollower is what a Pool asks of the daemon's request follower (a
// *Follower; tests use a fake).
type RequestFollower interface {
	// Serving lists the requests worker pid is in now whose response has
	// not begun, which the dump shows as its cores.
	Serving(pid int) []Serving
	// LastRequest is the vars of the request pid began last, in flight
	// or over: for a worker that died in a request, the one it died in.
	LastRequest(pid int) []string
}

// Serving is one request a worker is in, its response not begun.
type Serving struct {
	Vars  []string  // as uWSGI writes a core's vars: "KEY=VALUE"
	Start time.Time // its first byte; zero if unknown
	// Truncated: the request's head was longer than the capture, and
	// Vars are those of its first bytes.
	Truncated bool
}

// FollowerMaxAge is how long the Follower answers from one read of the
// heads in flight: a dump asks for each worker's in turn.
const FollowerMaxAge = 100 * time.Millisecond

// Follower answers what every watched worker is serving from the heads a
// HeadSource keeps, read when asked (at most every FollowerMaxAge). One
// serves every pool of a daemon, as the kernel's heads are host-wide. A
// nil *Follower follows nothing.
type Follower struct {
	src  HeadSource
	vars requests.Vars
	log  *slog.Logger

	mu      sync.Mutex
	at      time.Time         // when serving was read
	serving map[int][]Serving // by worker
	failed  bool              // a read failed, said once
}

// NewFollower returns the Follower of src's heads, showing the vars keep
// keeps.
func NewFollower(src HeadSource, keep requests.Vars, log *slog.Logger) *Follower {
	if log == nil {
		log = slog.Default()
	}
	return &Follower{src: src, vars: keep, log: log}
}

// Serving implements RequestFollower: the requests pid is in now whose
// response has not begun, with their vars as uWSGI writes them, in the
// order they began. One whose response has begun may be over: the kernel
// cannot see where a response ends, and a kept-alive connection then
// waits for its next request.
func (f *Follower) Serving(pid int) []Serving {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.at) >= FollowerMaxAge {
		f.read()
	}
	return f.serving[pid]
}

// read reads the heads in flight into f.serving.
func (f *Follower) read() {
	f.at, f.serving = time.Now(), map[int][]Serving{}
	heads, err := f.src.InFlight()
	if err != nil {
		if !f.failed { // said once: the next would say the same
			f.log.Warn("the requests in flight could not be read", "error", err)
			f.failed = true
		}
		return
	}
	slices.SortFunc(heads, func(a, b RequestHead) int {
		return cmp.Or(cmp.Compare(a.StartNs, b.StartNs), cmp.Compare(a.Conn, b.Conn))
	})
	toUnix, err := monoToUnix()
	if err != nil {
		f.log.Debug("request start times unknown", "error", err)
	}
	for _, h := range heads {
		if h.Answered {
			continue
		}
		vars, truncated := requests.Parse(h.Data, h.Cut, f.vars)
		f.serving[h.PID] = append(f.serving[h.PID], Serving{Vars: varStrings(vars), Start: toUnix(h.StartNs), Truncated: truncated})
	}
}

// LastRequest implements RequestFollower.
func (f *Follower) LastRequest(pid int) []string {
	if f == nil {
		return nil
	}
	h, ok, err := f.src.Latest(pid)
	if err != nil {
		f.log.Debug("a worker's last request could not be read", "pid", pid, "error", err)
	}
	if !ok {
		return nil
	}
	vars, _ := requests.Parse(h.Data, h.Cut, f.vars)
	return varStrings(vars)
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
