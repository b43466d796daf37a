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
	folded map[procKey]bool
	last   *Stats
	lastAt time.Time
}

// procKey identifies a process: pids are reused, (pid, start) is not.
type procKey struct {
	pid   int
	start uint64
}

type slot struct {
	id       int
	proc     Proc // current (or last) process in the slot
	alive    bool
	spawns   uint64   // processes that have held the slot
	past     Counters // sums over the slot's exited processes
	cur      Counters // the current process's counters
	lastSeen bool
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
	for _, s := range p.slots {
		if !s.alive {
			s.proc, s.alive, s.cur = proc, true, Counters{}
			s.spawns++
			return s
		}
	}
	s := &slot{id: len(p.slots) + 1, proc: proc, alive: true, spawns: 1}
	p.slots = append(p.slots, s)
	return s
}

func (p *Pool) slotOf(pid int, startNs uint64) *slot {
	for _, s := range p.slots {
		if s.alive && s.proc.PID == pid && s.proc.StartTicks == nsToTicks(startNs) {
			return s
		}
	}
	return nil
}

// retire folds a slot's current process into its past.
func (s *slot) retire(final Counters) {
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
		s := p.slotOf(c.PID, c.Start)
		if c.Exited {
			key := procKey{c.PID, c.Start}
			if p.folded[key] {
				if p.Kernel.Forget(c.PID) == nil {
					delete(p.folded, key)
				}
				continue
			}
			if s == nil {
				// Spawned and gone between two reads: it still held a slot.
				s = p.place(Proc{PID: c.PID, StartTicks: nsToTicks(c.Start)})
			}
			s.retire(c)
			if err := p.Kernel.Forget(c.PID); err != nil {
				p.Log.Warn("cannot drop exited worker from kernel map", "pid", c.PID, "error", err)
				if p.folded == nil {
					p.folded = map[procKey]bool{}
				}
				p.folded[key] = true
			}
			continue
		}
		if s == nil {
			s = p.place(Proc{PID: c.PID, StartTicks: nsToTicks(c.Start)})
		}
		s.cur = c
		s.lastSeen = true
	}
	// A live slot the kernel no longer reports lost its entry (the map was
	// full when it forked, or it was removed): keep what it had.
	for _, s := range p.slots {
		if s.alive && !s.lastSeen {
			s.retire(s.cur)
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
	var err error
	st.UID, st.GID, st.CWD, err = p.Proc.Owner(ctx, p.master.PID)
	if err != nil {
		p.Log.Debug("master owner unknown", "error", err)
	}
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
		st.Sockets = socks
		for _, s := range socks {
			st.ListenQueue = max(st.ListenQueue, s.Queue)
		}
	}
	boot, err := p.Proc.BootTime()
	if err != nil {
		return nil, err
	}
	for _, s := range p.slots {
		w := s.worker(boot)
		if s.alive {
			if w.RSS, w.VSZ, err = p.Proc.Memory(ctx, s.proc.PID); err != nil {
				p.Log.Debug("worker memory unknown", "pid", s.proc.PID, "error", err)
			}
		}
		st.Load += uint64(w.Cores[0].InRequest)
		st.Workers = append(st.Workers, w)
	}
	p.last, p.lastAt = st, time.Now()
	return st, nil
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
