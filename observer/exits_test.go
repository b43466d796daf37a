package observer

import (
	"maps"
	"testing"
)

// TestHarakiriIsAKillInARequest: the master's fatal signal in a request is
// a harakiri when the worker did not end cleanly (uWSGI's SIGKILL,
// gunicorn's SIGABRT and exit 1), not when it finished the request and
// exited 0 (a graceful stop), nor when someone else sent it.
func TestHarakiriIsAKillInARequest(t *testing.T) {
	const master = 100
	for _, c := range []struct {
		name string
		c    Counters
		want bool
	}{
		{"uWSGI harakiri", Counters{ExitStatus: 9, KillSig: 9, Killer: master, ExitedInRequest: true, SignalledInRequest: true}, true},
		{"gunicorn timeout", Counters{ExitStatus: 1 << 8, KillSig: 6, Killer: master, SignalledInRequest: true}, true},
		{"gunicorn timeout, not obeyed within a second", Counters{ExitStatus: 9, KillSig: 9, Killer: master, SignalledInRequest: true}, true},
		{"graceful stop in a request", Counters{ExitStatus: 0, KillSig: 15, Killer: master, SignalledInRequest: true}, false},
		{"master's kill while idle", Counters{ExitStatus: 9, KillSig: 9, Killer: master}, false},
		{"another's kill in a request", Counters{ExitStatus: 9, KillSig: 9, Killer: 555, ExitedInRequest: true}, false},
		{"the kernel's kill in a request", Counters{ExitStatus: 9, KillSig: 9, Killer: 0, ExitedInRequest: true}, false},
	} {
		e := exitRecord{proc: Proc{PID: 4001}, c: c.c, master: master}
		if got := e.harakiri(); got != c.want {
			t.Errorf("%s: harakiri %v, want %v", c.name, got, c.want)
		}
	}
}

// TestPoolShowsHowWorkersEnded: a slot shows how its last process ended:
// killed by a signal and by whom (the master here, in a request: a
// harakiri, counted), or exited with a code after a signal it was asked to
// die by; a signal it handled and survived says nothing.
func TestPoolShowsHowWorkersEnded(t *testing.T) {
	p, k := testPool(t)
	k.update(4001, func(c *Counters) {
		c.Exited, c.ExitNs, c.ExitStatus, c.ExitedInRequest = true, TicksToNs(2000), 9, true
		c.KillSig, c.Killer = 9, testMaster
	})
	k.update(4003, func(c *Counters) {
		c.Exited, c.ExitNs, c.ExitStatus = true, TicksToNs(2100), 3<<8
		c.KillSig, c.Killer = 15, 777
	})
	k.update(4002, func(c *Counters) { c.KillSig, c.Killer = 1, testMaster }) // a SIGHUP it handled
	st := snapshot(t, p)
	boot := workerBySlot(t, st, 1).LastSpawn - 1000/100 // slot 1's process started at tick 1000
	want := map[int]*LastExit{
		1: {PID: 4001, HostPID: 4001, At: boot + 20, Status: "killed", Signal: "SIGKILL", By: "master", ByPID: testMaster, InRequest: 1},
		2: {PID: 4003, HostPID: 4003, At: boot + 21, Status: "exited", Code: 3, Signal: "SIGTERM", By: "pid 777", ByPID: 777},
	}
	for id, w := range want {
		if got := workerBySlot(t, st, id).LastExit; got == nil || *got != *w {
			t.Errorf("slot %d: last_exit %+v, want %+v", id, got, w)
		}
	}
	if e1, e2 := workerBySlot(t, st, 1).Exits, workerBySlot(t, st, 2).Exits; !maps.Equal(e1, map[string]uint64{"killed_by_master": 1}) ||
		!maps.Equal(e2, map[string]uint64{"exited_error": 1}) {
		t.Errorf("exits: slot 1 %v, slot 2 %v; want killed_by_master and exited_error", e1, e2)
	}
	if h := workerBySlot(t, st, 1).HarakiriCount; h != 1 {
		t.Errorf("slot 1: harakiri_count %d, want 1 (its master killed it in a request)", h)
	}
	if w := workerBySlot(t, st, 3); w.LastExit != nil || w.HarakiriCount != 0 {
		t.Errorf("slot 3 (alive, never exited): last_exit %+v harakiri %d", w.LastExit, w.HarakiriCount)
	}
}
