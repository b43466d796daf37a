package observer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// ErrNoTarget means a pool's master cannot be found now. A Target that
// Follows may find it later.
var ErrNoTarget = errors.New("master not found")

// ErrSeveralMasters is returned by Find for a name that several masters
// have: a target that must name one by pid or pidfile.
var ErrSeveralMasters = errors.New("more than one master has this name")

// notFoundError says why the master is not found; it is an ErrNoTarget.
type notFoundError struct{ msg string }

func (e notFoundError) Error() string { return e.msg }
func (e notFoundError) Unwrap() error { return ErrNoTarget }

func notFound(format string, args ...any) error {
	return notFoundError{fmt.Sprintf(format, args...)}
}

// Target names a pool's master process in one of three ways.
type Target struct {
	PID     int    // this process, and no other
	PIDFile string // the process the file names, read again when it changes
	Name    string // the one topmost process of this name: uwsgi, gunicorn, php-fpm, nginx...
}

// String describes the target as the user gave it.
func (t Target) String() string {
	switch {
	case t.PIDFile != "":
		return "pidfile " + t.PIDFile
	case t.Name != "":
		return "name " + t.Name
	case t.PID > 0:
		return "pid " + strconv.Itoa(t.PID)
	}
	return "no target"
}

// Follows reports whether the target can name another process later: a
// pidfile rewritten by a restarted master, or a name.
func (t Target) Follows() bool { return t.PIDFile != "" || t.Name != "" }

// Valid reports whether exactly one way of naming the master is set.
func (t Target) Valid() error {
	n := 0
	if t.PID != 0 {
		n++
		if t.PID < 0 {
			return fmt.Errorf("pid %d is not a process id", t.PID)
		}
	}
	if t.PIDFile != "" {
		n++
	}
	if t.Name != "" {
		n++
	}
	if n != 1 {
		return errors.New("give exactly one of pid, pidfile or name")
	}
	return nil
}

// Find returns the target's master as it is now. Its errors wrap
// ErrNoTarget when the master is not there (yet) and say what was looked at.
func (t Target) Find(p Procfs) (Proc, error) { return t.find(p, masterHint{}) }

// find is Find with the master found last, hint (zero for none), which a
// pidfile that still names it gives again without a search.
func (t Target) find(p Procfs, hint masterHint) (Proc, error) {
	switch {
	case t.PIDFile != "":
		return t.findByPIDFile(p, hint)
	case t.Name != "":
		return findByName(p, t.Name)
	default:
		_, proc, err := p.Stat(t.PID)
		if errors.Is(err, ErrNoProcess) {
			return Proc{}, notFound("no process with pid %d", t.PID)
		}
		return proc, err
	}
}

// ProcInfo is a process as a discovery scan sees it.
type ProcInfo struct {
	Proc
	PPID int
	Comm string   // the kernel's command name, at most 15 bytes
	Args []string // the first arguments of its command line
}

