package observer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/shirou/gopsutil/v3/common"
	"github.com/shirou/gopsutil/v3/process"
)

// ErrNoProcess means the process does not exist (or no longer does).
var ErrNoProcess = errors.New("no such process")

// Procfs reads process facts from a procfs mount. Root is "/proc" on a host;
// tests point it at fixture trees.
type Procfs struct {
	Root string
}

// ctx returns a context that makes gopsutil read from p.Root.
func (p Procfs) ctx(ctx context.Context) context.Context {
	return context.WithValue(ctx, common.EnvKey, common.EnvMap{common.HostProcEnvKey: p.Root})
}

// Stat returns a process's parent and start time from /proc/PID/stat.
func (p Procfs) Stat(pid int) (ppid int, start Proc, err error) {
	st, err := p.stat(pid)
	return st.PPID, st.Proc, err
}

// State returns a process's state letter (R, S, D, T, Z...) from
// /proc/PID/stat.
func (p Procfs) State(pid int) (byte, error) {
	st, err := p.stat(pid)
	return st.state, err
}

// Running says proc is still the process it was (same pid, same start)
// and has not exited: a zombie, exited but not yet reaped by its parent (a
// container's init that reaps late, a supervisor stopped), is gone.
func (p Procfs) Running(proc Proc) bool {
	st, err := p.stat(proc.PID)
	return err == nil && st.Proc == proc && st.state != 'Z' && st.state != 'X'
}

// procStat is what workerstats reads from /proc/PID/stat.
type procStat struct {
	Proc
	PPID  int
	Comm  string
	state byte
}

func (p Procfs) stat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(pid), "stat"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return procStat{}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return procStat{}, fmt.Errorf("read stat of pid %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces and parentheses: fields
	// after it start past the last ')'.
	s := string(b)
	open, i := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || i < open {
		return procStat{}, fmt.Errorf("parse stat of pid %d: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); ppid is field 4, starttime field 22.
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("parse stat of pid %d: %d fields", pid, len(f)+2)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("parse ppid of pid %d: %w", pid, err)
	}
	ticks, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("parse start time of pid %d: %w", pid, err)
	}
	return procStat{Proc: Proc{PID: pid, StartTicks: ticks}, PPID: ppid, Comm: s[open+1 : i], state: f[0][0]}, nil
}

// Children returns the direct children of pid (of any of its threads), in
// start order. It reads /proc/PID/task/*/children.
func (p Procfs) Children(pid int) ([]Proc, error) {
	tasks, err := filepath.Glob(filepath.Join(p.Root, strconv.Itoa(pid), "task", "*", "children"))
	if err != nil {
		return nil, fmt.Errorf("list tasks of pid %d: %w", pid, err)
	}
	if len(tasks) == 0 {
		if _, _, err := p.Stat(pid); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("pid %d: %s/PID/task/*/children is missing (kernel without CONFIG_PROC_CHILDREN)", pid, p.Root)
	}
	var kids []Proc
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // the thread ended
		}
		for _, f := range strings.Fields(string(b)) {
			c, err := strconv.Atoi(f)
			if err != nil {
				continue
			}
			ppid, proc, err := p.Stat(c)
			if err != nil || ppid != pid {
				continue // gone, or reparented since
			}
			kids = append(kids, proc)
		}
	}
	sort.Slice(kids, func(i, j int) bool {
		if kids[i].StartTicks != kids[j].StartTicks {
			return kids[i].StartTicks < kids[j].StartTicks
		}
		return kids[i].PID < kids[j].PID
	})
	return kids, nil
}

// Memory returns a process's resident and virtual size in bytes.
func (p Procfs) Memory(ctx context.Context, pid int) (rss, vsz uint64, err error) {
	proc := &process.Process{Pid: int32(pid)}
	m, err := proc.MemoryInfoWithContext(p.ctx(ctx))
	if err != nil {
		return 0, 0, fmt.Errorf("memory of pid %d: %w", pid, err)
	}
	return m.RSS, m.VMS, nil
}

// Cwd returns a process's working directory as the process itself sees
// it: inside its mount namespace's root (a container's), as the server
// reports its own. Another user's takes ptrace read access: without it the
// error wraps fs.ErrPermission.
func (p Procfs) Cwd(pid int) (string, error) {
	cwd, err := os.Readlink(filepath.Join(p.Root, strconv.Itoa(pid), "cwd"))
	if err != nil {
		return "", fmt.Errorf("working directory of pid %d: %w", pid, err)
	}
	root, err := p.RootDir(pid)
	if errors.Is(err, fs.ErrNotExist) {
		return cwd, nil // a procfs tree without root links
	}
	if err != nil {
		return "", err
	}
	return insideRoot(root, cwd), nil
}

// Owner returns a process's real uid and gid.
func (p Procfs) Owner(ctx context.Context, pid int) (uid, gid int, err error) {
	proc := &process.Process{Pid: int32(pid)}
	c := p.ctx(ctx)
	uids, err := proc.UidsWithContext(c)
	if err != nil || len(uids) == 0 {
		return 0, 0, fmt.Errorf("uid of pid %d: %w", pid, err)
	}
	gids, err := proc.GidsWithContext(c)
	if err != nil || len(gids) == 0 {
		return 0, 0, fmt.Errorf("gid of pid %d: %w", pid, err)
	}
	return int(uids[0]), int(gids[0]), nil
}

// BootTime returns the system's boot time in unix seconds: the "btime" line
// of /proc/stat. (gopsutil v3's BootTime derives it from uptime and the wall
// clock instead, which drifts by a second between reads.)
func (p Procfs) BootTime() (int64, error) {
	b, err := os.ReadFile(filepath.Join(p.Root, "stat"))
	if err != nil {
		return 0, fmt.Errorf("boot time: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			bt, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("boot time: parse %q: %w", line, err)
			}
			return bt, nil
		}
	}
	return 0, fmt.Errorf("boot time: no btime line in %s/stat", p.Root)
}
