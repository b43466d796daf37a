package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// Capability numbers (linux/capability.h).
const (
	capDACReadSearch = 2
	capSysPtrace     = 19
	capBPF           = 39
)

// taskStatus is what /proc/PID/task/TID/status says of one thread's
// credentials.
type taskStatus struct {
	tid                            string
	uid, gid, groups               string
	capInh, capPrm, capEff, capBnd uint64
	capAmb                         uint64
	noNewPrivs                     string
}

// threadCredentials reads the credentials of every thread of pid: the
// kernel keeps them per thread.
func threadCredentials(t testing.TB, pid int) []taskStatus {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tids, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []taskStatus
	for _, tid := range tids {
		b, err := os.ReadFile(filepath.Join(dir, tid.Name(), "status"))
		if err != nil {
			continue // the thread exited
		}
		s := taskStatus{tid: tid.Name()}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSpace(v)
			hex := func() uint64 {
				n, err := strconv.ParseUint(v, 16, 64)
				if err != nil {
					t.Fatalf("%s: %q: %v", k, v, err)
				}
				return n
			}
			switch k {
			case "Uid":
				s.uid = strings.Join(strings.Fields(v), " ")
			case "Gid":
				s.gid = strings.Join(strings.Fields(v), " ")
			case "Groups":
				s.groups = v
			case "CapInh":
				s.capInh = hex()
			case "CapPrm":
				s.capPrm = hex()
			case "CapEff":
				s.capEff = hex()
			case "CapBnd":
				s.capBnd = hex()
			case "CapAmb":
				s.capAmb = hex()
			case "NoNewPrivs":
				s.noNewPrivs = v
			}
		}
		out = append(out, s)
	}
	return out
}

// bpfNeedsCapability reports whether this kernel wants CAP_BPF for bpf(2)
// calls on descriptors already held: before Linux 5.19 every bpf(2) call
// checked it when kernel.unprivileged_bpf_disabled is set; from 5.19 only
// creating maps and loading programs do.
func bpfNeedsCapability(t testing.TB) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/kernel/unprivileged_bpf_disabled")
	if err != nil {
		t.Fatal(err)
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	old := major < 5 || major == 5 && minor < 19
	return old && strings.TrimSpace(string(b)) != "0"
}

// keptCapabilities is the set the daemon keeps once it is serving: none
// but CAP_BPF, where the kernel wants it for bpf(2) on the maps it holds.
func keptCapabilities(t testing.TB) uint64 {
	if bpfNeedsCapability(t) {
		return 1 << capBPF
	}
	return 0
}

// TestDaemonKeepsOnlyNeededCapabilities runs the daemon on a real uWSGI
// pool, as root and with --user nobody, and reads every one of its threads'
// credentials: no capability is left (CAP_BPF only where the kernel wants
// it for the maps), in the effective, permitted and bounding sets alike;
// inheritable and ambient are empty; no_new_privs is set. The daemon still
// counts exactly, still shows the pool's sockets and working directory
// (read before the drop), and at SIGTERM still removes its Unix stats
// socket.
func TestDaemonKeepsOnlyNeededCapabilities(t *testing.T) {
	testutil.RequireEBPF(t)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		testutil.SkipOrFail(t, "no user nobody: %v", err)
	}
	want := keptCapabilities(t)
	for _, c := range []struct {
		name     string
		args     []string
		uid, gid string
	}{
		{"root", nil, "0", "0"},
		{"user nobody", []string{"--user", "nobody"}, nobody.Uid, nobody.Gid},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2})
			// The socket's directory belongs to the daemon's user, so it
			// can remove the socket once it is that user.
			dir := filepath.Join(t.TempDir(), "run")
			if err := os.Mkdir(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			// and reach it: it keeps no CAP_DAC_READ_SEARCH.
			for d := filepath.Dir(dir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			uid, _ := strconv.Atoi(c.uid)
			gid, _ := strconv.Atoi(c.gid)
			if err := os.Chown(dir, uid, gid); err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(dir, "stats.sock")
			d := harness.StartDaemon(t, append([]string{"--pid", strconv.Itoa(p.PID), "--stats", sock}, c.args...)...)

			threads := threadCredentials(t, d.Cmd.Process.Pid)
			if len(threads) < 2 {
				t.Errorf("%d threads: the check is meant for a multi-threaded Go daemon", len(threads))
			}
			ids := fmt.Sprintf("%s %s %s %s", c.uid, c.uid, c.uid, c.uid)
			gids := fmt.Sprintf("%s %s %s %s", c.gid, c.gid, c.gid, c.gid)
			for _, s := range threads {
				if s.capEff != want || s.capPrm != want || s.capBnd != want || s.capInh != 0 || s.capAmb != 0 {
					t.Errorf("thread %s: CapEff %016x CapPrm %016x CapBnd %016x CapInh %016x CapAmb %016x; want %016x in the first three, 0 in the others",
						s.tid, s.capEff, s.capPrm, s.capBnd, s.capInh, s.capAmb, want)
				}
				if s.uid != ids || s.gid != gids {
					t.Errorf("thread %s: Uid %q Gid %q, want %q %q", s.tid, s.uid, s.gid, ids, gids)
				}
				if s.noNewPrivs != "1" {
					t.Errorf("thread %s: NoNewPrivs %q, want 1", s.tid, s.noNewPrivs)
				}
			}
			t.Logf("%d threads, each with CapEff=CapPrm=CapBnd=%016x, Uid %s", len(threads), want, threads[0].uid)

			res := harness.Drive(t, p, 2000, 8, 0)
			ours, theirs := harness.Settle(t, p, d, uint64(res.OK))
			harness.LogComparison(t, ours, theirs)
			if len(ours.Sockets) == 0 || ours.CWD == "" {
				t.Errorf("after the drop the dump shows sockets %v and cwd %q: the pool's sockets and working directory should still be read", ours.Sockets, ours.CWD)
			}
			if err := d.Stop(t); err != nil {
				t.Fatalf("exit %v on SIGTERM:\n%s", err, d.Log.String())
			}
			if _, err := os.Lstat(sock); !os.IsNotExist(err) {
				t.Errorf("stats socket %s still there after SIGTERM (%v):\n%s", sock, err, d.Log.String())
			}
		})
	}
}

