package statsock

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ListenOptions set who may connect to a Unix stats socket with a path.
type ListenOptions struct {
	// Mode of the socket file; 0 means 0600 (uWSGI leaves its sockets
	// 0777: anyone on the host could read the stats).
	Mode os.FileMode
	// Owner is "user", "user:group" or ":group", names or numeric ids;
	// empty keeps the daemon's own.
	Owner string
}

// Listen opens the stats socket at a. A Unix socket file gets its mode and
// owner before any client can connect; a stale file left by a dead process
// is replaced, a live socket or a path that is not a socket is refused.
func Listen(a Addr, o ListenOptions) (net.Listener, error) {
	if a.Path() {
		return listenUnixPath(a.Address, o)
	}
	// A stats connection lives for one write: TCP keep-alive, which Go
	// sets on every accepted connection (two setsockopt calls), is waste.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), a.Network, a.Address)
	if err != nil {
		return nil, listenError(a.Address, err)
	}
	return ln, nil
}

func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("stats address %s is already in use: stop what listens there or choose another address: %w", addr, err)
	}
	return fmt.Errorf("listen on stats address %s: %w", addr, err)
}

// ErrOwner starts the error Listen returns for an owner (ListenOptions.Owner)
// whose user or group does not exist.
var ErrOwner = errors.New("socket owner")

// lookupOwner resolves "user", "user:", "user:group" or ":group" to ids,
// as chown(1) reads them: a user alone leaves the group, "user:" takes the
// user's login group. -1 leaves an id unchanged.
func lookupOwner(owner string) (uid, gid int, err error) {
	uid, gid = -1, -1
	if owner == "" {
		return uid, gid, nil
	}
	name, group, hasColon := strings.Cut(owner, ":")
	if name != "" {
		u, lerr := user.Lookup(name)
		if lerr != nil {
			if _, nerr := strconv.Atoi(name); nerr != nil {
				return 0, 0, fmt.Errorf("%w %q: no such user: %w", ErrOwner, owner, lerr)
			}
			u, lerr = user.LookupId(name)
			if lerr != nil {
				// A numeric uid with no passwd entry is still a uid.
				u = &user.User{Uid: name, Gid: "-1"}
			}
		}
		uid, _ = strconv.Atoi(u.Uid)
		if hasColon && group == "" {
			gid, _ = strconv.Atoi(u.Gid)
		}
	}
	if group != "" {
		g, lerr := user.LookupGroup(group)
		if lerr != nil {
			if _, nerr := strconv.Atoi(group); nerr != nil {
				return 0, 0, fmt.Errorf("%w %q: no such group: %w", ErrOwner, owner, lerr)
			}
			g = &user.Group{Gid: group}
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	return uid, gid, nil
}

// unixBacklog is the backlog asked of a Unix stats socket; the kernel caps
// it at net.core.somaxconn.
const unixBacklog = 4096

// listenUnixPath binds the socket at path (created 0600), sets its mode and
// owner, and only then listens, so no client gets in before the permissions
// hold. bind(2) never replaces an existing
// file, so two daemons cannot both take the path.
func listenUnixPath(path string, o ListenOptions) (net.Listener, error) {
	mode := o.Mode
	if mode == 0 {
		mode = 0o600
	}
	uid, gid, err := lookupOwner(o.Owner)
	if err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("stats socket %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close() // FileListener dups it
	// connect(2) checks the file's mode when it looks the path up, and
	// whether anyone listens later, so the file must never exist with a
	// looser mode than 0600: create it under umask 0177. The umask is the
	// process's; this runs at start-up, before anything else creates files.
	old := syscall.Umask(0o177)
	err = syscall.Bind(fd, &syscall.SockaddrUnix{Name: path})
	syscall.Umask(old)
	if err != nil {
		return nil, listenError(path, &net.OpError{Op: "bind", Net: "unix", Err: os.NewSyscallError("bind", err)})
	}
	fail := func(err error) (net.Listener, error) {
		os.Remove(path)
		return nil, err
	}
	if err := os.Chmod(path, mode); err != nil {
		return fail(fmt.Errorf("set mode of stats socket %s: %w", path, err))
	}
	if uid != -1 || gid != -1 {
		if err := os.Lchown(path, uid, gid); err != nil {
			return fail(fmt.Errorf("set owner of stats socket %s: %w", path, err))
		}
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("stats socket %s: %w", path, err))
	}
	if err := syscall.Listen(fd, unixBacklog); err != nil {
		return fail(fmt.Errorf("listen on stats socket %s: %w", path, err))
	}
	ln, err := net.FileListener(f)
	if err != nil {
		return fail(fmt.Errorf("stats socket %s: %w", path, err))
	}
	return &unixListener{Listener: ln, path: path, file: fi}, nil
}

type unixListener struct {
	net.Listener
	path string
	file os.FileInfo // the socket file we made, to remove only that one
	once sync.Once
}

// Close removes the socket file if it is still ours, then closes the
// socket, so that once Accept has returned the path is free.
func (l *unixListener) Close() error {
	l.once.Do(func() {
		if fi, err := os.Lstat(l.path); err == nil && os.SameFile(fi, l.file) {
			os.Remove(l.path)
		}
	})
	return l.Listener.Close()
}

// removeStale deletes a socket file nobody listens on. A live socket, or a
// path that is not a socket, is left alone and reported.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stats socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("stats socket %s: the path exists and is not a socket; remove it or choose another path", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("stats socket %s: another process is listening on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		// A full backlog (EAGAIN) or a permission error: someone may
		// well be listening. Never take over a socket we are unsure of.
		return fmt.Errorf("stats socket %s: cannot tell whether it is in use (%w); remove it if it is stale", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale stats socket %s: %w", path, err)
	}
	return nil
}
