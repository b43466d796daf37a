package harness

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
)

// A container runc starts: the network namespace, root and volumes of a
// container made by hand (Container), but its PID, mount, IPC, UTS and
// cgroup namespaces, its mounts inside (/proc, /dev, /sys), its
// capabilities and its cgroup are made by a real OCI runtime, Debian's
// runc, the one Docker and containerd run by default, given an OCI
// bundle of the test's own. Its cgroup is given as a path below the
// test's own cgroup (runc's cgroupfs driver; the systemd one needs
// systemd): runc makes it in every hierarchy the test's process is in,
// so on a hybrid host in the v1 controllers' too, each below the test's
// own place there (its memory limit, say, still holds).

// NewRuncContainer is NewContainer whose servers runc starts (Wrap). It
// skips t (or fails it, in CI) without runc (apt-get install runc).
func NewRuncContainer(t testing.TB, s Shape) *Container {
	t.Helper()
	c := newContainer(t, s)
	c.runc = testutil.RequireCommand(t, "runc", "runc")
	c.bundles = t.TempDir()
	cgroup2Root(t) // mounted, where no cgroup filesystem is
	rel := strings.TrimPrefix(c.Cgroup, "/")
	bases, first, err := cgroupBases()
	if err != nil {
		t.Fatal(err)
	}
	// /proc/PID/cgroup's first line names it first.
	c.Cgroup = path.Join(first, rel)
	var made []string // the directories runc will make, leaves first
	for _, base := range bases {
		for d := rel; d != "."; d = path.Dir(d) {
			if _, err := os.Stat(filepath.Join(base, d)); errors.Is(err, fs.ErrNotExist) {
				made = append(made, filepath.Join(base, d))
			}
		}
	}
	t.Cleanup(func() {
		for _, id := range c.runs {
			exec.Command(c.runc, "delete", "--force", id).Run() // gone already unless its runc was killed
		}
		for _, d := range made {
			if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.EBUSY) {
				t.Errorf("remove the container's cgroup: %v", err)
			}
		}
	})
	return c
}

// runcLauncher writes the OCI bundle that runs cmd in c, in wd, and
// returns the command that runs it: runc run, in the foreground, the
// parent of the container's init (its subreaper) until it exits, when it
// removes the container's cgroup.
func (c *Container) runcLauncher(t testing.TB, cmd *exec.Cmd, wd string) []string {
	t.Helper()
	id := "wstest-" + randomHex(t, 8)
	c.runs = append(c.runs, id)
	bundle := filepath.Join(c.bundles, id)
	if err := os.Mkdir(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := json.MarshalIndent(c.runcSpec(cmd, wd), "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	WriteFile(t, filepath.Join(bundle, "config.json"), string(b))
	return []string{c.runc, "run", "--bundle", bundle, id}
}

// dockerCaps are the capabilities Docker gives a container by default.
var dockerCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
	"CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// runcSpec is the OCI runtime configuration of cmd in c: root as the
// process runs the container, with Docker's default capabilities, in
// c's network namespace and new PID, mount, IPC, UTS and cgroup ones,
// its root c's, its cgroup c's path below the test's.
func (c *Container) runcSpec(cmd *exec.Cmd, wd string) map[string]any {
	env := cmd.Env
	if env == nil {
		env = os.Environ()
	}
	caps := map[string]any{"bounding": dockerCaps, "effective": dockerCaps, "permitted": dockerCaps}
	mount := func(dest, typ, src string, opts ...string) map[string]any {
		return map[string]any{"destination": dest, "type": typ, "source": src, "options": opts}
	}
	ns := func(typ string) map[string]any { return map[string]any{"type": typ} }
	return map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"terminal": false, "user": map[string]any{"uid": 0, "gid": 0},
			"args": append([]string{cmd.Path}, cmd.Args[1:]...), "env": env, "cwd": wd,
			"capabilities": caps, "noNewPrivileges": true,
		},
		"root":     map[string]any{"path": c.root},
		"hostname": "wstest",
		"mounts": []any{
			mount("/proc", "proc", "proc"),
			mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
			mount("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"),
			mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
			mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
		},
		"linux": map[string]any{
			"namespaces": []any{ns("pid"), ns("ipc"), ns("uts"), ns("mount"), ns("cgroup"),
				map[string]any{"type": "network", "path": c.NetNS}},
			"cgroupsPath": strings.TrimPrefix(c.Shape.path(c.ID, c.PodUID), "/"),
		},
	}
}

// cgroupBases returns the directory of the test process's own cgroup in
// every hierarchy it is in and mounted, and its path on the first line of
// /proc/self/cgroup.
func cgroupBases() (bases []string, first string, err error) {
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, "", err
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, "", err
	}
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		if i == 0 {
			first = f[2]
		}
		for _, m := range mounts {
			if m.has(f[1]) && strings.HasPrefix(f[2], m.root) {
				bases = append(bases, filepath.Join(m.dir, strings.TrimPrefix(f[2], m.root)))
				break
			}
		}
	}
	return bases, first, nil
}

// cgroupMount is a cgroup hierarchy's mount: where, the cgroup it shows
// at its root, and its controllers (none for cgroup2).
type cgroupMount struct {
	dir, root   string
	v2          bool
	controllers []string
}

// has reports whether m is the hierarchy of a /proc/PID/cgroup line's
// controllers ("" for cgroup v2's).
func (m cgroupMount) has(controllers string) bool {
	if controllers == "" {
		return m.v2
	}
	for _, c := range strings.Split(controllers, ",") {
		if m.v2 || !slices.Contains(m.controllers, c) {
			return false
		}
	}
	return true
}

// cgroupMounts lists the cgroup hierarchies mounted, from mountinfo.
func cgroupMounts() ([]cgroupMount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []cgroupMount
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		i := len(fields) - 3
		if i <= 5 || fields[i-1] != "-" || (fields[i] != "cgroup" && fields[i] != "cgroup2") {
			continue
		}
		out = append(out, cgroupMount{dir: fields[4], root: fields[3], v2: fields[i] == "cgroup2",
			controllers: strings.Split(fields[i+2], ",")})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}
