package statsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
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
	ln, err := net.Listen(a.Network, a.Address)
	if err != nil {
		return nil, listenError(a.Address, err)
	}
	return ln, nil
}

func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("stats address %s is already in use: stop what listens there or choose another --stats: %w", addr, err)
	}
	return fmt.Errorf("listen on stats address %s: %w", addr, err)
}

// lookupOwner resolves "user[:group]" to ids; -1 leaves one unchanged.
func lookupOwner(owner string) (uid, gid int, err error) {
	uid, gid = -1, -1
	if owner == "" {
		return uid, gid, nil
	}
	name, group, hasGroup := strings.Cut(owner, ":")
	if name != "" {
		if uid, err = strconv.Atoi(name); err != nil {
			u, lerr := user.Lookup(name)
			if lerr != nil {
				return 0, 0, fmt.Errorf("--stats-chown %q: no such user: %w", owner, lerr)
			}
			uid, _ = strconv.Atoi(u.Uid)
			if !hasGroup {
				gid, _ = strconv.Atoi(u.Gid)
			}
		}
	}
	if hasGroup && group != "" {
		if gid, err = strconv.Atoi(group); err != nil {
			g, lerr := user.LookupGroup(group)
			if lerr != nil {
				return 0, 0, fmt.Errorf("--stats-chown %q: no such group: %w", owner, lerr)
			}
			gid, _ = strconv.Atoi(g.Gid)
		}
	}
	return uid, gid, nil
}

// listenUnixPath creates the socket under a temporary name, sets its mode
// and owner, and only then renames it into place, so no client can connect
// before the permissions hold.
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
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, listenError(path, err)
	}
	fail := func(err error) (net.Listener, error) {
		ln.Close()
		return nil, err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fail(fmt.Errorf("set mode of stats socket %s: %w", path, err))
	}
	if uid != -1 || gid != -1 {
		if err := os.Lchown(tmp, uid, gid); err != nil {
			return fail(fmt.Errorf("set owner of stats socket %s: %w", path, err))
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(fmt.Errorf("move stats socket into place at %s: %w", path, err))
	}
	// The listener would unlink its original (temporary) name on Close;
	// remove the real path instead.
	ln.SetUnlinkOnClose(false)
	return &unixListener{UnixListener: ln, path: path}, nil
}

type unixListener struct {
	*net.UnixListener
	path string
	once sync.Once
}

// Close removes the socket file, then closes the socket, so that once
// Accept has returned the path is free.
func (l *unixListener) Close() error {
	l.once.Do(func() { os.Remove(l.path) })
	return l.UnixListener.Close()
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
