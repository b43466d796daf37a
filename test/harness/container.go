package harness

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer/container"
)

// A container, to the kernel, is processes in namespaces of their own and
// a cgroup its runtime made for them. Container makes one by hand, with
// the tools every host has (ip, nsenter, unshare, mount), so the tests run
// where no container runtime does:
//
//   - a network namespace (ip netns add, lo up), which the test's clients
//     dial into (Dial);
//   - a cgroup at the path a runtime's would be (Shape), in the cgroup v2
//     hierarchy, which the server's master enters before it starts;
//   - PID and mount namespaces of its own (unshare --pid --fork
//     --mount-proc), so the master is pid 1 inside, its workers 2, 3...;
//   - a root directory of its own: the host's, bound recursively, with the
//     test's temporary directories hidden but for the container's Dir and
//     the server's own directory, bound at the same paths (volumes). A
//     path the container sees is the same path on the host, and another
//     container of the same test does not see it.
//
// Everything is removed when the test ends, after the servers in it.

// Shape is the cgroup path a container runtime gives a container, and
// what the dump should tell of it.
type Shape struct {
	Name    string // a subtest's name
	Runtime string // the dump's container.runtime
	// QoS is the Kubernetes pod's QoS class (besteffort, burstable,
	// guaranteed); "" for a container in no pod.
	QoS  string
	path func(id, podUID string) string
}

// The shapes the tests use: each runtime's layout under the systemd cgroup
// driver, and Docker's and Kubernetes' under the cgroupfs driver.
var (
	Docker = Shape{Name: "docker", Runtime: "docker", path: func(id, _ string) string {
		return "/system.slice/docker-" + id + ".scope"
	}}
	DockerCgroupfs = Shape{Name: "docker-cgroupfs", Runtime: "docker", path: func(id, _ string) string {
		return "/docker/" + id
	}}
	Containerd = Shape{Name: "containerd-kubernetes", Runtime: "containerd", QoS: "besteffort", path: func(id, pod string) string {
		return "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + systemdUID(pod) + ".slice/cri-containerd-" + id + ".scope"
	}}
	CRIO = Shape{Name: "cri-o-kubernetes", Runtime: "cri-o", QoS: "burstable", path: func(id, pod string) string {
		return "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + systemdUID(pod) + ".slice/crio-" + id + ".scope"
	}}
	CRIOGuaranteed = Shape{Name: "cri-o-guaranteed", Runtime: "cri-o", QoS: "guaranteed", path: func(id, pod string) string {
		return "/kubepods.slice/kubepods-pod" + systemdUID(pod) + ".slice/crio-" + id + ".scope"
	}}
	Podman = Shape{Name: "podman", Runtime: "podman", path: func(id, _ string) string {
		return "/machine.slice/libpod-" + id + ".scope"
	}}
	// KubernetesCgroupfs names no runtime: the kubelet's cgroupfs driver
	// names a container by its ID alone.
	KubernetesCgroupfs = Shape{Name: "kubernetes-cgroupfs", QoS: "burstable", path: func(id, pod string) string {
		return "/kubepods/burstable/pod" + pod + "/" + id
	}}
)

// Shapes is every shape above.
var Shapes = []Shape{Docker, DockerCgroupfs, Containerd, CRIO, CRIOGuaranteed, Podman, KubernetesCgroupfs}

// systemdUID is a pod UID as the systemd driver writes it in a slice's
// name: dashes are underscores.
func systemdUID(uid string) string { return strings.ReplaceAll(uid, "-", "_") }

// Container is a container NewContainer or NewRuncContainer made.
type Container struct {
	Shape  Shape
	ID     string // 64 hex digits
	PodUID string // for a shape with a QoS class
	// Cgroup is its cgroup's path as /proc/PID/cgroup shows it.
	Cgroup string
	// NetNS is its network namespace's file, /run/netns/NAME.
	NetNS string
	// Dir is a directory it shares with the host at the same path, kept
	// across restarts of the servers in it: pidfiles, say.
	Dir string

	root, hide, procs, nsenter, unshare string
	// NewRuncContainer's: runc, the directory of its bundles, and the
	// container IDs it ran under.
	runc, bundles string
	runs          []string

	dialOnce sync.Once
	dials    chan dialRequest
	closed   chan struct{}
}

