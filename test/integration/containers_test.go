package integration

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The tests in this file run each server in a container made by hand
// (harness.Container: network, PID, mount namespaces and a cgroup of its
// own), watched by its master's host pid, as a node agent watches pools in
// containers. The dump must show the pids the server itself reports (its
// master is pid 1 inside, uWSGI says so) with the host's beside them, the
// same counts as the server's own, its listening sockets and accept queue
// as the kernel has them in the container's network namespace, its cwd
// inside its own root, and its container as its cgroup names it.

// TestUWSGIInContainer: uWSGI, 4 workers on an http-socket in the
// container's network namespace, compared with its own stats (read over a
// Unix socket, which any namespace reaches) worker by worker.
func TestUWSGIInContainer(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSetsInTurn(t, ebpfkernel.AvailableHooks, 0) {
		t.Run(hooks, func(t *testing.T) {
			uwsgiInContainer(t, harness.NewContainer(t, harness.Docker), hooks, 8000, 32, 200)
		})
	}
}

// uwsgiInContainer starts uWSGI with 4 workers on an http-socket in c and
// the daemon on it, drives n requests (conc at once, idle connections
// beside), and checks the dump against uWSGI's own stats worker by worker,
// its pids and cwd the container's own; then its sockets and accept queue
// against the kernel's in the container. It returns the dump.
func uwsgiInContainer(t *testing.T, c *harness.Container, hooks string, n, conc, idle int) *observer.Stats {
	t.Helper()
	p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 4, Container: c})
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
	checkSocketsSaid(t, d)
	res := harness.Drive(t, p, n, conc, idle)
	ours, theirs := harness.Settle(t, p, d, uint64(res.OK))
	harness.LogComparison(t, ours, theirs)
	checkInContainer(t, c, ours, p.PID, theirs.PID)
	if ours.CWD != theirs.CWD {
		t.Errorf("cwd %q, uWSGI's %q", ours.CWD, theirs.CWD)
	}
	harness.CheckDropped(t, ours, 0)
	t.Logf("%d requests and %d idle connections: counts equal uWSGI's for all %d workers; pid %d (host %d), cwd %q",
		res.OK, res.Idle, len(theirs.Workers), ours.PID, ours.HostPID, ours.CWD)
	t.Run("sockets", func(t *testing.T) {
		hold := httpGet(fmt.Sprintf("/0?sleep=%d", holdTime.Milliseconds()))
		checkHeldQueue(t, c, d, "tcp", p.Addr, 4, hold, httpGet("/0"), func(st *observer.Stats) error {
			u, err := harness.ReadStats(p.Stats)
			if err != nil {
				return err
			}
			return sameQueues(st, u, "uWSGI's")
		})
	})
	return ours
}

// TestGunicornInContainer: gunicorn, 4 sync workers in the container's
// network namespace. It keeps no stats: its app tells each response's
// worker pid, its own inside, and the clients count what they got.
func TestGunicornInContainer(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSetsInTurn(t, ebpfkernel.AvailableHooks, 1) {
		t.Run(hooks, func(t *testing.T) {
			c := harness.NewContainer(t, harness.Containerd)
			p := harness.StartGunicornIn(t, c, 4, "-k", "sync")
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			load := harness.DriveHTTPWith(t, p.DialFunc, p.Addr, 3000, 1, 16, 100)
			st := harness.GunicornSettle(t, d, load)
			harness.CheckGunicorn(t, st, load, hooks, nil)
			if len(st.Workers) != 4 {
				t.Errorf("%d workers in the dump, gunicorn has 4", len(st.Workers))
			}
			for _, w := range st.Workers {
				if load.ByPID[w.PID] == 0 {
					t.Errorf("pid %d (host %d) served no response: the clients saw pids %v", w.PID, w.HostPID, load.ByPID)
				}
			}
			checkInContainer(t, c, st, p.PID, 1)
			t.Run("sockets", func(t *testing.T) {
				hold := httpGet(fmt.Sprintf("/sleep/%d", holdTime.Milliseconds()))
				checkHeldQueue(t, c, d, "tcp", p.Addr, 4, hold, httpGet("/0"), nil)
			})
		})
	}
}

