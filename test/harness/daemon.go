package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/container"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/statsock"
)

// Daemon is a running `workerstats serve`.
type Daemon struct {
	Cmd  *exec.Cmd
	Addr string        // its stats socket, as ReadStats takes it
	Log  *bytes.Buffer // its stdout and stderr
	// Exited receives the process's exit once; whoever takes it puts it
	// back for the next (the cleanup StartDaemon registered takes it last).
	Exited chan error
}

// StartDaemon runs `workerstats serve` with args and waits until its stats
// socket answers. Unless args give pins of their own (--pin-path) or none
// (--no-pin), it runs with --no-pin, so daemons run at once never share
// the default pins; and at --log-level debug, whose log a failed test
// prints: which worker took which slot and when.
func StartDaemon(t testing.TB, args ...string) *Daemon {
	t.Helper()
	addr, http := "", false
	for i, a := range args {
		if a == "--stats" && i+1 < len(args) {
			addr = args[i+1]
		}
		http = http || a == "--stats-http"
	}
	if http { // read as http://ADDR/, which statsock.Read speaks
		addr = "http://" + addr + "/"
	}
	return StartDaemonAt(t, addr, args...)
}

// StartDaemonAt is StartDaemon for a daemon whose stats socket addr is not
// in args (it is in a --config file).
func StartDaemonAt(t testing.TB, addr string, args ...string) *Daemon {
	t.Helper()
	pins := false
	for _, a := range args {
		pins = pins || a == "--no-pin" || a == "--pin-path" || strings.HasPrefix(a, "--pin-path=")
	}
	if !pins {
		args = append(args[:len(args):len(args)], "--no-pin")
	}
	args = append(args[:len(args):len(args)], "--log-level", "debug")
	return RunDaemon(t, addr, exec.Command(binPath, append([]string{"serve"}, args...)...))
}

// StartDiscovery runs `workerstats serve --discover` with args on a stats
// socket of its own, which speaks HTTP, and waits until it answers its
// list of pools at Addr, http://ADDR/ (a pool's dump is at
// Addr+"pools/ID"). It runs with --no-pin and --log-level debug, as
// StartDaemon.
func StartDiscovery(t testing.TB, args ...string) *Daemon {
	t.Helper()
	addr := "http://" + FreeAddr(t) + "/"
	args = append([]string{"serve", "--discover", "--stats", strings.TrimSuffix(strings.TrimPrefix(addr, "http://"), "/")}, args...)
	args = append(args, "--no-pin", "--log-level", "debug")
	return runDaemon(t, addr, exec.Command(binPath, args...), func() error {
		_, err := ReadList(addr)
		return err
	})
}

// Listed is one pool in a discovery daemon's list (GET /).
type Listed struct {
	ID        string              `json:"id"`
	Server    string              `json:"server"`
	PID       int                 `json:"pid"`      // the master's, as the server reports it
	HostPID   int                 `json:"host_pid"` // the master's on the host
	Container *container.Identity `json:"container"`
	Pod       *observer.Pod       `json:"pod"`
	Path      string              `json:"path"` // where its dump is served: /pools/ID
	Workers   int                 `json:"workers"`
	Waiting   string              `json:"waiting"`
	Error     string              `json:"error"`
}

// ReadList reads and decodes a discovery daemon's list of pools at addr,
// http://ADDR/.
func ReadList(addr string) ([]Listed, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := statsock.Read(ctx, addr)
	if err != nil {
		return nil, err
	}
	var l []Listed
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("decode the list of pools %q: %w", Truncate(b), err)
	}
	return l, nil
}

// RunDaemon starts cmd, a `workerstats serve` (possibly under a wrapper
// such as setpriv), stops it with SIGTERM at cleanup, and waits until its
// stats socket addr answers.
func RunDaemon(t testing.TB, addr string, cmd *exec.Cmd) *Daemon {
	t.Helper()
	return runDaemon(t, addr, cmd, func() error {
		_, err := ReadStats(addr)
		return err
	})
}

// runDaemon is RunDaemon waiting until ready returns nil.
func runDaemon(t testing.TB, addr string, cmd *exec.Cmd, ready func() error) *Daemon {
	t.Helper()
	d := &Daemon{Log: &bytes.Buffer{}, Exited: make(chan error, 1), Addr: addr, Cmd: cmd}
	d.Cmd.Stdout, d.Cmd.Stderr = d.Log, d.Log
	if err := d.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.Exited <- d.Cmd.Wait() }()
	t.Cleanup(func() {
		d.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.Exited:
		case <-time.After(10 * time.Second):
			d.Cmd.Process.Kill()
			<-d.Exited
		}
		if t.Failed() {
			t.Logf("workerstats (%s) log:\n%s", strings.Join(d.Cmd.Args, " "), d.Log.String())
			noteFailure(t, "the daemon's log ends:\n"+lastLines(d.Log.String(), recapLines))
		}
	})
	// Its start is its programs' verification, which under emulation
	// takes the guest 15-30 s for the fentry set: a wait on the daemon's
	// own start-up, stretched there as the servers' are.
	WaitFor(t, testutil.Patience(30*time.Second), "workerstats to serve stats", func() error {
		select {
		case err := <-d.Exited:
			d.Exited <- err
			t.Fatalf("workerstats exited early (%v):\n%s", err, d.Log.String())
		default:
		}
		return ready()
	})
	return d
}

// Stop sends SIGTERM to the daemon and returns its exit status, failing t
// if it is not gone within 10 s.
func (d *Daemon) Stop(t testing.TB) error {
	t.Helper()
	d.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.Exited:
		d.Exited <- err // for StartDaemon's own cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("workerstats did not stop within 10 s of SIGTERM:\n%s", d.Log.String())
		return nil
	}
}

// PinPath returns a pin directory of the test's own under /sys/fs/bpf,
// so daemons run at once never share pins; whatever is pinned there is
// removed when the test ends.
func PinPath(t testing.TB) string {
	return testutil.PinPath(t, func(dir string) error {
		if _, err := ebpfkernel.RemovePins(dir); err != nil && !errors.Is(err, ebpfkernel.ErrNothingPinned) {
			return err
		}
		return nil
	})
}