// Identity is what the dump's container should say of a master in c.
func (c *Container) Identity() container.Identity {
	return container.Identity{Cgroup: c.Cgroup, Runtime: c.Shape.Runtime, ID: c.ID, PodUID: c.PodUID, QoS: c.Shape.QoS}
}

// NewContainer makes a container of shape s, removed when t ends. It
// skips t (or fails it, in CI) without root or the tools it needs.
func NewContainer(t testing.TB, s Shape) *Container {
	t.Helper()
	c := newContainer(t, s)
	c.procs = filepath.Join(makeCgroup(t, c.Cgroup), "cgroup.procs")
	return c
}

// newContainer is a container of shape s but for its cgroup.
func newContainer(t testing.TB, s Shape) *Container {
	t.Helper()
	testutil.RequireRoot(t, "make network, PID and mount namespaces and cgroups")
	ip := testutil.RequireCommand(t, "ip", "iproute2")
	c := &Container{
		Shape: s, ID: randomHex(t, 32),
		nsenter: testutil.RequireCommand(t, "nsenter", "util-linux"),
		unshare: testutil.RequireCommand(t, "unshare", "util-linux"),
		Dir:     t.TempDir(), root: t.TempDir(),
		dials: make(chan dialRequest), closed: make(chan struct{}),
	}
	if s.QoS != "" {
		u := randomHex(t, 16)
		c.PodUID = u[:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:]
	}
	// The test's temporary root, where every t.TempDir of the test is:
	// hidden inside but for the volumes.
	c.hide = filepath.Dir(c.Dir)
	c.Cgroup = s.path(c.ID, c.PodUID)
	name := fmt.Sprintf("wstest-%d-%s", os.Getpid(), randomHex(t, 4))
	run(t, ip, "netns", "add", name)
	t.Cleanup(func() {
		close(c.closed)
		if out, err := exec.Command(ip, "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	c.NetNS = "/run/netns/" + name
	run(t, ip, "-n", name, "link", "set", "lo", "up")
	return c
}

// run runs a command to its end, failing t if it fails.
func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// randomHex is n random bytes in lower-case hex.
func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// containerInit is the container's start, run by sh -c in a mount
// namespace of its own (private: nothing it mounts is seen outside) with
// the arguments ROOT HIDE VOLUME... -- LAUNCHER...: it makes the
// container's root (the host's, bound recursively at ROOT, with HIDE
// hidden under an empty tmpfs and each VOLUME bound again at its own
// path), then becomes LAUNCHER, which starts the server in its PID
// namespace, chrooted into ROOT (see launcher).
const containerInit = `set -e
root=$1 hide=$2
shift 2
mount --rbind / "$root"
mount -t tmpfs -o mode=0755 container "$root$hide"
while [ "$1" != -- ]; do
	mkdir -p "$root$1"
	mount --bind "$1" "$root$1"
	shift
done
shift
exec "$@"
`

// Wrap makes cmd run in c: its network namespace, a new PID and mount
// namespace, its root and its cgroup. volumes are directories the command
// needs, seen inside at the same paths (c.Dir always is). The process
// cmd starts is the container's launcher, outside; Master gives the
// server's master inside.
func (c *Container) Wrap(t testing.TB, cmd *exec.Cmd, volumes ...string) {
	t.Helper()
	wd := cmd.Dir
	if wd == "" {
		wd, _ = os.Getwd()
	}
	args := []string{c.nsenter, "--net=" + c.NetNS, "--", c.unshare, "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", containerInit, "container-init", c.root, c.hide, c.Dir}
	args = append(append(args, volumes...), "--")
	if c.runc != "" {
		args = append(args, c.runcLauncher(t, cmd, wd)...)
	} else {
		args = append(args, c.launcher(cmd, wd)...)
	}
	cmd.Path, cmd.Args = c.nsenter, args
}

// launcher is the command that starts cmd in c by hand: unshare forks it
// as pid 1 of a new PID namespace, with its own /proc, chrooted into the
// container's root and in wd, once it has entered the container's cgroup.
// The unshare stays outside, waiting (a runtime's shim); it kills the
// container's init if it dies first.
func (c *Container) launcher(cmd *exec.Cmd, wd string) []string {
	return append([]string{c.unshare, "--pid", "--fork", "--kill-child", "--mount-proc", "--root=" + c.root, "--wd=" + wd, "--",
		"/bin/sh", "-c", `echo 0 >"$0" && exec "$@"`, c.procs, cmd.Path}, cmd.Args[1:]...)
}

// StartGroupIn is StartGroup for a server in c (on the host when c is
// nil), its command wrapped with volumes (see Wrap). It returns the
// master's host pid: in c, the container's pid 1.
func StartGroupIn(t testing.TB, c *Container, cmd *exec.Cmd, stop syscall.Signal, describe func() string, volumes ...string) (int, <-chan struct{}) {
	t.Helper()
	if c == nil {
		exited := StartGroup(t, cmd, stop, describe)
		return cmd.Process.Pid, exited
	}
	c.Wrap(t, cmd, volumes...)
	exited := StartGroup(t, cmd, stop, describe)
	return c.Master(t, cmd.Process.Pid, exited, describe), exited
}

// Master waits until the container's launcher has forked its init, and
// returns the init's host pid: the launcher's child whose own pid is 1.
func (c *Container) Master(t testing.TB, launcher int, exited <-chan struct{}, describe func() string) int {
	t.Helper()
	master := 0
	WaitFor(t, testutil.Patience(30*time.Second), "the container's init", func() error {
		select {
		case <-exited:
			t.Fatalf("the container's launcher exited early:\n%s", describe())
		default:
		}
		kids, err := ChildPIDs(launcher)
		if err != nil {
			return err
		}
		for _, k := range kids {
			if own, depth, err := NSPID(k); err == nil && own == 1 && depth > 1 {
				master = k
				return nil
			}
		}
		return fmt.Errorf("launcher %d has no child in a PID namespace of its own: %v", launcher, kids)
	})
	return master
}

// NSPID returns host pid's own pid, in its innermost PID namespace, and
// how many PID namespaces it is in (1 on the host).
func NSPID(pid int) (own, depth int, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "NSpid:"); ok {
			ids := strings.Fields(rest)
			if len(ids) == 0 {
				break
			}
			own, err := strconv.Atoi(ids[len(ids)-1])
			return own, len(ids), err
		}
	}
	return 0, 0, fmt.Errorf("/proc/%d/status has no NSpid", pid)
}

// WaitGone waits until host pid has exited and been reaped.
func WaitGone(t testing.TB, pid int) {
	t.Helper()
	WaitFor(t, 30*time.Second, fmt.Sprintf("pid %d to exit", pid), func() error {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			return fmt.Errorf("pid %d still there", pid)
		}
		return nil
	})
}

