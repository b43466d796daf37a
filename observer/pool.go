package observer

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/workerstats/workerstats/observer/requests"
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
	Log    *slog.Logger
	// MaxAge lets readers arriving within it of a snapshot share it, so a
	// storm of readers costs the kernel maps one read. 0 reads every time.
	MaxAge time.Duration

	mu     sync.Mutex
	master Proc // zero while the master is not found
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
	listenDrops uint64 // the listeners' Drops: uWSGI's listen_queue_errors
}

type slot struct {
	id       int
	proc     Proc // current (or last) process in the slot
	alive    bool
	extra    bool     // opened while every slot was taken: a reload's overlap
	paused   bool     // the process is stopped (SIGSTOP)
	spawns   uint64   // processes that have held the slot
	history  Proc     // the exited process whose kernel entry holds past
	past     Counters // sums over the slot's exited processes
	cur      Counters // the current process's counters
	lastSeen bool
	rss, vsz uint64 // the current process's memory and state, read at memAt
	memAt    time.Time
	lastExit *exitRecord       // how its last exited process ended
	harakiri uint64            // processes its master killed in a request
	exits    map[string]uint64 // its processes' exits, by cause
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

// locate checks the master is still the process it was, and finds it (again)
// when it is not or, for a pidfile, when the file names another process.
func (p *Pool) locate() error {
	cur := p.master
	alive := false
	if cur.PID != 0 {
		_, now, err := p.Proc.Stat(cur.PID)
		alive = err == nil && now == cur
	}
	// A pidfile is read every time, since a restarted or upgraded master
	// rewrites it; a name is looked for (a scan of every process) only
	// when the master is gone; a pid names one process, never another.
	switch {
	case alive && p.Target.PIDFile == "":
		return nil
	case !alive && cur.PID != 0 && !p.Target.Follows():
		p.lose(notFound("a master given by its pid cannot be followed: give its pidfile or its name to follow a restarted master"))
		return nil
	case !alive && cur.PID == 0 && p.waiting != "" && !p.Target.Follows():
		return nil
	}
	found, err := p.Target.Find(p.Proc)
	if err != nil {
		if alive {
			return nil // an unreadable or stale pidfile: keep the live master
		}
		p.lose(err)
		return err
	}
	if found == cur {
		return nil
	}
	return p.adopt(found)
}

// lose empties the pool: the master is gone or not found.
func (p *Pool) lose(why error) {
	msg := why.Error()
	if p.master.PID != 0 {
		msg = fmt.Sprintf("master pid %d exited; %s", p.master.PID, msg)
		p.master = Proc{}
	}
	if p.Target.Follows() {
		msg += "; observation resumes when the master is back"
	}
	if msg != p.waiting {
		p.Log.Warn("no master: the pool is empty", "target", p.Target.String(), "reason", msg)
		p.waiting = msg
		p.last = nil
	}
}

// adopt starts watching m as the master. Workers of a previous master keep
// their slots until they exit.
func (p *Pool) adopt(m Proc) error {
	kids, err := p.Proc.Children(m.PID)
	if err != nil {
		return fmt.Errorf("workers of pid %d: %w", m.PID, err)
	}
	if err := p.Kernel.Watch(m, kids); err != nil {
		return fmt.Errorf("watch pid %d: %w", m.PID, err)
	}
	if p.masters == nil {
		p.masters = map[int]bool{}
	}
	if p.master.PID != 0 {
		p.Log.Info("the master changed", "target", p.Target.String(), "old", p.master.PID, "new", m.PID)
	}
	p.master, p.waiting, p.last = m, "", nil
	p.masters[m.PID] = true
	if p.settled {
		// The slots' history moves to the new master, where a restarted
		// daemon will look for it.
		for _, s := range p.slots {
			if s.history.PID != 0 {
				p.remember(s, s.history, Counters{PID: s.history.PID})
			}
		}
	} else if err := p.replay(m); err != nil {
		return err
	}
	for _, k := range kids {
		if p.live[k] == nil {
			p.place(k)
		}
	}
	p.settled = true
	p.Log.Info("watching pool", "target", p.Target.String(), "master", m.PID, "workers", len(kids))
	p.adoptListeners(m)
	var socks []Socket
	if len(kids) > 0 {
		var err error
		if socks, err = p.listeners(kids[0].PID); err != nil {
			p.Log.Debug("master's listening sockets unknown", "error", err)
		}
	}
	if socks != nil || !p.listen.unread {
		// Unread is not none: the kernel's answer will say.
		p.announce(socks)
	}
	return nil
}

// announce tells a ListenerAware kernel the master's listening sockets,
// when they are not what it was last told.
func (p *Pool) announce(socks []Socket) {
	la, ok := p.Kernel.(ListenerAware)
	if !ok {
		return
	}
	if p.announcedOf == p.master.PID && (len(socks) == 0 || slices.Equal(socketNames(socks), p.announced)) {
		return // none read is not none there: a reload's exiting worker, say
	}
	if err := la.Listening(p.master.PID, socks); err != nil {
		p.Log.Warn("cannot tell the kernel side the pool's listening sockets", "error", err)
		return
	}
	p.announced, p.announcedOf = socketNames(socks), p.master.PID
}

// socketNames lists sockets' protocols and names, in order.
func socketNames(socks []Socket) []string {
	names := make([]string, 0, len(socks))
	for _, s := range socks {
		names = append(names, s.Proto+" "+s.Name)
	}
	slices.Sort(names)
	return names
}

// replay rebuilds the slots from what the kernel holds for master m, in
// the order its processes started and exited: after a daemon restart on
// pinned maps, the slots' history entries (Kernel.Remember) and the
// workers that ran or exited meanwhile. On a first start it places the
// current workers in start order.
func (p *Pool) replay(m Proc) error {
	all, err := p.Kernel.Workers()
	if err != nil {
		return fmt.Errorf("read kernel counters: %w", err)
	}
	type event struct {
		at   uint64
		exit bool
		c    Counters
	}
	var evs []event
	for _, c := range all {
		if c.Master != m.PID {
			continue
		}
		evs = append(evs, event{at: c.Start, c: c})
		if c.Exited {
			evs = append(evs, event{at: max(c.ExitNs, c.Start), exit: true, c: c})
		}
	}
	// Workers added by Watch have their start in procfs's 10 ms ticks:
	// those started in one tick were forked in pid order.
	sort.SliceStable(evs, func(i, j int) bool {
		if evs[i].at != evs[j].at {
			return evs[i].at < evs[j].at
		}
		if evs[i].exit != evs[j].exit {
			return !evs[i].exit // a process's exit after its start
		}
		return evs[i].c.PID < evs[j].c.PID
	})
	kept := p.keptSlots()
	for _, e := range evs {
		proc := Proc{PID: e.c.PID, StartTicks: NsToTicks(e.c.Start)}
		if !e.exit {
			if p.live[proc] == nil {
				if s := p.placeIn(proc, kept[proc]); e.c.Spawns > 0 {
					s.spawns = e.c.Spawns
				}
			}
			continue
		}
		s := p.live[proc]
		if s == nil {
			continue
		}
		if e.c.Spawns == 0 {
			p.exited(s, proc, e.c)
			continue
		}
		// A history entry: its counters are the slot's sums.
		s.past = Counters{}
		p.retire(s, e.c)
		s.history = proc
		p.remembered(proc)
	}
	return nil
}

// exited folds an exited process into its slot and keeps its kernel entry
// as the slot's history.
func (p *Pool) exited(s *slot, proc Proc, c Counters) {
	// Exit closed whatever the process still held, without close(2).
	c.Closes = c.Accepts
	p.retire(s, c)
	p.remember(s, proc, c)
}

// remember makes proc's kernel entry hold slot s's history, in place of
// the slot's previous history entry.
func (p *Pool) remember(s *slot, proc Proc, c Counters) {
	h := s.past
	h.PID, h.Start, h.ExitNs = proc.PID, c.Start, c.ExitNs
	h.Spawns = s.spawns
	if s.alive {
		h.Spawns-- // the process now in the slot came after
	}
	master := p.master.PID
	if master == 0 {
		master = c.Master
	}
	if err := p.Kernel.Remember(master, h); err != nil {
		p.Log.Debug("cannot keep a slot's history in the kernel map", "pid", proc.PID, "error", err)
		p.forget(proc)
		return
	}
	if old := s.history; old.PID != 0 && old != proc {
		delete(p.history, old)
		p.forget(old)
	}
	s.history = proc
	p.remembered(proc)
}

func (p *Pool) remembered(proc Proc) {
	if p.history == nil {
		p.history = map[Proc]bool{}
	}
	p.history[proc] = true
}

// forget drops an exited process's kernel entry; one that cannot be
// dropped is marked folded, so it is never added twice.
func (p *Pool) forget(proc Proc) {
	if err := p.Kernel.Forget(proc.PID); err != nil {
		p.Log.Warn("cannot drop exited worker from kernel map", "pid", proc.PID, "error", err)
		if p.folded == nil {
			p.folded = map[Proc]bool{}
		}
		p.folded[proc] = true
	}
}

// place puts a newly seen worker process in a slot: the lowest free one,
// else a new one; a SlotKeeper kernel keeps which.
func (p *Pool) place(proc Proc) *slot {
	if p.settled {
		p.listen.stale = true // a respawn or a reload: listeners may have changed
	}
	if p.live == nil {
		p.live = map[Proc]*slot{}
	}
	for _, s := range p.slots {
		if !s.alive {
			return p.take(s, proc, "a worker took a free slot")
		}
	}
	id := 1
	if n := len(p.slots); n > 0 {
		id = p.slots[n-1].id + 1
	}
	s := &slot{id: id, extra: p.settled}
	p.slots = append(p.slots, s)
	return p.take(s, proc, "a worker took a new slot")
}

// placeIn puts a process a replay finds in slot id, as the kernel kept it
// (opening the slots up to id), when that slot is free; else, or with no
// id, where place would.
func (p *Pool) placeIn(proc Proc, id int) *slot {
	if id <= 0 || id > 1<<16 {
		return p.place(proc)
	}
	if p.live == nil {
		p.live = map[Proc]*slot{}
	}
	for n := len(p.slots); n == 0 || p.slots[n-1].id < id; n = len(p.slots) {
		next := 1
		if n > 0 {
			next = p.slots[n-1].id + 1
		}
		p.slots = append(p.slots, &slot{id: next, extra: p.settled})
	}
	i := slices.IndexFunc(p.slots, func(s *slot) bool { return s.id == id })
	if i < 0 || p.slots[i].alive {
		return p.place(proc)
	}
	return p.take(p.slots[i], proc, "a worker took the slot it had")
}

// take puts proc in the free slot s.
func (p *Pool) take(s *slot, proc Proc, why string) *slot {
	s.proc, s.alive, s.cur = proc, true, Counters{}
	s.rss, s.vsz, s.paused, s.memAt = 0, 0, false, time.Time{}
	s.spawns++
	p.live[proc] = s
	p.Log.Debug(why, "pid", proc.PID, "slot", s.id, "spawns", s.spawns, "extra", s.extra)
	if sk, ok := p.Kernel.(SlotKeeper); ok {
		if err := sk.KeepSlot(proc, s.id); err != nil {
			p.Log.Debug("cannot keep a worker's slot in the kernel map", "pid", proc.PID, "error", err)
		}
	}
	return s
}

// keptSlots is the slots a SlotKeeper kernel kept, by process.
func (p *Pool) keptSlots() map[Proc]int {
	sk, ok := p.Kernel.(SlotKeeper)
	if !ok {
		return nil
	}
	kept, err := sk.KeptSlots()
	if err != nil {
		p.Log.Debug("cannot read the slots kept in the kernel map", "error", err)
	}
	return kept
}

// noteExit keeps how the slot's process ended (final's exit fields, and
// the request it was in as capture saw it) for its last_exit.
func (p *Pool) noteExit(s *slot, final Counters) {
	if !final.Exited {
		return
	}
	e := &exitRecord{proc: s.proc, c: final, master: p.master.PID}
	if ra, ok := p.Kernel.(RequestAware); ok && e.inRequest() {
		e.request = requestLine(ra.LastRequest(s.proc.PID))
	}
	if e.harakiri() {
		s.harakiri++
	}
	if s.exits == nil {
		s.exits = map[string]uint64{}
	}
	s.exits[e.cause()]++
	s.lastExit = e
}

// retire folds a slot's current process into its past and frees the slot.
// A worker in a later extra slot then moves down into it (see Pool).
func (p *Pool) retire(s *slot, final Counters) {
	p.Log.Debug("a worker left its slot", "pid", s.proc.PID, "slot", s.id, "requests", final.Requests)
	delete(p.live, s.proc)
	s.past.add(final)
	p.noteExit(s, final)
	s.cur = Counters{}
	s.alive = false
	for i, x := range p.slots {
		if x.id > s.id && x.extra && x.alive {
			s.proc, s.alive, s.cur, s.paused = x.proc, true, x.cur, x.paused
			s.rss, s.vsz, s.memAt, s.lastSeen = x.rss, x.vsz, x.memAt, x.lastSeen
			s.past.add(x.past)
			s.spawns += x.spawns
			if x.history.PID != 0 {
				delete(p.history, x.history)
				p.forget(x.history)
			}
			p.live[s.proc] = s
			p.slots = append(p.slots[:i], p.slots[i+1:]...)
			return
		}
	}
}

// add sums a process's final counters into a slot's past.
func (c *Counters) add(final Counters) {
	c.Requests += final.Requests
	c.Unanswered += final.Unanswered
	c.TX += final.TX
	c.RX += final.RX
	c.Accepts += final.Accepts
	c.Closes += final.Closes
	c.RunNs += final.RunNs
	if final.AvgRTNs != 0 {
		c.AvgRTNs = final.AvgRTNs
	}
	if final.Followed != nil {
		if c.Followed == nil {
			c.Followed = &requests.Summary{}
		}
		c.Followed.Add(*final.Followed)
	}
}

// refresh reads the kernel and brings the slots up to date. Exited workers
// are folded into their slots and forgotten by the kernel.
func (p *Pool) refresh() error {
	mine, newest, err := p.read()
	if err != nil {
		return err
	}
	// Exits first, so their slots are free for the workers that replace
	// them; then new workers in spawn order.
	sort.Slice(mine, func(i, j int) bool {
		if mine[i].Exited != mine[j].Exited {
			return mine[i].Exited
		}
		if mine[i].Start != mine[j].Start {
			return mine[i].Start < mine[j].Start
		}
		return mine[i].PID < mine[j].PID
	})
	for _, s := range p.slots {
		s.lastSeen = false
	}
	for _, c := range mine {
		proc := Proc{PID: c.PID, StartTicks: NsToTicks(c.Start)}
		if s := p.live[proc]; s != nil || p.known(proc) || c.Start <= newest {
			p.update(s, proc, c)
		}
	}
	p.keepLost()
	return nil
}

// read returns the kernel's entries for the pool's masters, and the start
// of the newest process it may place in a slot.
//
// One pass over the kernel map is not a snapshot: a worker forked while it
// runs may be seen when one forked before it is not (its entry went into a
// part of the map already read), and an exit before that fork may be missed.
// Placed as seen, a reload's new workers would take each other's slots.
// So when the pass shows a new process, a second pass is read: every
// process forked, and every exit, before the first pass's newest process
// is in it. New processes started after that one wait for the next refresh.
func (p *Pool) read() (mine []Counters, newest uint64, err error) {
	mine, err = p.readMine()
	if err != nil {
		return nil, 0, err
	}
	for _, c := range mine {
		proc := Proc{PID: c.PID, StartTicks: NsToTicks(c.Start)}
		if p.live[proc] == nil && !p.known(proc) {
			newest = max(newest, c.Start)
		}
	}
	if newest == 0 {
		return mine, 0, nil
	}
	mine, err = p.readMine()
	return mine, newest, err
}

// readMine reads the kernel's entries of the pool's masters, and stops
// watching a previous master with no worker left.
func (p *Pool) readMine() ([]Counters, error) {
	all, err := p.Kernel.Workers()
	if err != nil {
		return nil, fmt.Errorf("read kernel counters: %w", err)
	}
	var mine []Counters
	seen := map[int]bool{}
	for _, c := range all {
		if p.masters[c.Master] {
			mine = append(mine, c)
			seen[c.Master] = true
		}
	}
	for m := range p.masters {
		if !seen[m] && m != p.master.PID {
			delete(p.masters, m)
			if m != 0 {
				_ = p.Kernel.Forget(m)
			}
		}
	}
	return mine, nil
}

// known says an exited process was folded already: its entry is a slot's
// history, or is to be dropped.
func (p *Pool) known(proc Proc) bool {
	return p.history[proc] || p.folded[proc]
}

// update applies one kernel entry: a live worker's counters to its slot
// (placing a new one), an exit folded into its slot.
func (p *Pool) update(s *slot, proc Proc, c Counters) {
	if !c.Exited {
		if s == nil {
			s = p.place(proc)
		}
		s.cur = c
		s.lastSeen = true
		return
	}
	switch {
	case p.history[proc]:
	case p.folded[proc]:
		if p.Kernel.Forget(c.PID) == nil {
			delete(p.folded, proc)
		}
	default:
		if s == nil {
			// Spawned and gone between two reads: it still held a slot.
			s = p.place(proc)
		}
		p.exited(s, proc, c)
	}
}

// keepLost handles a live slot the kernel no longer reports: it lost its
// entry (the map was full when it forked, or it was removed). What it had
// is kept, and the process stays in its slot for as long as procfs shows
// it running. (retire may move a slot down: range over a copy.)
func (p *Pool) keepLost() {
	for _, s := range append([]*slot(nil), p.slots...) {
		if !s.alive || s.lastSeen {
			continue
		}
		if _, now, err := p.Proc.Stat(s.proc.PID); err == nil && now == s.proc {
			s.past.add(s.cur)
			s.cur = Counters{}
			continue
		}
		p.retire(s, s.cur)
	}
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
	st.Observer.Unknown = p.unknown()
	st.Sockets, st.ListenQueue, st.ListenQueueErrors = p.queueWaits(g.sockets), g.listenQueue, g.listenDrops
	now := time.Now()
	for _, s := range p.slots {
		if s.alive && now.Sub(s.memAt) >= GaugeMaxAge {
			if s.rss, s.vsz, err = p.Proc.Memory(ctx, s.proc.PID); err != nil {
				p.Log.Debug("worker memory unknown", "pid", s.proc.PID, "error", err)
			}
			state, _ := p.Proc.State(s.proc.PID)
			s.paused = state == 'T'
			s.memAt = now
		}
		w := s.worker(g.boot)
		if s.alive {
			w.RSS, w.VSZ = s.rss, s.vsz
			if ra, ok := p.Kernel.(RequestAware); ok {
				serving(&w, ra.Serving(s.proc.PID))
			}
		}
		for _, c := range w.Cores {
			st.Load += uint64(c.InRequest)
		}
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
			g.listenDrops += s.Drops
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
