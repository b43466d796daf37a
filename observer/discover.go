package observer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"

	"github.com/workerstats/workerstats/observer/container"
)

// Discovery watches every pre-fork master on the host, in or out of
// containers, each with a Pool of its own while it runs (serve
// --discover): Find starts a pool for each master it has not seen, Drop
// forgets a pool once its master has exited. A restarted master is a new
// process, so a new pool: nothing of the old one's processes or slots
// carries over, but it gets the old one's ID (see poolID).
//
// Find and Drop are called from one goroutine (the daemon's maintenance
// loop); Pools, Pool and List may be called from any.
type Discovery struct {
	Proc Procfs
	// Skip are processes never watched: the daemon itself.
	Skip []int
	// MaxPools bounds the pools watched at once: a master found beyond
	// it is not watched, and Find says how many were not.
	MaxPools int
	// Minified lays out each pool's JSON compactly (Discovered.Source).
	Minified bool
	// NewPool returns the pool that will watch the master of pool id: its
	// Kernel, Follower, Log and MaxAge set. Discovery sets its Target and
	// starts it.
	NewPool func(id string) *Pool

	sweep  sync.Mutex // one Find or Drop at a time
	mu     sync.Mutex // the maps below, for readers
	byProc map[Proc]*Discovered
	byID   map[string]*Discovered
	failed map[Proc]bool // masters whose pool could not start, said once
}

// Discovered is a pool discovery watches: who it is, and the Pool and the
// JSON source that serve it. Its fields do not change.
type Discovered struct {
	// ID names the pool in its HTTP path and its metrics' pool label.
	ID string
	// Server is the server's name: uwsgi, gunicorn, php-fpm, nginx, or
	// the master's command name.
	Server string
	// Master is the master process, as the host sees it.
	Master Proc
	// Container is who the master is, from its cgroup; nil when it could
	// not be read.
	Container *container.Identity
	Pool      *Pool
	Source    *JSONSource
}

// Path is the pool's HTTP path on a discovery stats socket.
func (d *Discovered) Path() string { return "/pools/" + d.ID }

// Found is what one Find did.
type Found struct {
	New []*Discovered
	// Failed are masters whose pool could not start (the kernel's tables
	// full, say), each once: Find tries them again every time.
	Failed []FailedMaster
	// Unwatched counts the masters running that are not watched because
	// MaxPools pools already are.
	Unwatched int
}

// FailedMaster is a master whose pool could not start.
type FailedMaster struct {
	Master Proc
	Server string
	Err    error
}

// Unwatcher is a Kernel that can drop a master's entries and its
// workers' at once, with what it keeps of the master's listeners:
// discovery calls it for a pool it drops.
type Unwatcher interface {
	Unwatch(master int) error
}

// Pools returns the pools watched now, by ID.
func (d *Discovery) Pools() []*Discovered {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]*Discovered, 0, len(d.byID))
	for _, p := range d.byID {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Pool returns the pool watched now with this ID.
func (d *Discovery) Pool(id string) (*Discovered, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.byID[id]
	return p, ok
}

// Drop forgets every pool whose master has exited (or that waits for one,
// which a pid target never finds again): what the follower followed of
// its processes and, with an Unwatcher kernel, their kernel entries. It
// returns the pools dropped, and what could not be forgotten.
func (d *Discovery) Drop() ([]*Discovered, error) {
	d.sweep.Lock()
	defer d.sweep.Unlock()
	var gone []*Discovered
	for _, p := range d.Pools() {
		if d.Proc.Running(p.Master) && p.Pool.Waiting() == "" {
			continue
		}
		d.mu.Lock()
		delete(d.byID, p.ID)
		delete(d.byProc, p.Master)
		d.mu.Unlock()
		gone = append(gone, p)
	}
	var errs []error
	for _, p := range gone {
		if err := p.Pool.release(p.Master.PID); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %w", p.ID, err))
		}
	}
	return gone, errors.Join(errs...)
}

