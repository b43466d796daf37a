package ebpfkernel

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/proto"
	"github.com/workerstats/workerstats/observer/requests"
)

// following is the requests the captured heads show (Options.CaptureHeads):
// a reader of the kernel's heads feeding a tracker, until Close.
type following struct {
	tracker *requests.Tracker
	heads   *HeadReader
	done    chan struct{}
}

// Follow starts reading the captured heads (Options.CaptureHeads) into a
// tracker of as many connections as the kernel's table holds, keeping
// vars of each request, until Close: Serving answers from it. It takes the
// heads Heads would read.
func (k *Kernel) Follow(vars requests.Vars) error {
	if k.following != nil {
		return nil
	}
	hr, err := k.Heads()
	if err != nil {
		return err
	}
	tr := &requests.Tracker{MaxConns: int(k.objs.Conns.MaxEntries()), Vars: vars}
	f := &following{tracker: tr, heads: hr, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		bad := 0
		for {
			h, err := hr.Read()
			if errors.Is(err, ErrHeadsClosed) {
				return
			}
			if err != nil {
				if bad++; bad == 1 { // said once: the next would say the same
					k.log.Warn("a captured head could not be read; its request is not followed", "error", err)
				}
				continue
			}
			f.tracker.Add(h)
		}
	}()
	k.following = f
	return nil
}

// stop ends the reader; nothing is read after it returns.
func (f *following) stop() error {
	if f == nil {
		return nil
	}
	err := f.heads.Close()
	<-f.done
	return err
}

// forget drops a worker gone from the tracker.
func (f *following) forget(pid int) {
	if f != nil {
		f.tracker.Forget(pid)
	}
}

// summarize sets each process's Followed: how the requests the tracker
// followed ended. A slot's history entry (Spawns set) has none of its own.
func (f *following) summarize(cs []observer.Counters) {
	if f == nil {
		return
	}
	for i := range cs {
		if cs[i].Spawns == 0 {
			s := f.tracker.Summary(cs[i].PID)
			cs[i].Followed = &s
		}
	}
}

// Serving implements observer.RequestAware: the requests pid is in now,
// with their vars as uWSGI writes them ("KEY=VALUE"): those whose response
// has not begun. One whose response has begun may be over: the kernel
// cannot see where a response ends, and a kept-alive connection then waits
// for its next request.
func (k *Kernel) Serving(pid int) []observer.Serving {
	if k.following == nil {
		return nil
	}
	inFlight := k.following.tracker.Worker(pid).InFlight
	if len(inFlight) == 0 {
		return nil
	}
	toUnix, err := monoToUnix()
	if err != nil {
		k.log.Debug("request start times unknown", "error", err)
	}
	var out []observer.Serving
	for _, r := range inFlight {
		if r.Answered {
			continue
		}
		out = append(out, observer.Serving{Vars: varStrings(r.Vars), Start: toUnix(r.StartNs), Truncated: r.Truncated})
	}
	return out
}

// LastRequest implements observer.RequestAware.
func (k *Kernel) LastRequest(pid int) []string {
	if k.following == nil {
		return nil
	}
	r, ok := k.following.tracker.Latest(pid)
	if !ok {
		return nil
	}
	return varStrings(r.Vars)
}

// varStrings writes vars as uWSGI writes a core's: "KEY=VALUE".
func varStrings(vars []proto.Var) []string {
	out := make([]string, len(vars))
	for i, v := range vars {
		out[i] = v.Key + "=" + v.Value
	}
	return out
}

// monoToUnix converts bpf_ktime_get_ns() times to wall-clock times.
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
