package observer

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Version is reported in the dump's "version" key.
var Version = "dev"

// Pool turns the kernel's per-process counters for one master into uWSGI's
// per-slot worker table.
//
// Slots are numbered 1..N in spawn order. A worker that exits leaves its slot
// free; the next worker the master spawns takes the lowest free slot, as
// uWSGI's respawn does. A slot's requests, tx and running_time are
// cumulative across the processes that held it; delta_requests is the
// current process's own.
//
// A reload that starts the new workers before the old ones exit (gunicorn's
// HUP, nginx's reload) briefly needs more slots than the pool has: the new
// workers take extra slots, and each moves down into the first slot an old
// worker frees, so the table settles back to 1..N with every slot's counts
// kept.
//
// The master is found through Target. When it exits the pool is empty (its
// slots and counts are kept) until a Target that follows finds it again.
type Pool struct {
	Target Target
	Proc   Procfs
	Kernel Kernel
	// Follower says what the workers are serving when request capture is
	// on (nil: off). The daemon's one Follower serves every pool.
	Follower RequestFollower
	Log      *slog.Logger
	// Pods names the pod of the master's container (nil: none).
	Pods PodNamer
	// MaxAge lets readers arriving within it of a snapshot share it, so a
	// storm of readers costs the kernel maps one read. 0 reads every time.
	MaxAge time.Duration

	// discovered: a Discovery watches the pool, and drops it once its
	// master exits.
	discovered bool

	mu     sync.Mutex
	master Proc // zero while the master is not found
	self   masterSelf
	// masters holds every master watched, the current one included, whose
	// workers may still run: their exits must still be folded.
	masters map[int]bool
	waiting string // why there is no master, for the dump
	settled bool   // the first master's workers have their slots
	slots   []*slot
	// folded holds exited processes already added to their slot whose
	// kernel entry could not be removed yet: they must not count twice.
	folded map[Proc]bool
	// history holds the exited processes whose kernel entries are their
	// slots' history (Kernel.Remember): known, not to be folded again.
	history map[Proc]bool
	live    map[Proc]*slot // live slots by process
	listen  listenerState  // the master's listening sockets and cwd
	// announced is what a ListenerAware kernel was last told of the
	// listening sockets (socketNames) of master announcedOf.
	announced   []string
	announcedOf int
	last        *Stats
	lastAt      time.Time
	gauges      gauges
	pod         podName
}

// Start finds the master and its current workers and starts counting. An
// error wrapping ErrNoTarget leaves the pool empty and waiting: Refresh
// looks for the master again when its Target follows.
func (p *Pool) Start(ctx context.Context) error {
	if p.Log == nil {
		p.Log = slog.Default()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.locate()
}

// Masters returns the masters whose workers the pool counts: the current
// one and any earlier one with workers left.
func (p *Pool) Masters() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]int, 0, len(p.masters))
	for m := range p.masters {
		out = append(out, m)
	}
	return out
}

// Waiting says why the pool has no master, or "" when it has one.
func (p *Pool) Waiting() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waiting
}

// Refresh checks the master (following its Target) and brings the slots up
// to date without building a dump. The daemon calls it every second, so
// exited workers are folded even with no readers and a restarted master is
// found again.
func (p *Pool) Refresh() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	// A master not found was said once, by lose; the dump says it too.
	if err := p.locate(); err != nil && p.waiting == "" {
		return err
	}
	return p.refresh()
}