// TestPHPFPMInContainer: PHP-FPM, a static pool of 4 on a Unix socket in
// a directory the container shares with the host, compared with its own
// status page worker by worker.
func TestPHPFPMInContainer(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSetsInTurn(t, ebpfkernel.AvailableHooks, 2) {
		t.Run(hooks, func(t *testing.T) {
			c := harness.NewContainer(t, harness.CRIO)
			p := harness.StartPHPFPMIn(t, c)
			slow := filepath.Join(p.Dir, "slow.php")
			harness.WriteFile(t, slow, "<?php usleep((int)$_GET['ms'] * 1000); echo 'done';\n")
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			tr := &harness.FPMTraffic{}
			harness.FPMDrive(t, p, tr, 3000, 16, 0)
			own := harness.FPMStatusAfter(t, p, tr)
			ours := fpmSettle(t, d, own, tr)
			fpmLog(t, "in a container", ours, own, tr)
			for pid, n := range own.Requests() {
				if o := ours[pid]; o.Requests != n {
					t.Errorf("pid %d: requests %d, FPM's %d", pid, o.Requests, n)
				}
			}
			st, err := harness.ReadStats(d.Addr)
			if err != nil {
				t.Fatal(err)
			}
			checkInContainer(t, c, st, p.PID, 1)
			t.Run("sockets", func(t *testing.T) {
				hold := harness.FPMGet(p, slow, "/slow.php", fmt.Sprintf("ms=%d", holdTime.Milliseconds()))
				checkHeldQueue(t, c, d, "unix", p.Sock, harness.FPMWorkers, hold, harness.FPMGet(p, p.Script, "/app.php", "n=0"), nil)
			})
		})
	}
}

// checkInContainer fails t unless the dump st shows the pool whose master
// is host pid master, in container c, as the server itself sees it: the
// pool's pid is its own (ownPID: 1, its container's init) with master
// beside it, every worker's pid the one it has inside with its host pid
// beside it (one of master's children), and its container as its cgroup
// names it.
func checkInContainer(t *testing.T, c *harness.Container, st *observer.Stats, master, ownPID int) {
	t.Helper()
	if st.PID != 1 || st.PID != ownPID || st.HostPID != master {
		t.Errorf("pool: pid %d host_pid %d; want its own pid 1 (the server says %d) and host pid %d", st.PID, st.HostPID, ownPID, master)
	}
	kids, err := harness.ChildPIDs(master)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range st.Workers {
		own, depth, err := harness.NSPID(w.HostPID)
		if !slices.Contains(kids, w.HostPID) || err != nil || own != w.PID || depth < 2 {
			t.Errorf("worker %d: pid %d host_pid %d; the master's children are %v, host pid %d is pid %d in its namespace (%d deep, %v)",
				w.ID, w.PID, w.HostPID, kids, w.HostPID, own, depth, err)
		}
	}
	if len(st.Workers) != len(kids) {
		t.Errorf("%d workers in the dump, the master has %d children", len(st.Workers), len(kids))
	}
	pids := make([]string, len(st.Workers))
	for i, w := range st.Workers {
		pids[i] = fmt.Sprintf("%d (host %d)", w.PID, w.HostPID)
	}
	t.Logf("pool pid %d (host %d), workers' pids %s", st.PID, st.HostPID, strings.Join(pids, ", "))
	want := c.Identity()
	if st.Container == nil || *st.Container != want {
		t.Errorf("container %+v, want %+v", st.Container, want)
	}
}

