package observer

import (
	"context"
	"slices"
	"time"
)

// The dump: the slots in uWSGI's schema, with the pool-wide figures read
// from procfs and sock_diag (gauges) and the listeners' queue waits.

// GaugeMaxAge is how long procfs and sock_diag figures (memory, owner,
// sockets and their queues) are reused across snapshots: reading them for
// every worker on every dump would cost more than the dump itself.
const GaugeMaxAge = time.Second

// gauges are the pool-wide figures read from procfs and sock_diag.
type gauges struct {
	at           time.Time
	uid, gid     int
	cwd          string
	boot         int64
	sockets      []Socket
	listenQueue  uint64
	listenErrors uint64 // the listeners' refusals: uWSGI's listen_queue_errors
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
		PID:      p.self.nsPID,
		HostPID:  p.master.PID,
		Locks:    []Lock{{"snapshot": 0}},
		Sockets:  []Socket{},
		Workers:  make([]Worker, 0, len(p.slots)),
		Observer: p.Kernel.Info(),
	}
	st.Observer.Target = p.Target.String()
	if p.master.PID == 0 {
		// No master: an empty pool that says why. The slots and their
		// counts are kept for when it is back.
		st.Observer.Waiting = p.waiting
		p.last, p.lastAt = st, time.Now()
		return st, nil
	}
	g, err := p.readGauges(ctx)
	if err != nil {
		return nil, err
	}
	st.UID, st.GID, st.CWD = g.uid, g.gid, g.cwd
	st.Container = p.self.identity
	if id := p.self.identity; id != nil {
		st.Pod = p.pod.of(p.Pods, id.ID)
	}
	st.Observer.Unknown = p.unknown()
	st.Sockets, st.ListenQueue, st.ListenQueueErrors = p.queueWaits(g.sockets), g.listenQueue, g.listenErrors
	now := time.Now()
	for _, s := range p.slots {
		w := p.show(ctx, s, g.boot, now)
		for _, c := range w.Cores {
			st.Load += uint64(c.InRequest)
		}
		st.Workers = append(st.Workers, w)
	}
	p.last, p.lastAt = st, time.Now()
	return st, nil
}

// show renders slot s as the dump's worker: the memory and state of its
// process read again when older than GaugeMaxAge, and with request
// capture the requests it is in as its cores.
func (p *Pool) show(ctx context.Context, s *slot, boot int64, now time.Time) Worker {
	if s.alive && now.Sub(s.memAt) >= GaugeMaxAge {
		var err error
		if s.rss, s.vsz, err = p.Proc.Memory(ctx, s.proc.PID); err != nil {
			p.Log.Debug("worker memory unknown", "pid", s.proc.PID, "error", err)
		}
		state, _ := p.Proc.State(s.proc.PID)
		s.paused = state == 'T'
		s.memAt = now
	}
	w := s.worker(boot)
	if s.alive {
		w.RSS, w.VSZ = s.rss, s.vsz
		if p.Follower != nil {
			serving(&w, p.Follower.Serving(s.proc.PID))
		}
	}
	return w
}

// readGauges returns the pool-wide procfs and sock_diag figures, read again
// when older than GaugeMaxAge.
func (p *Pool) readGauges(ctx context.Context) (gauges, error) {
	if time.Since(p.gauges.at) < GaugeMaxAge {
		return p.gauges, nil
	}
	g := gauges{sockets: []Socket{}}
	var err error
	if g.uid, g.gid, err = p.Proc.Owner(ctx, p.master.PID); err != nil {
		p.Log.Debug("master owner unknown", "error", err)
	}
	// The sockets the master shares with a worker are the pool's; the
	// master's own (a stats or admin socket) are left out.
	workerPID := 0
	for _, s := range p.slots {
		if s.alive {
			workerPID = s.proc.PID
			break
		}
	}
	socks, err := p.listeners(workerPID)
	g.cwd = p.listen.cwd
	if err != nil {
		p.Log.Debug("master's listening sockets unknown", "error", err)
	} else {
		g.sockets = socks
		for _, s := range socks {
			g.listenQueue = max(g.listenQueue, s.Queue)
			g.listenErrors += p.listenErrors(s)
		}
		p.announce(socks)
	}
	if g.boot, err = p.Proc.BootTime(); err != nil {
		return gauges{}, err
	}
	g.at = time.Now()
	p.gauges = g
	return g, nil
}

// listenErrors is how many connection attempts s's full accept queue
// refused: as the kernel side counts them, or where it cannot, s's drops.
func (p *Pool) listenErrors(s Socket) uint64 {
	if c, ok := p.Kernel.(RefusalCounter); ok {
		if n, counted := c.ListenErrors(s); counted {
			return n
		}
	}
	return s.Drops
}

// queueWaits is sockets (the gauges', left as they are) with each one's
// time in its accept queue, when the kernel side times it.
func (p *Pool) queueWaits(sockets []Socket) []Socket {
	qa, ok := p.Kernel.(QueueAware)
	if !ok {
		return sockets
	}
	out := slices.Clone(sockets)
	for i := range out {
		out[i].QueueWait = qa.QueueWait(out[i])
	}
	return out
}