// makeCgroup makes the cgroup at path in the cgroup v2 hierarchy and
// returns its directory; when t ends it waits for the processes in it to
// be gone (killing those left after 10 s) and removes it, with the
// directories above it it made.
func makeCgroup(t testing.TB, path string) string {
	t.Helper()
	root := cgroup2Root(t)
	var made []string
	for d := path; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(root + d); errors.Is(err, fs.ErrNotExist) {
			made = append(made, root+d)
		}
	}
	dir := root + path
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("make the container's cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := emptyCgroup(dir); err != nil {
			t.Error(err)
		}
		for _, d := range made {
			// Another test's container may share a parent (kubepods.slice):
			// it is left to the last one out.
			if err := os.Remove(d); err != nil && !errors.Is(err, syscall.EBUSY) && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("remove the container's cgroup: %v", err)
			}
		}
	})
	return dir
}

// emptyCgroup waits until the cgroup at dir holds no process, killing
// what is left after 10 s: the container's, which its server's stop left.
func emptyCgroup(dir string) error {
	procs := filepath.Join(dir, "cgroup.procs")
	left := func() ([]int, error) {
		b, err := os.ReadFile(procs)
		var pids []int
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return pids, err
	}
	err := Poll(10*time.Second, func() error {
		pids, err := left()
		if err == nil && len(pids) > 0 {
			err = fmt.Errorf("processes %v are still in %s", pids, dir)
		}
		return err
	})
	if err == nil {
		return nil
	}
	pids, _ := left()
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return fmt.Errorf("%w: killed", err)
}