// checkSocketsSaid fails t if the daemon d, watching a pool in a
// container that no worker has accepted a connection from since, shows
// no listening socket without saying why (the kernel learns a pool's
// listeners in another network namespace at an accept).
func checkSocketsSaid(t *testing.T, d *harness.Daemon) {
	t.Helper()
	st, err := harness.ReadStats(d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("before any connection: sockets %v, unknown %q", harness.SocketNames(st.Sockets), st.Observer.Unknown["sockets"])
	if len(st.Sockets) == 0 && st.Observer.Unknown["sockets"] == "" {
		t.Errorf("before any connection the dump shows no socket and says nothing of why")
	}
}

// holdTime is how long a request that holds a worker takes: long enough
// for both the server and the daemon to be read a few times while the
// accept queue holds its connections; longer under emulation (make
// vm-test scales the tests' request counts down).
var holdTime = func() time.Duration {
	if testutil.Scale(100) < 100 {
		return 20 * time.Second
	}
	return 6 * time.Second
}()

// waitingConns is how many connections checkHeldQueue leaves in the
// accept queue.
const waitingConns = 5

// checkHeldQueue: with every one of the pool's workers held in a request
// (hold, sent on a connection of its own for each), and the kernel saying
// inside container c that the listener at addr has none waiting,
// waitingConns more requests (wait) are sent that wait in its accept
// queue (each with its request: uWSGI's TCP sockets defer a connection's
// accept until its first data). The dump must then show the listener as
// the kernel does in c (queue and backlog), listen_queue the connections
// waiting, and own, when given, must agree: the server's own stats.
// Every answer is read to its end in the background.
func checkHeldQueue(t *testing.T, c *harness.Container, d *harness.Daemon, network, addr string, workers int, hold, wait []byte, own func(st *observer.Stats) error) {
	t.Helper()
	var wg sync.WaitGroup
	defer wg.Wait()
	send := func(req []byte) {
		conn, err := c.Dial(network, addr)
		if err == nil {
			_, err = conn.Write(req)
		}
		if err != nil {
			t.Fatalf("send a request: %v", err)
		}
		wg.Go(func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(4 * holdTime))
			if n, err := io.Copy(io.Discard, conn); err != nil || n == 0 {
				t.Errorf("%d bytes of answer, %v", n, err)
			}
		})
	}
	for range workers {
		send(hold)
	}
	harness.WaitFor(t, holdTime/2, "every worker to take its held request", func() error {
		if q, _, err := c.Listener(network, addr); err != nil || q != 0 {
			return fmt.Errorf("%d waiting (%v)", q, err)
		}
		return nil
	})
	for range waitingConns {
		send(wait)
	}
	var st *observer.Stats
	err := harness.Poll(holdTime/3, func() (err error) {
		if st, err = harness.ReadStats(d.Addr); err != nil {
			return err
		}
		if err = sameAsKernel(c, st, network, addr); err == nil && own != nil {
			err = own(st)
		}
		return err
	})
	if err != nil {
		t.Errorf("with %d connections waiting: %v", waitingConns, err)
		if st != nil {
			t.Logf("sockets %+v, listen_queue %d, unknown %v", st.Sockets, st.ListenQueue, st.Observer.Unknown)
		}
		return
	}
	t.Logf("with %d connections waiting: sockets %+v, listen_queue %d, as the kernel says in the container", waitingConns, st.Sockets, st.ListenQueue)
}

// httpGet is a GET of path that closes its connection after the answer.
func httpGet(path string) []byte {
	return []byte(fmt.Sprintf("GET %s HTTP/1.0\r\nHost: test\r\n\r\n", path))
}

// sameAsKernel returns nil when the dump shows the listener at addr with
// the queue and backlog the kernel gives it in the container, every
// connection waiting there in listen_queue, and no other socket.
func sameAsKernel(c *harness.Container, st *observer.Stats, network, addr string) error {
	queue, backlog, err := c.Listener(network, addr)
	if err != nil {
		return err
	}
	if queue != waitingConns {
		return fmt.Errorf("the kernel has %d connections waiting, the test made %d", queue, waitingConns)
	}
	names := harness.SocketNames(st.Sockets)
	if !slices.Equal(names, []string{addr}) {
		return fmt.Errorf("sockets %v (unknown %q), want [%s]", names, st.Observer.Unknown["sockets"], addr)
	}
	if s := st.Sockets[0]; s.Queue != queue || s.MaxQueue != backlog || st.ListenQueue != queue {
		return fmt.Errorf("socket %s: queue %d max_queue %d, listen_queue %d; the kernel in the container says %d waiting of %d",
			addr, s.Queue, s.MaxQueue, st.ListenQueue, queue, backlog)
	}
	return nil
}

