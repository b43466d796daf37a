package observer

import (
	"github.com/workerstats/workerstats/observer/container"

	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A pool in a container sees itself through its own namespaces: its PIDs
// are its PID namespace's (uWSGI's master is pid 1 there), its paths its
// mount namespace's. What the server itself reports is what the dump
// shows; the host's PID is shown beside it.

// NSPID returns pid's own pid in its innermost PID namespace, the one the
// process itself knows (the last field of NSpid: in /proc/PID/status);
// pid itself for a process in the procfs mount's own namespace, or on a
// kernel that does not say (before 4.1). /proc/PID/status is readable
// without privileges.
func (p Procfs) NSPID(pid int) (int, error) {
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("status of pid %d: %w", pid, err)
	}
	if ns, ok := parseNSpid(b); ok {
		return ns, nil
	}
	return pid, nil
}

// parseNSpid reads the last pid of a status file's NSpid line.
func parseNSpid(status []byte) (int, bool) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("NSpid:"))
		if !ok {
			continue
		}
		f := strings.Fields(string(rest))
		if len(f) == 0 {
			return 0, false
		}
		ns, err := strconv.Atoi(f[len(f)-1])
		return ns, err == nil && ns > 0
	}
	return 0, false
}

// RootDir returns the root directory of pid's mount namespace as the daemon
// sees it ("/" for a process that shares the daemon's root). Reading it
// takes ptrace read access: without it the error wraps fs.ErrPermission.
func (p Procfs) RootDir(pid int) (string, error) {
	root, err := os.Readlink(filepath.Join(p.Root, strconv.Itoa(pid), "root"))
	if err != nil {
		return "", fmt.Errorf("root directory of pid %d: %w", pid, err)
	}
	return root, nil
}

// insideRoot returns path, a path as the daemon sees it, as a process
// whose root is root sees it: root's prefix taken off. A path outside root
// (the process cannot see it) is returned as it is.
func insideRoot(root, path string) string {
	if root == "" || root == "/" {
		return path
	}
	root = strings.TrimSuffix(root, "/")
	if path == root {
		return "/"
	}
	if rest, ok := strings.CutPrefix(path, root+"/"); ok {
		return "/" + rest
	}
	return path
}

// ownPIDOf is pid's own pid, or pid itself when procfs cannot say (the
// process is gone): a worker's in the dump, until the kernel says.
func (p *Pool) ownPIDOf(pid int) int {
	ns, err := p.Proc.NSPID(pid)
	if err != nil {
		return pid
	}
	return ns
}

// masterSelf is what a pool knows of its master beyond its Proc: its own
// pid, who it is (its container), and what finds it again after a restart.
type masterSelf struct {
	hint     masterHint // kept when the master is gone
	nsPID    int
	identity *container.Identity
}

// identify reads who master m is: its own pid and its cgroup, readable
// without privileges.
func (p *Pool) identify(m Proc) masterSelf {
	self := masterSelf{hint: masterHint{proc: m, cgroup: p.Proc.cgroup(m.PID)}, nsPID: p.ownPIDOf(m.PID)}
	if self.hint.cgroup != "" {
		id := container.Parse([]byte(self.hint.cgroup))
		self.identity = &id
	}
	return self
}

// OtherNetNS reports whether pid is in another network namespace than
// the daemon: false when it cannot tell (reading another user's takes
// ptrace read access), where the fd tables cannot be read either and the
// kernel is asked anyway.
func (p Procfs) OtherNetNS(pid int) bool {
	theirs, err := os.Stat(filepath.Join(p.Root, strconv.Itoa(pid), "ns", "net"))
	if err != nil {
		return false
	}
	ours, err := os.Stat("/proc/self/ns/net")
	return err == nil && !os.SameFile(theirs, ours)
}
