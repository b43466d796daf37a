package observer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
)

const dockerID = "3f1c9a0b7e2d4c5a8b6e9f0d1c2b3a4958677e6d5c4b3a291807f6e5d4c3b2a1"

func TestProcfsNSPID(t *testing.T) {
	fs := newProcfs(t,
		fakeProc{pid: 27701, ppid: 1, comm: "uwsgi", nspid: []int{27701, 1}},
		fakeProc{pid: 27702, ppid: 27701, comm: "uwsgi", nspid: []int{27702, 41, 2}}, // nested twice
		fakeProc{pid: 300, ppid: 1, comm: "uwsgi"},
	)
	for pid, want := range map[int]int{27701: 1, 27702: 2, 300: 300} {
		if got, err := fs.NSPID(pid); err != nil || got != want {
			t.Errorf("NSPID(%d) = %d, %v; want %d", pid, got, err, want)
		}
	}
	// A kernel before 4.1 writes no NSpid line: the pid is its own.
	writeFile(t, filepath.Join(fs.Root, "300", "status"), "Name:\tuwsgi\nPid:\t300\n")
	if got, err := fs.NSPID(300); err != nil || got != 300 {
		t.Errorf("without NSpid: %d, %v; want 300", got, err)
	}
	if _, err := fs.NSPID(4242); err == nil {
		t.Error("a missing process has an own pid")
	}
}

func TestInsideRoot(t *testing.T) {
	for _, c := range []struct{ root, path, want string }{
		{"/", "/srv/app", "/srv/app"},
		{"", "/srv/app", "/srv/app"},
		{"/var/lib/c1/rootfs", "/var/lib/c1/rootfs/app", "/app"},
		{"/var/lib/c1/rootfs/", "/var/lib/c1/rootfs/app/x", "/app/x"},
		{"/var/lib/c1/rootfs", "/var/lib/c1/rootfs", "/"},
		{"/var/lib/c1/rootfs", "/var/lib/c1/rootfs2/app", "/var/lib/c1/rootfs2/app"}, // not inside
	} {
		if got := insideRoot(c.root, c.path); got != c.want {
			t.Errorf("insideRoot(%q, %q) = %q, want %q", c.root, c.path, got, c.want)
		}
	}
}

// The working directory is the one the master itself sees, as uWSGI
// reports it: inside its container's root.
func TestProcfsCwdInsideContainer(t *testing.T) {
	fs := newProcfs(t, fakeProc{pid: 2000, ppid: 1, comm: "uwsgi", cwd: "/var/lib/c1/rootfs/app", root: "/var/lib/c1/rootfs"})
	if got, err := fs.Cwd(2000); err != nil || got != "/app" {
		t.Errorf("Cwd = %q, %v; want /app", got, err)
	}
}

// containerHost is a host with uWSGI in two containers, each its
// container's pid 1 with workers 2 and 3, a third container whose pid 1
// is a shell, and uWSGI on the host itself.
func containerHost(rootA, rootC string) []fakeProc {
	cg := func(id string) string { return "0::/system.slice/docker-" + id + ".scope\n" }
	idA, idC := dockerID, strings.Repeat("c", 64)
	return []fakeProc{
		{pid: 1, ppid: 0, comm: "systemd", startTicks: 1, tasks: map[int][]int{1: {300, 2000, 3000, 4000}}},
		{pid: 300, ppid: 1, comm: "uwsgi", startTicks: 30, tasks: map[int][]int{300: {301}}},
		{pid: 301, ppid: 300, comm: "uwsgi", startTicks: 31},
		{pid: 2000, ppid: 1, comm: "uwsgi", startTicks: 200, nspid: []int{2000, 1}, root: rootA, cgroup: cg(idA), cwd: "/app",
			tasks: map[int][]int{2000: {2001, 2002}}},
		{pid: 2001, ppid: 2000, comm: "uwsgi", startTicks: 201, nspid: []int{2001, 2}, cgroup: cg(idA)},
		{pid: 2002, ppid: 2000, comm: "uwsgi", startTicks: 202, nspid: []int{2002, 3}, cgroup: cg(idA)},
		{pid: 3000, ppid: 1, comm: "sh", startTicks: 300, nspid: []int{3000, 1}, cgroup: cg(strings.Repeat("b", 64))},
		{pid: 4000, ppid: 1, comm: "uwsgi", startTicks: 400, nspid: []int{4000, 1}, root: rootC, cgroup: cg(idC),
			tasks: map[int][]int{4000: {4001}}},
		{pid: 4001, ppid: 4000, comm: "uwsgi", startTicks: 401, nspid: []int{4001, 2}, cgroup: cg(idC)},
	}
}

