package observer

import (
	"fmt"
	"sort"
)

// Reading the kernel: each refresh folds the exits it shows into their
// slots and places the workers it shows for the first time.

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
				_ = p.forgetPID(m)
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
		if c.NSPID != 0 {
			s.nsPID = c.NSPID
		}
		s.lastSeen = true
		return
	}
	switch {
	case p.history[proc]:
	case p.folded[proc]:
		if p.forgetPID(c.PID) == nil {
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
		if p.Proc.Running(s.proc) {
			s.past.add(s.cur)
			s.cur = Counters{}
			continue
		}
		p.retire(s, s.cur)
	}
}