// Processes lists every process under Root. Processes that end during the
// scan are left out.
func (p Procfs) Processes() ([]ProcInfo, error) {
	ents, err := os.ReadDir(p.Root)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []ProcInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		st, err := p.stat(pid)
		if err != nil {
			continue
		}
		info := ProcInfo{Proc: st.Proc, PPID: st.PPID, Comm: st.Comm}
		if cl, err := os.ReadFile(filepath.Join(p.Root, e.Name(), "cmdline")); err == nil {
			for _, a := range bytes.SplitN(bytes.TrimRight(cl, "\x00"), []byte{0}, 3) {
				if len(a) > 0 && len(info.Args) < 2 {
					info.Args = append(info.Args, string(a))
				}
			}
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
}

// matchesName reports whether a process is called name: by its command
// name (php-fpm8.2 is php-fpm: a trailing version is ignored), by the first
// word of the title it set ("nginx: master process ..."), or by the script
// an interpreter runs (python3 /usr/bin/gunicorn).
func (pi ProcInfo) matchesName(name string) bool {
	if name == "" {
		return false
	}
	short := name
	if len(short) > 15 {
		short = short[:15]
	}
	if pi.Comm == short || strings.TrimRight(pi.Comm, "0123456789.") == name {
		return true
	}
	for i, a := range pi.Args {
		if i == 0 {
			a, _, _ = strings.Cut(a, ":")
			a = strings.Fields(a + " x")[0]
		}
		base := filepath.Base(a)
		if base == name || strings.TrimRight(base, "0123456789.") == name {
			return true
		}
	}
	return false
}

// findByName finds the master called name: the topmost of the processes of
// that name (workers share their master's name), preferring one that has
// workers when a lone same-named command also runs.
func findByName(p Procfs, name string) (Proc, error) {
	procs, err := p.Processes()
	if err != nil {
		return Proc{}, err
	}
	byPID := make(map[int]ProcInfo, len(procs))
	kids := map[int]int{}
	for _, pi := range procs {
		byPID[pi.PID] = pi
	}
	var tops []ProcInfo
	for _, pi := range procs {
		if !pi.matchesName(name) {
			continue
		}
		if parent, ok := byPID[pi.PPID]; ok && parent.matchesName(name) {
			kids[pi.PPID]++
			continue
		}
		tops = append(tops, pi)
	}
	var withKids []ProcInfo
	for _, pi := range tops {
		if kids[pi.PID] > 0 {
			withKids = append(withKids, pi)
		}
	}
	if len(withKids) > 0 {
		tops = withKids
	}
	switch len(tops) {
	case 0:
		return Proc{}, notFound("no process named %s is running", name)
	case 1:
		return tops[0].Proc, nil
	}
	pids := make([]string, len(tops))
	for i, pi := range tops {
		pids[i] = strconv.Itoa(pi.PID)
	}
	return Proc{}, fmt.Errorf("%w: %d masters named %s (pids %s)", ErrSeveralMasters, len(tops), name, strings.Join(pids, ", "))
}

// Candidate is a process that looks like a pre-fork master: it has children
// of its own name (forked, not executed) and its parent is not of that name.
type Candidate struct {
	PID     int
	Name    string
	Workers int
}

// Candidates lists the pre-fork masters running now, the ones with most
// workers first, leaving out the processes in skip (the daemon itself).
func Candidates(p Procfs, skip ...int) ([]Candidate, error) {
	procs, err := p.Processes()
	if err != nil {
		return nil, err
	}
	var out []Candidate
	for _, m := range masters(procs, skip) {
		out = append(out, Candidate{PID: m.PID, Name: m.Comm, Workers: m.workers})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Workers != out[j].Workers {
			return out[i].Workers > out[j].Workers
		}
		return out[i].PID < out[j].PID
	})
	return out, nil
}

// master is a pre-fork master as a scan found it.
type master struct {
	ProcInfo
	workers int
}

// masters picks the pre-fork masters out of procs (a scan, in pid order):
// processes with children of their own name whose parent is not of that
// name, leaving out those in skip. They come in pid order.
func masters(procs []ProcInfo, skip []int) []master {
	byPID := make(map[int]ProcInfo, len(procs))
	for _, pi := range procs {
		byPID[pi.PID] = pi
	}
	workers := map[int]int{}
	for _, pi := range procs {
		if parent, ok := byPID[pi.PPID]; ok && parent.Comm == pi.Comm && pi.PPID > 2 {
			workers[pi.PPID]++
		}
	}
	var out []master
	for _, pi := range procs {
		n := workers[pi.PID]
		if n == 0 || slices.Contains(skip, pi.PID) {
			continue
		}
		if parent, ok := byPID[pi.PPID]; ok && parent.Comm == pi.Comm {
			continue // a worker that forked children of its own
		}
		out = append(out, master{ProcInfo: pi, workers: n})
	}
	return out
}