// cgroup2Root returns where the cgroup v2 hierarchy is mounted: / on a v2
// host, /unified on a hybrid one. Where it is mounted nowhere (make
// vm-test's guests mount no cgroup filesystem) it is mounted at
// /sys/fs/cgroup when that is an empty directory, as a host that runs
// containers has it (runc looks there), and left there; else in a
// temporary directory until t ends. The hierarchy is there all the same:
// /proc/PID/cgroup shows its paths on its "0::" line.
func cgroup2Root(t testing.TB) string {
	t.Helper()
	if dir, err := cgroup2Mount(); err != nil || dir != "" {
		if err != nil {
			t.Fatal(err)
		}
		return dir
	}
	const sysfs = "/sys/fs/cgroup"
	if ents, err := os.ReadDir(sysfs); err == nil && len(ents) == 0 {
		if err := syscall.Mount("cgroup2", sysfs, "cgroup2", 0, ""); err == nil {
			t.Logf("no cgroup v2 hierarchy was mounted: mounted one at %s", sysfs)
			return sysfs
		}
	}
	dir, err := os.MkdirTemp("", "workerstats-cgroup2-")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("cgroup2", dir, "cgroup2", 0, ""); err != nil {
		os.Remove(dir)
		t.Fatalf("no cgroup v2 hierarchy is mounted, and mounting one failed: %v", err)
	}
	t.Logf("no cgroup v2 hierarchy was mounted: mounted one at %s until the test ends", dir)
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return dir
}

// cgroup2Mount is the mount point of the cgroup v2 hierarchy's root, ""
// when it is mounted nowhere.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		i := len(fields) - 3
		if i > 5 && fields[i-1] == "-" && fields[i] == "cgroup2" && fields[3] == "/" {
			return fields[4], nil
		}
	}
	return "", sc.Err()
}

// dialRequest is one Dial a dialer makes.
type dialRequest struct {
	network, addr string
	done          chan<- dialResult
}

type dialResult struct {
	c   net.Conn
	err error
}

// dialers is how many connections Dial makes at once.
const dialers = 4

// Dial connects to addr from inside the container's network namespace:
// its loopback, its ports. The connection is then the test's, to use
// from any goroutine.
func (c *Container) Dial(network, addr string) (net.Conn, error) {
	c.dialOnce.Do(func() {
		for range dialers {
			go c.dialer()
		}
	})
	done := make(chan dialResult, 1)
	select {
	case c.dials <- dialRequest{network, addr, done}:
	case <-c.closed:
		return nil, errors.New("the container is gone")
	}
	r := <-done
	return r.c, r.err
}

// dialer makes Dial's connections from a thread of its own in the
// container's network namespace. The thread is never unlocked: it ends
// with the dialer, when the container is removed, and the runtime
// retires it rather than run other goroutines in that namespace.
func (c *Container) dialer() {
	runtime.LockOSThread()
	err := setNetNS(c.NetNS)
	d := net.Dialer{Timeout: 10 * time.Second}
	for {
		select {
		case r := <-c.dials:
			if err != nil {
				r.done <- dialResult{nil, err}
				continue
			}
			conn, err := d.Dial(r.network, r.addr)
			r.done <- dialResult{conn, err}
		case <-c.closed:
			return
		}
	}
}

// setNetNS moves the calling thread into the network namespace of file
// ns.
func setNetNS(ns string) error {
	f, err := os.Open(ns)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", ns, err)
	}
	return nil
}

// Listener is what the kernel says, inside the container's network
// namespace, of the listening socket at addr (host:port for TCP, a path
// for a Unix socket): the connections waiting in its accept queue and its
// backlog, as ss shows them.
func (c *Container) Listener(network, addr string) (queue, backlog uint64, err error) {
	family := "-t"
	if network == "unix" {
		family = "-x"
	}
	out, err := exec.Command(c.nsenter, "--net="+c.NetNS, "--", "ss", "-Hln", family).CombinedOutput()
	if err != nil {
		return 0, 0, fmt.Errorf("ss in %s: %v: %s", c.NetNS, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for i := 0; i+3 < len(f); i++ {
			if f[i] == "LISTEN" && f[i+3] == addr {
				queue, err = strconv.ParseUint(f[i+1], 10, 64)
				if err == nil {
					backlog, err = strconv.ParseUint(f[i+2], 10, 64)
				}
				return queue, backlog, err
			}
		}
	}
	return 0, 0, fmt.Errorf("no listener %s in %s:\n%s", addr, c.NetNS, out)
}
