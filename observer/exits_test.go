package observer

import "testing"

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
