package observer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A pidfile holds the pid its writer had in its own PID namespace: the
// host's for a master on the host, the container's for one in a container
// (pid 1, often). It is resolved to the host's process here: the host's
// process of that pid when that process is in the host's namespace, else
// the process whose own pid it is, in whichever container sees the file
// at the same path.

// findByPIDFile returns the process t's pidfile names now. hint is the
// master found last (zero for none): while the file names it, it is
// returned without a look at other processes, and when it does not, a
// process in hint's cgroup is preferred.
func (t Target) findByPIDFile(p Procfs, hint masterHint) (Proc, error) {
	pid, err := readPIDFile(t.PIDFile)
	if err != nil {
		return Proc{}, err
	}
	proc, err := p.pidfileProc(t.PIDFile, pid, hint)
	if err != nil {
		return Proc{}, err
	}
	// A file left by a master that died names a pid the system may have
	// given to another process since: one started after the file was
	// written is not the master that wrote it.
	if fi, err := os.Stat(t.PIDFile); err == nil {
		if boot, err := p.BootTime(); err == nil {
			started := boot + int64(proc.StartTicks/ticksPerSecond)
			if fi.ModTime().Unix() < started-1 {
				return Proc{}, notFound("pidfile %s is stale: pid %d started after it was written", t.PIDFile, pid)
			}
		}
	}
	return proc, nil
}

// pidfileProc resolves pid, read from the pidfile at path, to a host
// process: hint if it is still the process whose own pid that is; else
// the one process whose own pid it is: the host's process pid when that
// one is in the procfs mount's PID namespace, or one in a container.
// Several (a pid 1 in every container) are narrowed to those whose mount
// namespace has the file (none when none has it: the writer is gone), then,
// each step kept only if it leaves one at least, to those in hint's cgroup
// (a master restarted in its container) and to the pre-fork masters.
func (p Procfs) pidfileProc(path string, pid int, hint masterHint) (Proc, error) {
	if hint.proc.PID != 0 && p.ownPID(hint.proc) == pid {
		return hint.proc, nil
	}
	if _, proc, err := p.Stat(pid); err == nil && pid != 1 && p.ownPID(proc) == pid {
		return proc, nil // the host's own: no container's pid 1 to take it for
	}
	cands, err := p.withOwnPID(pid)
	if err != nil {
		return Proc{}, err
	}
	cands = p.seeing(cands, path)
	// Then the likeliest: a master just restarted may not have forked
	// its workers yet when its pidfile is read.
	if hint.cgroup != "" {
		cands = narrow(cands, func(pi procStat) bool { return p.cgroup(pi.PID) == hint.cgroup })
	}
	cands = narrow(cands, p.isMaster)
	switch len(cands) {
	case 0:
		return Proc{}, notFound("pidfile %s names pid %d, which is not running, on the host or in a container", path, pid)
	case 1:
		return cands[0].Proc, nil
	}
	pids := make([]string, len(cands))
	for i, c := range cands {
		pids[i] = strconv.Itoa(c.PID)
	}
	return Proc{}, fmt.Errorf("%w: pidfile %s names pid %d, the own pid of host pids %s: give the master with --pid", ErrSeveralMasters, path, pid, strings.Join(pids, ", "))
}

// withOwnPID lists the processes whose own pid (in their PID namespace)
// is pid: one read of /proc/PID/status each.
func (p Procfs) withOwnPID(pid int) ([]procStat, error) {
	ents, err := os.ReadDir(p.Root)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []procStat
	for _, e := range ents {
		host, err := strconv.Atoi(e.Name())
		if err != nil || host <= 0 {
			continue
		}
		if ns, err := p.NSPID(host); err != nil || ns != pid {
			continue
		}
		// The host's init (no parent) is pid 1 too, and writes no
		// server's pidfile.
		if st, err := p.stat(host); err == nil && st.PPID != 0 {
			out = append(out, st)
		}
	}
	return out, nil
}

// ownPID is proc's pid in its own PID namespace, 0 when it is gone.
func (p Procfs) ownPID(proc Proc) int {
	if _, now, err := p.Stat(proc.PID); err != nil || now != proc {
		return 0
	}
	ns, err := p.NSPID(proc.PID)
	if err != nil {
		return 0
	}
	return ns
}

// masterHint is the master a pool found last: the process, and its
// cgroup file as read when it was found.
type masterHint struct {
	proc   Proc
	cgroup string
}

// cgroup is pid's cgroup file, "" when it cannot be read.
func (p Procfs) cgroup(pid int) string {
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return ""
	}
	return string(b)
}

// narrow keeps the candidates that pass keep, unless none does.
func narrow(cands []procStat, keep func(procStat) bool) []procStat {
	var kept []procStat
	for _, c := range cands {
		if keep(c) {
			kept = append(kept, c)
		}
	}
	if len(kept) == 0 {
		return cands
	}
	return kept
}

// seeing keeps the candidates whose mount namespace has the file at path
// (a process that cannot see a pidfile did not write it); where that
// cannot be told for any, those it cannot be told for.
func (p Procfs) seeing(cands []procStat, path string) []procStat {
	var yes, unknown []procStat
	for _, c := range cands {
		switch p.sees(c.PID, path) {
		case visYes:
			yes = append(yes, c)
		case visUnknown:
			unknown = append(unknown, c)
		}
	}
	if len(yes) > 0 {
		return yes
	}
	return unknown
}

// isMaster reports whether pi looks like a pre-fork master, as
// Candidates has them: it has children of its own command name, and is
// not the host's init.
func (p Procfs) isMaster(pi procStat) bool {
	if pi.PPID == 0 {
		return false
	}
	kids, err := p.Children(pi.PID)
	if err != nil {
		return false
	}
	for _, k := range kids {
		if st, err := p.stat(k.PID); err == nil && st.Comm == pi.Comm {
			return true
		}
	}
	return false
}

// readPIDFile reads the pid a server wrote, tolerating the trailing newline
// and spaces every server adds.
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, notFound("pidfile %s does not exist", path)
		}
		if errors.Is(err, fs.ErrPermission) {
			// The daemon keeps no CAP_DAC_READ_SEARCH once started.
			return 0, notFound("pidfile %s cannot be read by uid %d without privileges: make it and the directories above it readable by that user, or give the master by its name", path, os.Geteuid())
		}
		return 0, fmt.Errorf("read pidfile: %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		// A server truncates the file before writing its pid.
		return 0, notFound("pidfile %s is empty", path)
	}
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pidfile %s holds %q, not a pid", path, truncateString(s, 32))
	}
	return pid, nil
}

func truncateString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
