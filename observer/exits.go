package observer

import (
	"strconv"
	"strings"
)

// exitRecord is what a slot keeps of its last exited process, to show as
// its last_exit.
type exitRecord struct {
	proc    Proc
	nsPID   int      // its pid in its own PID namespace
	c       Counters // its final counters: ExitStatus, KillSig, Killer...
	master  int      // the pool's master when it exited
	request string   // "METHOD URI" of the request it was in, if captured
}

// signalNames are the fatal signals the kernel side reports, by number
// (x86-64 and arm64 alike).
var signalNames = map[int]string{
	1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE", 9: "SIGKILL",
	11: "SIGSEGV", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM", 24: "SIGXCPU", 25: "SIGXFSZ", 31: "SIGSYS",
}

func signalName(sig int) string {
	if n, ok := signalNames[sig]; ok {
		return n
	}
	return "signal " + strconv.Itoa(sig)
}

// killed reports the signal that ended the process, 0 if it exited.
func (e *exitRecord) killed() int { return int(e.c.ExitStatus & 0x7f) }

// harakiri says the master killed the process in a request: uWSGI's
// harakiri (SIGKILL), gunicorn's worker timeout (SIGABRT, which the worker
// handles by closing the request's connection and exiting 1, or, when it
// does not within a second, the SIGKILL gunicorn follows it with). A worker
// the master asked to stop gracefully in a request finishes it and exits
// 0: no harakiri.
func (e *exitRecord) harakiri() bool {
	if e.c.KillSig == 0 || e.master == 0 || e.c.Killer != e.master {
		return false
	}
	return e.c.ExitedInRequest || (e.c.SignalledInRequest && e.c.ExitStatus != 0)
}

// inRequest says the process was in a request when it exited, or when it
// was sent a fatal signal (the first of a master's two, say: gunicorn
// follows a SIGABRT its worker does not obey within a second by SIGKILL).
func (e *exitRecord) inRequest() bool { return e.c.ExitedInRequest || e.c.SignalledInRequest }

// sender names who sent the process's last fatal signal.
func (e *exitRecord) sender() string {
	switch e.c.Killer {
	case 0:
		return "kernel"
	case KillerOOM:
		return "oom killer"
	case e.master:
		return "master"
	case e.proc.PID:
		return "itself"
	}
	return "pid " + strconv.Itoa(e.c.Killer)
}

// render shows the record as the dump's last_exit; bootUnix is the boot
// time its exit time counts from.
func (e *exitRecord) render(bootUnix int64) *LastExit {
	x := &LastExit{PID: e.nsPID, HostPID: e.proc.PID, Status: "exited", Code: int(e.c.ExitStatus >> 8 & 0xff), Request: e.request}
	if e.c.ExitNs != 0 {
		x.At = bootUnix + int64(e.c.ExitNs/1e9)
	}
	if e.inRequest() {
		x.InRequest = 1
	}
	sig := e.killed()
	if sig != 0 {
		x.Status, x.Code, x.Signal = "killed", 0, signalName(sig)
	}
	// Who sent it, when the signal the kernel saw is the one that killed
	// it, or (an exit) the last one it was asked to die by.
	if e.c.KillSig != 0 && (sig == 0 || sig == e.c.KillSig) {
		x.Signal, x.By = signalName(e.c.KillSig), e.sender()
		if e.c.Killer > 0 {
			x.ByPID = e.c.Killer
		}
	}
	return x
}

// cause is how the process ended, as /metrics counts exits: "exited",
// "exited_error" (a non-zero code), or "killed_by_" the sender's kind
// (master, kernel, oom, itself, other, or unknown when no fatal signal was
// seen).
func (e *exitRecord) cause() string {
	sig := e.killed()
	switch {
	case sig == 0 && e.c.ExitStatus == 0:
		return "exited"
	case sig == 0:
		return "exited_error"
	case e.c.KillSig != sig:
		return "killed_by_unknown"
	}
	switch by := e.sender(); by {
	case "master", "kernel", "itself":
		return "killed_by_" + by
	case "oom killer":
		return "killed_by_oom"
	}
	return "killed_by_other"
}

// requestLine is "METHOD URI" of a request's vars, or "".
func requestLine(vars []string) string {
	var method, uri string
	for _, v := range vars {
		if m, ok := strings.CutPrefix(v, "REQUEST_METHOD="); ok {
			method = m
		} else if u, ok := strings.CutPrefix(v, "REQUEST_URI="); ok {
			uri = u
		}
	}
	return strings.TrimSpace(method + " " + uri)
}