// A pidfile holds its writer's own pid: "1" in a container is the
// container's master, found by the file being the same file inside it;
// a host master's pid is the host's.
func TestTargetFindByPIDFileInContainer(t *testing.T) {
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "app.pid")
	writePIDFile(t, pidfile, 1)
	// Container A sees the host's root (the file is bind-mounted at the
	// same path); container C's root holds no such file.
	fs := newProcfs(t, containerHost("/", t.TempDir())...)
	if got, err := (Target{PIDFile: pidfile}).Find(fs); err != nil || got.PID != 2000 {
		t.Errorf("pidfile 1 seen by container A: %+v, %v; want host pid 2000", got, err)
	}
	writePIDFile(t, pidfile, 300)
	if got, err := (Target{PIDFile: pidfile}).Find(fs); err != nil || got.PID != 300 {
		t.Errorf("pidfile 300 of the host's uWSGI: %+v, %v; want 300", got, err)
	}

	// Where the daemon may not look inside the containers, two masters
	// are the own pid 1 of their containers: which one cannot be told...
	writePIDFile(t, pidfile, 1)
	blind := newProcfs(t, containerHost("", "")...)
	if _, err := (Target{PIDFile: pidfile}).Find(blind); !errors.Is(err, ErrSeveralMasters) || !strings.Contains(err.Error(), "2000, 4000") {
		t.Errorf("two containers' pid 1: err = %v, want several masters naming 2000 and 4000", err)
	}
	// ...unless the master found last was in one of them: restarted in
	// its container, it is found there.
	hint := masterHint{proc: Proc{PID: 4999, StartTicks: 1}, cgroup: "0::/system.slice/docker-" + strings.Repeat("c", 64) + ".scope\n"}
	if got, err := (Target{PIDFile: pidfile}).find(blind, hint); err != nil || got.PID != 4000 {
		t.Errorf("restarted in container C: %+v, %v; want 4000", got, err)
	}
	writePIDFile(t, pidfile, 7)
	if _, err := (Target{PIDFile: pidfile}).Find(fs); !errors.Is(err, ErrNoTarget) || !strings.Contains(err.Error(), "on the host or in a container") {
		t.Errorf("pidfile 7: err = %v, want no target", err)
	}
}

// A pool in a container shows the pids its server reports (its PID
// namespace's), the host's beside them, and its container.
func TestPoolShowsItsOwnPIDsAndContainer(t *testing.T) {
	fs := newProcfs(t, containerHost("/", "")...)
	k := newFakeKernel()
	p := &Pool{Target: Target{PID: 2000}, Proc: fs, Kernel: k, Log: testutil.NewLog(t).Logger}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The kernel saw worker 2002's own pid at its fork; 2001's comes
	// from procfs.
	k.update(2002, func(c *Counters) { c.NSPID = 3 })
	st := snapshot(t, p)
	if st.PID != 1 || st.HostPID != 2000 {
		t.Errorf("master pid %d, host_pid %d; want 1 and 2000", st.PID, st.HostPID)
	}
	got := map[int]int{}
	for _, w := range st.Workers {
		got[w.HostPID] = w.PID
	}
	if len(got) != 2 || got[2001] != 2 || got[2002] != 3 {
		t.Errorf("workers' host pid -> pid %v, want 2001 -> 2, 2002 -> 3", got)
	}
	if c := st.Container; c == nil || c.Runtime != "docker" || c.ID != dockerID {
		t.Errorf("container %+v, want docker %s", c, dockerID)
	}
	b, err := MarshalStats(st, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"pid":1,"host_pid":2000,`, `"container":{"cgroup":"/system.slice/docker-` + dockerID + `.scope","runtime":"docker","id":"` + dockerID + `"}`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("the dump lacks %s:\n%s", want, b)
		}
	}
}

// readerKernel is a fake kernel that scans and reads listeners, as the
// eBPF kernel does: a scan asked is answered by the next refresh, and the
// reader then gives the sockets, NetNS set.
type readerKernel struct {
	*fakeKernel
	asked, answered bool
	socks           []Socket
}

func (k *readerKernel) ScanListeners(master int) error { k.asked = true; return nil }

func (k *readerKernel) ScannedListeners(master int) ([]uint64, bool, error) {
	if !k.answered {
		return nil, false, nil
	}
	return []uint64{42}, true, nil
}

func (k *readerKernel) ReadListeners(master int) ([]Socket, bool, error) {
	if !k.answered {
		return nil, false, nil
	}
	return k.socks, true, nil
}

// A pool in another network namespace has its listeners read in the
// kernel: until the kernel's scan answers, the dump says why they are
// missing; then they are the kernel's, queues and all.
func TestPoolInOtherNetNSReadsListenersInTheKernel(t *testing.T) {
	fs := newProcfs(t, containerHost("/", "")...)
	// The master's network namespace is not the daemon's.
	if err := os.MkdirAll(filepath.Join(fs.Root, "2000", "ns"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(fs.Root, "2000", "ns", "net"), "another namespace")
	k := &readerKernel{fakeKernel: newFakeKernel()}
	p := &Pool{Target: Target{PID: 2000}, Proc: fs, Kernel: k, Log: testutil.NewLog(t).Logger}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	st := snapshot(t, p)
	if !k.asked || len(st.Sockets) != 0 || !strings.Contains(st.Observer.Unknown["sockets"], "another network namespace") {
		t.Fatalf("before the kernel answered: asked %v, sockets %+v, unknown %v; want asked, none, and why", k.asked, st.Sockets, st.Observer.Unknown)
	}
	k.answered = true
	k.socks = []Socket{{Name: "127.0.0.1:8000", Proto: "tcp", Queue: 3, MaxQueue: 100, Drops: 2, NetNS: 4026532000}}
	p.MaxAge, p.last = 0, nil
	p.gauges = gauges{}
	st = snapshot(t, p)
	if len(st.Sockets) != 1 || st.Sockets[0].Name != "127.0.0.1:8000" || st.ListenQueue != 3 || st.ListenQueueErrors != 2 || st.Observer.Unknown["sockets"] != "" {
		t.Errorf("after: sockets %+v, listen_queue %d, errors %d, unknown %v; want the kernel's", st.Sockets, st.ListenQueue, st.ListenQueueErrors, st.Observer.Unknown)
	}
}