// unitDirective returns the values of key= in the shipped systemd unit.
func unitDirective(t *testing.T, key string) []string {
	t.Helper()
	b, err := os.ReadFile(harness.RepoPath(t, "deploy/systemd/workerstats.service"))
	if err != nil {
		t.Fatal(err)
	}
	var vals []string
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+"="); ok {
			vals = append(vals, strings.Fields(v)...)
		}
	}
	return vals
}

// nobodyPool is a pre-fork pool run by user nobody, as a server started by
// systemd with User= is: a master and two workers that inherited its
// listener. Their /proc/PID/fd are nobody's, mode 0500.
const nobodyPool = `
import os, signal, socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
print("127.0.0.1:%d" % s.getsockname()[1], flush=True)
for _ in range(2):
    if os.fork() == 0:
        while True:
            c, _ = s.accept()
            c.recv(4096)
            c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            c.close()
while True:
    signal.pause()
`

// The unit's CapabilityBoundingSet is enough: the daemon, started as root
// with only those capabilities and no_new_privs as systemd starts it,
// loads and attaches its programs, counts requests, reports per-program
// statistics and gives its stats socket away. It may not read another
// user's /proc/PID/fd: the pool's socket is unknown, and the dump says why,
// until a worker's first connection, whose accept answers in the kernel
// which listeners the worker holds; the working directory is left out,
// with the reason. Granted CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE as well,
// it shows the socket and the cwd at once, so the check can tell.
func TestSystemdUnitCapabilitiesSuffice(t *testing.T) {
	testutil.RequireEBPF(t)
	// Debian's, not one installed in root's home, which nobody cannot run.
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		testutil.SkipOrFail(t, "%s is not installed (apt-get install python3)", python)
	}
	setpriv := testutil.RequireCommand(t, "setpriv", "util-linux")
	caps := unitDirective(t, "CapabilityBoundingSet")
	if len(caps) == 0 {
		t.Fatal("the unit has no CapabilityBoundingSet")
	}
	bounding := func(caps []string) string {
		s := "-all"
		for _, c := range caps {
			s += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
		return s
	}
	nnp := unitDirective(t, "NoNewPrivileges")
	// The unit's memlock limit too: before Linux 5.11 eBPF maps are
	// charged to it, and raising it would need CAP_SYS_RESOURCE.
	// Where this test cannot set it (root without CAP_SYS_RESOURCE, as on
	// the CI machines), the kernel charges maps to memcg (5.11+) instead.
	wrap := []string{setpriv}
	if slices.Contains(unitDirective(t, "LimitMEMLOCK"), "infinity") {
		prlimit := testutil.RequireCommand(t, "prlimit", "util-linux")
		limit := []string{prlimit, "--memlock=unlimited:unlimited"}
		if out, err := exec.Command(limit[0], append(limit[1:], "true")...).CombinedOutput(); err != nil {
			t.Logf("the unit's LimitMEMLOCK=infinity cannot be set here (%v: %s): the daemon runs with the memlock limit it has", err, bytes.TrimSpace(out))
		} else {
			wrap = append(limit, setpriv)
		}
	}

	pool := exec.Command(setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c", nobodyPool)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var poolLog bytes.Buffer
	pool.Stdout, pool.Stderr = w, &poolLog
	harness.StartGroup(t, pool, syscall.SIGKILL, func() string { return "pool: " + poolLog.String() })
	w.Close()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	line := make([]byte, 64)
	n, err := r.Read(line)
	if err != nil {
		t.Fatalf("pool did not print its address: %v", err)
	}
	poolAddr := strings.TrimSpace(string(line[:n]))

	dir := t.TempDir()
	serve := func(t *testing.T, caps []string, sock string, extra ...string) *harness.Daemon {
		args := []string{"--bounding-set=" + bounding(caps), "--inh-caps=-all"}
		if slices.Contains(nnp, "yes") || slices.Contains(nnp, "true") {
			args = append(args, "--no-new-privs")
		}
		args = append(args, harness.Binary(), "serve", "--mode", "ebpf", "--pid", strconv.Itoa(pool.Process.Pid), "--stats", sock)
		args = append(append(wrap[1:len(wrap):len(wrap)], args...), extra...)
		return harness.RunDaemon(t, sock, exec.Command(wrap[0], args...))
	}
	hasListener := func(st *observer.Stats) bool {
		for _, s := range st.Sockets {
			if s.Name == poolAddr {
				return true
			}
		}
		return false
	}

	t.Run("unit's set", func(t *testing.T) {
		pins := filepath.Join(ebpfkernel.BPFFSDir, fmt.Sprintf("workerstats-test-%d", os.Getpid()))
		t.Cleanup(func() { os.RemoveAll(pins) })
		sock := filepath.Join(dir, "unit.sock")
		d := serve(t, caps, sock, "--bpf-stats", "--stats-chown", "nobody", "--pin-path", pins)
		// Within the unit's bounding set the daemon can still drop what
		// it no longer needs, from its own bounding set too.
		want := keptCapabilities(t)
		for _, s := range threadCredentials(t, d.Cmd.Process.Pid) {
			if s.capEff != want || s.capBnd != want {
				t.Errorf("under the unit's capabilities, thread %s keeps CapEff %016x CapBnd %016x, want %016x", s.tid, s.capEff, s.capBnd, want)
			}
		}

		var fi os.FileInfo
		if fi, err = os.Stat(sock); err != nil {
			t.Fatal(err)
		}
		if uid := fi.Sys().(*syscall.Stat_t).Uid; uid != 65534 {
			t.Errorf("--stats-chown nobody: socket owned by uid %d, want 65534 (CAP_CHOWN)", uid)
		}
		st, err := harness.ReadStats(sock)
		if err != nil {
			t.Fatal(err)
		}
		if hasListener(st) || st.Observer.Unknown["sockets"] == "" || st.CWD != "" || st.Observer.Unknown["cwd"] == "" {
			t.Errorf("before any connection, under the unit's set: sockets %v, cwd %q, unknown %v; want no socket, no cwd, and why", st.Sockets, st.CWD, st.Observer.Unknown)
		}
		t.Logf("before any connection: unknown %v", st.Observer.Unknown)
		const requests = 20
		for i := range requests {
			c, err := net.Dial("tcp", poolAddr)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(c, "GET /%d HTTP/1.0\r\n\r\n", i)
			if _, err := io.ReadAll(c); err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		st = harness.WaitRequests(t, sock, 10*time.Second, "the requests to be counted", requests)
		if st.Observer.Mode != "ebpf" || len(st.Workers) != 2 {
			t.Errorf("mode %q with %d workers, want ebpf with 2", st.Observer.Mode, len(st.Workers))
		}
		st = harness.WaitStats(t, sock, 10*time.Second, "the kernel's answer", func(st *observer.Stats) error {
			if !hasListener(st) || st.Observer.Unknown["sockets"] != "" {
				return fmt.Errorf("sockets %+v (unknown %v) lack the pool's listener %s", st.Sockets, st.Observer.Unknown, poolAddr)
			}
			return nil
		})
		t.Logf("after %d requests: sockets %v, unknown %v", requests, harness.SocketNames(st.Sockets), st.Observer.Unknown)
		if len(st.Observer.Programs) == 0 {
			t.Error("--bpf-stats: no per-program statistics in the dump")
		}
	})

	t.Run("with fd access", func(t *testing.T) {
		if slices.Contains(caps, "CAP_SYS_PTRACE") || slices.Contains(caps, "CAP_DAC_READ_SEARCH") {
			t.Errorf("the unit grants %v: the daemon needs neither CAP_SYS_PTRACE nor CAP_DAC_READ_SEARCH", caps)
		}
		more := append(slices.Clone(caps), "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE")
		sock := filepath.Join(dir, "more.sock")
		d := serve(t, more, sock, "--no-pin")
		st, err := harness.ReadStats(sock)
		if err != nil {
			t.Fatal(err)
		}
		if !hasListener(st) || st.CWD == "" || len(st.Observer.Unknown) != 0 {
			t.Errorf("with CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, before any connection: sockets %v, cwd %q, unknown %v; want the listener and the cwd read at start-up", st.Sockets, st.CWD, st.Observer.Unknown)
		}
		// Read at start-up, then dropped like the rest.
		want := keptCapabilities(t)
		for _, s := range threadCredentials(t, d.Cmd.Process.Pid) {
			if s.capEff != want || s.capBnd != want {
				t.Errorf("thread %s keeps CapEff %016x CapBnd %016x, want %016x", s.tid, s.capEff, s.capBnd, want)
			}
		}
	})
}