// sameQueues returns nil when the dump ours shows the sockets and the
// listen_queue theirs (a server's own stats, who) shows.
func sameQueues(ours, theirs *observer.Stats, who string) error {
	if ours.ListenQueue != theirs.ListenQueue {
		return fmt.Errorf("listen_queue %d, %s %d", ours.ListenQueue, who, theirs.ListenQueue)
	}
	if len(ours.Sockets) != len(theirs.Sockets) {
		return fmt.Errorf("sockets %+v, %s %+v", ours.Sockets, who, theirs.Sockets)
	}
	for i, u := range theirs.Sockets {
		if o := ours.Sockets[i]; o.Name != u.Name || o.Queue != u.Queue || o.MaxQueue != u.MaxQueue {
			return fmt.Errorf("socket %s: queue %d max_queue %d; %s %s: queue %d max_queue %d", o.Name, o.Queue, o.MaxQueue, who, u.Name, u.Queue, u.MaxQueue)
		}
	}
	return nil
}

// TestCgroupNamesContainer: a uWSGI master in a cgroup shaped as each
// runtime makes one (Docker under systemd and cgroupfs, containerd and
// CRI-O under Kubernetes with a pod UID and QoS class, Podman, the
// kubelet's cgroupfs layout): the dump's container names the runtime, the
// container's ID, the pod's UID and QoS, and the requests still count
// exactly, and /metrics labels the workers' series with the container's
// runtime, ID and pod UID. The shapes take the kernel's hook sets in turn.
func TestCgroupNamesContainer(t *testing.T) {
	testutil.RequireEBPF(t)
	sets := testutil.HookSets(t, ebpfkernel.AvailableHooks)
	for i, shape := range harness.Shapes {
		hooks := sets[i%len(sets)]
		t.Run(shape.Name+"/"+hooks, func(t *testing.T) {
			c := harness.NewContainer(t, shape)
			p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2, Container: c})
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--stats-http", "--hooks", hooks,
				"--metrics-labels", containerMetricsLabels)
			res := harness.Drive(t, p, 500, 8, 0)
			ours, theirs := harness.Settle(t, p, d, uint64(res.OK))
			checkInContainer(t, c, ours, p.PID, theirs.PID)
			body := harness.MetricsText(t, d)
			for _, w := range ours.Workers {
				match := containerLabels(c)
				match["worker"] = strconv.Itoa(w.ID)
				if v, ok := harness.MetricValue(t, body, "workerstats_worker_requests_total", match); !ok || v != float64(w.Requests) {
					t.Errorf("/metrics: workerstats_worker_requests_total%v = %v (found: %v), want %d", match, v, ok, w.Requests)
				}
			}
			cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", p.PID))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("master %d's cgroup file:\n%s", p.PID, cg)
			t.Logf("%d requests counted; container %+v", res.OK, ours.Container)
		})
	}
}

// TestPidfileInContainerFollowsRestart: uWSGI writes its --pidfile in its
// container, in a directory the host sees at the same path: "1", its own
// pid. Another container runs a pre-fork master of pid 1 too (started
// first), which does not see that file. The daemon, given the pidfile,
// watches the right master; once that one has stopped it shows an empty
// pool; once the server is started again in its container (a new PID
// namespace: pid 1 again, its workers 2 to 5 again) it follows it: the new
// processes' host pids replace the old ones, and the slots' counts go on
// from where they were, where uWSGI's own start again at 0. Run with
// --vacuum (uWSGI removes its pidfile when it stops) and without (the
// file is left, naming pid 1, while no master of the container runs).
func TestPidfileInContainerFollowsRestart(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSetsInTurn(t, ebpfkernel.AvailableHooks, 3) {
		t.Run(hooks+"/vacuum", func(t *testing.T) { followRestartInContainer(t, hooks, []string{"--vacuum"}) })
		t.Run(hooks+"/pidfile-left", func(t *testing.T) { followRestartInContainer(t, hooks, nil) })
	}
}

