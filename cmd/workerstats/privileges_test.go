package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
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
			p := startUWSGI(t, uwsgiOptions{processes: 2})
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
			d := startDaemon(t, append([]string{"--pid", strconv.Itoa(p.pid), "--stats", sock}, c.args...)...)

			threads := threadCredentials(t, d.cmd.Process.Pid)
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

			res := drive(t, p, 2000, 8, 0)
			ours, theirs := settle(t, p, d, uint64(res.ok))
			logComparison(t, ours, theirs)
			if len(ours.Sockets) == 0 || ours.CWD == "" {
				t.Errorf("after the drop the dump shows sockets %v and cwd %q: the pool's sockets and working directory should still be read", ours.Sockets, ours.CWD)
			}
			if err := d.stop(t); err != nil {
				t.Fatalf("exit %v on SIGTERM:\n%s", err, d.log.String())
			}
			if _, err := os.Lstat(sock); !os.IsNotExist(err) {
				t.Errorf("stats socket %s still there after SIGTERM (%v):\n%s", sock, err, d.log.String())
			}
		})
	}
}

// TestUserMistakesAreOneLine: an unknown --user, or a Unix stats socket
// --user could not remove at shutdown, is refused before anything is bound
// or loaded, in one line saying what to do.
func TestUserMistakesAreOneLine(t *testing.T) {
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	master := exec.Command("sleep", "300")
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { master.Process.Kill(); master.Wait() }()
	pid := strconv.Itoa(master.Process.Pid)
	rootDir := t.TempDir() // root's, 0700
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown user", []string{"--user", "no-such-user-here"}, `--user "no-such-user-here": no such user`},
		{"socket directory not the user's", []string{"--user", "nobody", "--stats", filepath.Join(rootDir, "s.sock")},
			"the stats socket " + filepath.Join(rootDir, "s.sock") + " could not be removed at shutdown: its directory " + rootDir + " is not writable by nobody"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := runCommand(append([]string{"serve", "--pid", pid, "--no-pin"}, c.args...)...)
			if err == nil || strings.Count(out, "\n") != 0 || !strings.Contains(out, c.want) {
				t.Errorf("%v: exit %v, output %q; want one line containing %q", c.args, err, out, c.want)
			}
		})
	}
	if ents, _ := os.ReadDir(rootDir); len(ents) != 0 {
		t.Errorf("a refused start left %v behind", ents)
	}
}
