package observer

import (
	"slices"
	"time"

	"github.com/workerstats/workerstats/observer/requests"
)

// Slot book-keeping: which process holds which slot as workers exit, are
// respawned and are reloaded, and what each slot keeps of its exited
// processes, in the pool and, as its history entry, in the kernel's map.

// slot is one worker slot: the process in it now, and the sums of those
// that held it before.
type slot struct {
	id       int
	proc     Proc // current (or last) process in the slot
	nsPID    int  // proc's pid in its own PID namespace
	alive    bool
	extra    bool     // opened while every slot was taken: a reload's overlap
	paused   bool     // the process is stopped (SIGSTOP)
	spawns   uint64   // processes that have held the slot
	history  Proc     // the exited process whose kernel entry holds past
	past     Counters // sums over the slot's exited processes
	cur      Counters // the current process's counters
	lastSeen bool     // the kernel's last read showed its process
	rss, vsz uint64   // the current process's memory and state, read at memAt
	memAt    time.Time
	lastExit *exitRecord       // how its last exited process ended
	harakiri uint64            // processes its master killed in a request
	exits    map[string]uint64 // its processes' exits, by cause
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
	s.nsPID = p.ownPIDOf(proc.PID)
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
			s.proc, s.nsPID, s.alive, s.cur, s.paused = x.proc, x.nsPID, true, x.cur, x.paused
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

// noteExit keeps how the slot's process ended (final's exit fields, and
// the request it was in as capture saw it) for its last_exit.
func (p *Pool) noteExit(s *slot, final Counters) {
	if !final.Exited {
		return
	}
	e := &exitRecord{proc: s.proc, nsPID: s.nsPID, c: final, master: p.master.PID}
	if final.NSPID != 0 {
		e.nsPID = final.NSPID
	}
	if p.Follower != nil && e.inRequest() {
		e.request = requestLine(p.Follower.LastRequest(s.proc.PID))
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
	if err := p.forgetPID(proc.PID); err != nil {
		p.Log.Warn("cannot drop exited worker from kernel map", "pid", proc.PID, "error", err)
		if p.folded == nil {
			p.folded = map[Proc]bool{}
		}
		p.folded[proc] = true
	}
}

// forgetPID drops pid's kernel entry.
func (p *Pool) forgetPID(pid int) error {
	return p.Kernel.Forget(pid)
}
