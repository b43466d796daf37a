// Package statsock serves a stats dump the way uWSGI's stats server does: a
// client connects, the server writes the JSON and closes. It knows nothing of
// where the bytes come from.
package statsock

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Source produces the bytes of one dump.
type Source interface {
	Dump(ctx context.Context) ([]byte, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context) ([]byte, error)

// Dump implements Source.
func (f SourceFunc) Dump(ctx context.Context) ([]byte, error) { return f(ctx) }

// WriteTimeout bounds how long a client that does not read can hold a
// connection.
const WriteTimeout = 5 * time.Second

// Network returns the network ("tcp" or "unix") and address of a stats
// address: a path (containing a '/') is a Unix socket, anything else is
// host:port.
func Network(addr string) (network, address string, err error) {
	switch {
	case addr == "":
		return "", "", errors.New("empty stats address: give host:port or a socket path")
	case strings.Contains(addr, "/"):
		return "unix", addr, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return "", "", fmt.Errorf("stats address %q is neither host:port nor a socket path: %w", addr, err)
	}
	return "tcp", addr, nil
}

// Listen opens the stats socket. A Unix socket is created with mode 0600
// (uWSGI leaves them world-writable); a stale socket file from a dead
// process is replaced.
func Listen(addr string) (net.Listener, error) {
	network, address, err := Network(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return listenUnix(address)
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, listenError(addr, err)
	}
	return ln, nil
}

func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("stats address %s is already in use: stop what listens there or choose another --stats: %w", addr, err)
	}
	return fmt.Errorf("listen on stats address %s: %w", addr, err)
}

// listenUnix creates the socket under a temporary name, sets its mode, and
// only then renames it into place, so no client can connect before the
// permissions hold.
func listenUnix(path string) (net.Listener, error) {
	if err := removeStale(path); err != nil {
		return nil, err
	}
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, listenError(path, err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("set mode of stats socket %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, fmt.Errorf("move stats socket into place at %s: %w", path, err)
	}
	// The listener removes the file on Close by its original (temporary)
	// name; remove the real path ourselves instead.
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

// Serve answers every connection on ln with one dump from src until ctx is
// done, then closes ln and waits for the clients being served.
func Serve(ctx context.Context, ln net.Listener, src Source, log *slog.Logger) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on stats socket: %w", err)
			}
			// Out of file descriptors or memory, a connection reset
			// before accept: wait and go on, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn("accept on stats socket failed; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			continue
		}
		backoff = 0
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			b, err := src.Dump(ctx)
			if err != nil {
				log.Error("cannot build stats dump", "error", err)
				return
			}
			c.SetWriteDeadline(time.Now().Add(WriteTimeout))
			if _, err := c.Write(b); err != nil {
				log.Debug("stats client went away", "error", err)
			}
		}()
	}
}

// Read connects to a stats address, reads to EOF and returns what it got.
func Read(ctx context.Context, addr string) ([]byte, error) {
	network, address, err := Network(addr)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("connect to stats socket %s: %w", addr, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, fmt.Errorf("read stats from %s: %w", addr, err)
	}
	return b, nil
}
