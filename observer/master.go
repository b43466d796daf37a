package observer

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sort"
)

// Finding the master and adopting it: whether it is still the process it
// was, losing it, watching a new one (its workers, its listening sockets),
// and replaying what the kernel kept of its slots after a daemon restart.

// locate checks the master is still the process it was, and finds it (again)
// when it is not or, for a pidfile, when the file names another process.
func (p *Pool) locate() error {
	cur := p.master
	alive := cur.PID != 0 && p.Proc.Running(cur)
	// A pidfile is read every time, since a restarted or upgraded master
	// rewrites it; a name is looked for (a scan of every process) only
	// when the master is gone; a pid names one process, never another.
	switch {
	case alive && p.Target.PIDFile == "":
		return nil
	case !alive && cur.PID != 0 && !p.Target.Follows():
		p.lose(notFound("%s", p.pidGone()))
		return nil
	case !alive && cur.PID == 0 && p.waiting != "" && !p.Target.Follows():
		return nil
	}
	found, err := p.Target.find(p.Proc, p.self.hint)
	if err != nil {
		if alive {
			return nil // an unreadable or stale pidfile: keep the live master
		}
		p.lose(err)
		return err
	}
	if found == cur && alive {
		return nil
	}
	if !p.Proc.Running(found) {
		// A zombie its parent has not reaped: exited, though its pidfile
		// or its name still finds it. A live master stays, as with a
		// stale pidfile.
		if alive {
			return nil
		}
		p.lose(notFound("%s finds pid %d, which has exited (not yet reaped)", p.Target, found.PID))
		return nil
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
		p.self = masterSelf{hint: p.self.hint} // to find it again after a restart
	}
	if p.Target.Follows() {
		msg += "; observation resumes when the master is back"
	}
	if msg != p.waiting {
		level := slog.LevelWarn
		if p.discovered {
			level = slog.LevelInfo // routine: discovery drops the pool
		}
		p.Log.Log(context.Background(), level, "no master: the pool is empty", "target", p.Target.String(), "reason", msg)
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
	p.self = p.identify(m)
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
	if socks != nil || !(p.listen.unread || p.listen.foreign) {
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
	evs := replayEvents(all, m.PID)
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

// replayEvent is a process's start, or its exit, as a replay takes them.
type replayEvent struct {
	at   uint64
	exit bool
	c    Counters
}

// replayEvents is the starts and exits of master's processes in all, in
// the order they came.
func replayEvents(all []Counters, master int) []replayEvent {
	var evs []replayEvent
	for _, c := range all {
		if c.Master != master {
			continue
		}
		evs = append(evs, replayEvent{at: c.Start, c: c})
		if c.Exited {
			evs = append(evs, replayEvent{at: max(c.ExitNs, c.Start), exit: true, c: c})
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
	return evs
}
