package observer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/workerstats/workerstats/observer/container"
)

// Who a discovered pool is: its ID, from what stays the same when its
// master restarts, and what discovery lets go of when it drops the pool.

// knownServers are the servers a pool's name says by their own names.
var knownServers = []string{"uwsgi", "gunicorn", "php-fpm", "nginx"}

// shells fork children of their own name (subshells, a pipeline's
// parts) without being servers: discovery leaves them out, or every
// script's loop would come and go as a pool.
var shells = []string{"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "csh", "tcsh", "busybox"}

// serverName is the name of the server a master runs: uwsgi, gunicorn,
// php-fpm (php-fpm8.2 too), nginx as matchesName knows them (python3
// running gunicorn is gunicorn), else its command name in [a-z0-9_-].
func serverName(pi ProcInfo) string {
	for _, s := range knownServers {
		if pi.matchesName(s) {
			return s
		}
	}
	return sanitizeName(pi.Comm)
}

// sanitizeName lowers name and replaces what is not [a-z0-9_-] by '_';
// "server" when nothing is left.
func sanitizeName(name string) string {
	b := []byte(strings.ToLower(name))
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
			b[i] = '_'
		}
	}
	if s := strings.Trim(string(b), "_"); s != "" {
		return s
	}
	return "server"
}

// poolID is a pool's ID before two live pools are told apart: its
// server's name and 8 hex digits of a hash of what stays the same when
// its master restarts, never a pid: the container it runs in (its ID,
// else its cgroup path) and the master's command line.
func poolID(server string, who *container.Identity, cmdline []string) string {
	h := sha256.New()
	if who != nil {
		place := who.ID
		if place == "" {
			place = who.Cgroup
		}
		h.Write([]byte(place))
	}
	for _, a := range cmdline {
		h.Write([]byte{0})
		h.Write([]byte(a))
	}
	return server + "-" + hex.EncodeToString(h.Sum(nil)[:4])
}

// cmdline is pid's whole command line, nil when it cannot be read.
func (p Procfs) cmdline(pid int) []string {
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(pid), "cmdline"))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(string(bytes.TrimRight(b, "\x00")), "\x00")
}

// pidGone says why a pool whose master, given by its pid, exited is
// empty for good.
func (p *Pool) pidGone() string {
	if p.discovered {
		return "discovery drops the pool, and watches a restarted master as a new one"
	}
	return "a master given by its pid cannot be followed: give its pidfile or its name to follow a restarted master"
}

// current is the master the pool watches now, zero when none.
func (p *Pool) current() Proc {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.master
}

// release lets go of a pool no longer watched: with an Unwatcher kernel,
// the kernel forgets its masters (those it counted, and also) and their
// workers. The pool is not used again.
func (p *Pool) release(also ...int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	u, ok := p.Kernel.(Unwatcher)
	if !ok {
		return nil
	}
	ms := map[int]bool{p.master.PID: true}
	for m := range p.masters {
		ms[m] = true
	}
	for _, m := range also {
		ms[m] = true
	}
	var errs []error
	for m := range ms {
		if m != 0 {
			errs = append(errs, u.Unwatch(m))
		}
	}
	return errors.Join(errs...)
}
