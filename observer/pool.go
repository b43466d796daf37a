package observer

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
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
type Pool struct {
	Master int
	Proc   Procfs
	Kernel Kernel
	Log    *slog.Logger
	// MaxAge lets readers arriving within it of a snapshot share it, so a
	// storm of readers costs the kernel maps one read. 0 reads every time.
	MaxAge time.Duration

	mu     sync.Mutex
	master Proc
	slots  []*slot
	// folded holds exited processes already added to their slot whose
	// kernel entry could not be removed yet: they must not count twice.
	folded map[Proc]bool
	live   map[Proc]*slot // live slots by process
	last   *Stats
	lastAt time.Time
	gauges gauges
}

// GaugeMaxAge is how long procfs and sock_diag figures (memory, owner,
// sockets and their queues) are reused across snapshots: reading them for
// every worker on every dump would cost more than the dump itself.
const GaugeMaxAge = time.Second

// gauges are the pool-wide figures read from procfs and sock_diag.
type gauges struct {
	at          time.Time
	uid, gid    int
	cwd         string
	boot        int64
	sockets     []Socket
	listenQueue uint64
}

type slot struct {
	id       int
	proc     Proc // current (or last) process in the slot
	alive    bool
	spawns   uint64   // processes that have held the slot
	past     Counters // sums over the slot's exited processes
	cur      Counters // the current process's counters
	lastSeen bool
	rss, vsz uint64 // the current process's memory, read at memAt
	memAt    time.Time
}

// Start finds the master and its current workers and starts counting.
func (p *Pool) Start(ctx context.Context) error {
	if p.Log == nil {
		p.Log = slog.Default()
	}
	_, master, err := p.Proc.Stat(p.Master)
	if err != nil {
		return err
	}
	kids, err := p.Proc.Children(p.Master)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.master = master
	if err := p.Kernel.Watch(master, kids); err != nil {
		return fmt.Errorf("watch pid %d: %w", p.Master, err)
	}
	for _, k := range kids {
		p.place(k)
	}
	p.Log.Info("watching pool", "master", p.Master, "workers", len(kids))
	return nil
}

// place puts a newly seen worker process in a slot.
func (p *Pool) place(proc Proc) *slot {
	if p.live == nil {
		p.live = map[Proc]*slot{}
	}
	for _, s := range p.slots {
		if !s.alive {
			s.proc, s.alive, s.cur = proc, true, Counters{}
			s.rss, s.vsz, s.memAt = 0, 0, time.Time{}
			s.spawns++
			p.live[proc] = s
			return s
		}
	}
	s := &slot{id: len(p.slots) + 1, proc: proc, alive: true, spawns: 1}
	p.slots = append(p.slots, s)
	p.live[proc] = s
	return s
}

// retire folds a slot's current process into its past and frees the slot.
func (p *Pool) retire(s *slot, final Counters) {
	delete(p.live, s.proc)
	s.past.Requests += final.Requests
	s.past.TX += final.TX
	s.past.RX += final.RX
	s.past.Accepts += final.Accepts
	s.past.Closes += final.Closes
	s.past.RunNs += final.RunNs
	if final.AvgRTNs != 0 {
		s.past.AvgRTNs = final.AvgRTNs
	}
	s.cur = Counters{}
	s.alive = false
}

// refresh reads the kernel and brings the slots up to date. Exited workers
// are folded into their slots and forgotten by the kernel.
func (p *Pool) refresh() error {
	all, err := p.Kernel.Workers()
	if err != nil {
		return fmt.Errorf("read kernel counters: %w", err)
	}
	var mine []Counters
	for _, c := range all {
		if c.Master == p.master.PID {
			mine = append(mine, c)
		}
	}
	// Exits first, so their slots are free for the workers that replace
	// them; then new workers in spawn order.
	sort.Slice(mine, func(i, j int) bool {
		if mine[i].Exited != mine[j].Exited {
			return mine[i].Exited
		}
		return mine[i].Start < mine[j].Start
	})
	for _, s := range p.slots {
		s.lastSeen = false
	}
	for _, c := range mine {
		proc := Proc{PID: c.PID, StartTicks: nsToTicks(c.Start)}
		s := p.live[proc]
		if c.Exited {
			if p.folded[proc] {
				if p.Kernel.Forget(c.PID) == nil {
					delete(p.folded, proc)
				}
				continue
			}
			if s == nil {
				// Spawned and gone between two reads: it still held a slot.
				s = p.place(proc)
			}
			// Exit closed whatever the process still held, without close(2).
			c.Closes = c.Accepts
			p.retire(s, c)
			if err := p.Kernel.Forget(c.PID); err != nil {
				p.Log.Warn("cannot drop exited worker from kernel map", "pid", c.PID, "error", err)
				if p.folded == nil {
					p.folded = map[Proc]bool{}
				}
				p.folded[proc] = true
			}
			continue
		}
		if s == nil {
			s = p.place(proc)
		}
		s.cur = c
		s.lastSeen = true
	}
	// A live slot the kernel no longer reports lost its entry (the map was
	// full when it forked, or it was removed): keep what it had.
	for _, s := range p.slots {
		if s.alive && !s.lastSeen {
			p.retire(s, s.cur)
		}
	}
	return nil
}