// followRestartInContainer is TestPidfileInContainerFollowsRestart with
// uWSGI's extra options.
func followRestartInContainer(t *testing.T, hooks string, extra []string) {
	decoy := harness.NewContainer(t, harness.Docker)
	other := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2, Container: decoy, Pidfile: true})
	who := func(host int) string {
		switch host {
		case other.PID:
			return ": the other container's master, which does not see the pidfile"
		case 1:
			return ": the host's init"
		}
		return ""
	}
	c := harness.NewContainer(t, harness.Podman)
	o := harness.UWSGIOptions{Processes: 4, Container: c, Pidfile: true, Extra: extra}
	p1 := harness.StartUWSGI(t, o)
	d := harness.StartDaemon(t, "--pidfile", p1.Pidfile, "--stats", harness.FreeAddr(t), "--hooks", hooks)
	l1 := harness.Drive(t, p1, 2000, 16, 0)
	ours1, theirs1 := harness.Settle(t, p1, d, uint64(l1.OK))
	checkInContainer(t, c, ours1, p1.PID, theirs1.PID)
	old := map[int]bool{p1.PID: true}
	base := map[int]observer.Worker{}
	for _, w := range ours1.Workers {
		old[w.HostPID], base[w.ID] = true, w
	}

	if err := syscall.Kill(p1.PID, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	harness.WaitGone(t, p1.PID)
	_, err := os.Stat(p1.Pidfile)
	t.Logf("uWSGI stopped; its pidfile: %v", err)
	st := harness.WaitStats(t, d.Addr, 20*time.Second, "an empty pool once the master is gone", func(st *observer.Stats) error {
		if len(st.Workers) != 0 || st.Observer.Waiting == "" {
			return fmt.Errorf("pid %d (host %d%s) with %d workers, waiting %q", st.PID, st.HostPID, who(st.HostPID), len(st.Workers), st.Observer.Waiting)
		}
		return nil
	})
	t.Logf("while uWSGI is down: waiting %q", st.Observer.Waiting)

	p2 := harness.StartUWSGI(t, o)
	harness.WaitStats(t, d.Addr, 20*time.Second, "the restarted master", func(st *observer.Stats) error {
		if st.HostPID != p2.PID || len(st.Workers) != 4 {
			return fmt.Errorf("host pid %d%s with %d workers, want %d with 4", st.HostPID, who(st.HostPID), len(st.Workers), p2.PID)
		}
		return nil
	})
	l2 := harness.Drive(t, p2, 2000, 16, 0)
	ours2, theirs2 := harness.SettleFrom(t, p2, d, uint64(l2.OK), base)
	harness.LogComparison(t, ours2, theirs2)
	checkInContainer(t, c, ours2, p2.PID, theirs2.PID)
	for _, w := range ours2.Workers {
		if old[w.HostPID] {
			t.Errorf("slot %d: host pid %d is the stopped server's", w.ID, w.HostPID)
		}
	}
	if _, tx, _ := harness.SumRequests(ours2); tx != uint64(l1.Received+l2.Received) {
		t.Errorf("tx %d, clients received %d before and after the restart", tx, l1.Received+l2.Received)
	}
	t.Logf("master pid 1 on host %d, then pid 1 on host %d; %d requests before the restart and %d after, every slot equal to uWSGI's plus what it had",
		p1.PID, p2.PID, l1.OK, l2.OK)
}

// TestUWSGIInContainerByRunc: uWSGI, 4 workers, in a container a real OCI
// runtime starts (runc, with Docker's default capabilities and its own
// PID, mount, IPC, UTS and cgroup namespaces and /proc, /dev, /sys), in a
// cgroup of Docker's cgroupfs layout, compared with its own stats worker
// by worker, its sockets and accept queue with the kernel's in the
// container.
func TestUWSGIInContainerByRunc(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSetsInTurn(t, ebpfkernel.AvailableHooks, 4) {
		t.Run(hooks, func(t *testing.T) {
			ours := uwsgiInContainer(t, harness.NewRuncContainer(t, harness.DockerCgroupfs), hooks, 4000, 16, 100)
			cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", ours.HostPID))
			t.Logf("runc's container: pid %d (host %d), cwd %q, container %+v; its master's cgroup file:\n%s", ours.PID, ours.HostPID, ours.CWD, ours.Container, cg)
		})
	}
}