// Find lists the pre-fork masters running and starts a pool for each one
// not watched yet, the longest running first, up to MaxPools pools. A
// shell with subshells is no master.
func (d *Discovery) Find(ctx context.Context) (Found, error) {
	d.sweep.Lock()
	defer d.sweep.Unlock()
	procs, err := d.Proc.Processes()
	if err != nil {
		return Found{}, err
	}
	ms := masters(procs, d.Skip)
	sort.SliceStable(ms, func(i, j int) bool { return ms[i].StartTicks < ms[j].StartTicks })
	var f Found
	running := map[Proc]bool{}
	for _, m := range ms {
		running[m.Proc] = true
		if d.watching(m.Proc) || slices.Contains(shells, m.Comm) {
			continue
		}
		if d.count() >= d.MaxPools {
			f.Unwatched++
			continue
		}
		p, err := d.start(ctx, m)
		switch {
		case err != nil && !d.failed[m.Proc]:
			if d.failed == nil {
				d.failed = map[Proc]bool{}
			}
			d.failed[m.Proc] = true
			f.Failed = append(f.Failed, FailedMaster{Master: m.Proc, Server: serverName(m.ProcInfo), Err: err})
		case p != nil:
			delete(d.failed, m.Proc)
			f.New = append(f.New, p)
		}
	}
	for proc := range d.failed {
		if !running[proc] {
			delete(d.failed, proc)
		}
	}
	return f, nil
}

// watching says whether master's pool is watched.
func (d *Discovery) watching(master Proc) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.byProc[master] != nil
}

// count is how many pools are watched.
func (d *Discovery) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.byID)
}

// start starts and adds the pool of master m. A master gone meanwhile,
// or whose pid another process took, is no pool and no error (nil, nil).
func (d *Discovery) start(ctx context.Context, m master) (*Discovered, error) {
	p := &Discovered{Server: serverName(m.ProcInfo), Master: m.Proc}
	if cg := d.Proc.cgroup(m.PID); cg != "" {
		id := container.Parse([]byte(cg))
		p.Container = &id
	}
	p.ID = d.freeID(poolID(p.Server, p.Container, d.Proc.cmdline(m.PID)))
	p.Pool = d.NewPool(p.ID)
	p.Pool.Target, p.Pool.discovered = Target{PID: m.PID}, true
	err := p.Pool.Start(ctx)
	if err == nil && p.Pool.current() != m.Proc {
		err = ErrNoTarget // another process has its pid now
	}
	if err != nil {
		// What Start may have told the kernel of it goes.
		if rerr := p.Pool.release(m.PID); rerr != nil {
			err = errors.Join(err, rerr)
		}
		if errors.Is(err, ErrNoTarget) || errors.Is(err, ErrNoProcess) {
			return nil, nil // it exited meanwhile
		}
		return nil, err
	}
	p.Source = &JSONSource{Pool: p.Pool, Minified: d.Minified}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.byID == nil {
		d.byID, d.byProc = map[string]*Discovered{}, map[Proc]*Discovered{}
	}
	d.byID[p.ID], d.byProc[p.Master] = p, p
	return p, nil
}

// freeID is base if no pool watched has it, else base-2, base-3... the
// first free: two live pools of one command in one container are told
// apart in the order they were found.
func (d *Discovery) freeID(base string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := base
	for n := 2; d.byID[id] != nil; n++ {
		id = fmt.Sprintf("%s-%d", base, n)
	}
	return id
}

// ListedPool is one pool in discovery's list, the JSON served at the root
// of its stats socket.
type ListedPool struct {
	ID     string `json:"id"`
	Server string `json:"server"`
	// PID is the master's pid as the server itself reports it (its PID
	// namespace's), HostPID the host's.
	PID       int                 `json:"pid"`
	HostPID   int                 `json:"host_pid"`
	Container *container.Identity `json:"container,omitempty"`
	Pod       *Pod                `json:"pod,omitempty"`
	Path      string              `json:"path"`
	Workers   int                 `json:"workers"`
	Waiting   string              `json:"waiting,omitempty"`
	// Error says why the pool's stats could not be read now.
	Error string `json:"error,omitempty"`
}

// List is the JSON list of the pools watched now, by ID: who each is,
// where its stats are served, and its workers.
func (d *Discovery) List(ctx context.Context) ([]byte, error) {
	pools := d.Pools()
	out := make([]ListedPool, 0, len(pools))
	for _, p := range pools {
		l := ListedPool{ID: p.ID, Server: p.Server, HostPID: p.Master.PID, Container: p.Container, Path: p.Path()}
		if st, err := p.Pool.Snapshot(ctx); err != nil {
			l.Error = err.Error()
		} else {
			l.PID, l.Workers, l.Waiting, l.Pod = st.PID, len(st.Workers), st.Observer.Waiting, st.Pod
		}
		out = append(out, l)
	}
	if d.Minified {
		return json.Marshal(out)
	}
	return json.MarshalIndent(out, "", "\t")
}