// Refresh brings the slots up to date without building a dump. The daemon
// calls it periodically so exited workers are folded even with no readers.
func (p *Pool) Refresh() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refresh()
}

// Snapshot returns the pool in uWSGI's schema, read from the kernel now or
// shared with readers of the last MaxAge. The result is shared: callers must
// not modify it.
func (p *Pool) Snapshot(ctx context.Context) (*Stats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last != nil && time.Since(p.lastAt) < p.MaxAge {
		return p.last, nil
	}
	if err := p.refresh(); err != nil {
		return nil, err
	}
	st := &Stats{
		Version:  Version,
		PID:      p.master.PID,
		Locks:    []Lock{{"snapshot": 0}},
		Sockets:  []Socket{},
		Workers:  make([]Worker, 0, len(p.slots)),
		Observer: p.Kernel.Info(),
	}
	g, err := p.readGauges(ctx)
	if err != nil {
		return nil, err
	}
	st.UID, st.GID, st.CWD = g.uid, g.gid, g.cwd
	st.Sockets, st.ListenQueue = g.sockets, g.listenQueue
	now := time.Now()
	for _, s := range p.slots {
		if s.alive && now.Sub(s.memAt) >= GaugeMaxAge {
			if s.rss, s.vsz, err = p.Proc.Memory(ctx, s.proc.PID); err != nil {
				p.Log.Debug("worker memory unknown", "pid", s.proc.PID, "error", err)
			}
			s.memAt = now
		}
		w := s.worker(g.boot)
		if s.alive {
			w.RSS, w.VSZ = s.rss, s.vsz
		}
		st.Load += uint64(w.Cores[0].InRequest)
		st.Workers = append(st.Workers, w)
	}
	p.last, p.lastAt = st, time.Now()
	return st, nil
}

// readGauges returns the pool-wide procfs and sock_diag figures, read again
// when older than GaugeMaxAge.
func (p *Pool) readGauges(ctx context.Context) (gauges, error) {
	if time.Since(p.gauges.at) < GaugeMaxAge {
		return p.gauges, nil
	}
	g := gauges{sockets: []Socket{}}
	var err error
	if g.uid, g.gid, g.cwd, err = p.Proc.Owner(ctx, p.master.PID); err != nil {
		p.Log.Debug("master owner unknown", "error", err)
	}
	// The sockets the master shares with a worker are the pool's; the
	// master's own (a stats or admin socket) are left out.
	var workerPID []int
	for _, s := range p.slots {
		if s.alive {
			workerPID = append(workerPID, s.proc.PID)
			break
		}
	}
	if socks, err := p.Proc.ListeningSockets(p.master.PID, workerPID...); err != nil {
		p.Log.Debug("master's listening sockets unknown", "error", err)
	} else {
		g.sockets = socks
		for _, s := range socks {
			g.listenQueue = max(g.listenQueue, s.Queue)
		}
	}
	if g.boot, err = p.Proc.BootTime(); err != nil {
		return gauges{}, err
	}
	g.at = time.Now()
	p.gauges = g
	return g, nil
}

// worker renders a slot as uWSGI's worker object.
func (s *slot) worker(bootUnix int64) Worker {
	c := s.cur
	w := Worker{
		ID:            s.id,
		PID:           s.proc.PID,
		Requests:      s.past.Requests + c.Requests,
		DeltaRequests: c.Requests,
		Status:        "idle",
		RunningTime:   (s.past.RunNs + c.RunNs) / 1000,
		LastSpawn:     bootUnix + int64(s.proc.StartTicks/ticksPerSecond),
		RespawnCount:  s.spawns,
		TX:            s.past.TX + c.TX,
		AvgRT:         c.AvgRTNs / 1000,
		RX:            s.past.RX + c.RX,
		Accepted:      s.past.Accepts + c.Accepts,
		Closed:        s.past.Closes + c.Closes,
	}
	if c.AvgRTNs == 0 {
		w.AvgRT = s.past.AvgRTNs / 1000
	}
	inRequest := 0
	if s.alive {
		w.Accepting = 1
		if c.InProgress > 0 {
			w.Status = "busy"
			inRequest = 1
		}
	}
	w.Apps = []App{{Requests: w.Requests}}
	w.Cores = []Core{{
		Requests:  w.Requests,
		InRequest: inRequest,
		Vars:      []string{},
		ReqInfo:   map[string]any{},
	}}
	return w
}
