package integration

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The tests in this file run one daemon in discovery mode (serve
// --discover), as a node agent does: it finds every pre-fork master on
// the host, in containers (made by hand, harness.Container) or not, lists
// them at GET /, serves each pool's dump at GET /pools/ID and all of them
// on one /metrics labelled per pool. Other pools may run on the host at
// the same time (other tests'): each test looks only at its own, found by
// its master's host pid.

// discoverEvery is the daemon's --discover-interval in these tests.
const discoverEvery = "200ms"

// waitListed waits until the discovery daemon d lists the pool whose
// master is host pid master, and returns it.
func waitListed(t *testing.T, d *harness.Daemon, master int, workers int) harness.Listed {
	t.Helper()
	var found harness.Listed
	harness.WaitFor(t, 20*time.Second, fmt.Sprintf("the pool of master %d to be listed", master), func() error {
		l, err := harness.ReadList(d.Addr)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(l, func(p harness.Listed) bool { return p.HostPID == master })
		if i < 0 {
			return fmt.Errorf("not in a list of %d pools", len(l))
		}
		if found = l[i]; found.Workers != workers {
			return fmt.Errorf("listed with %d workers, want %d", found.Workers, workers)
		}
		return nil
	})
	return found
}

// waitUnlisted waits until the discovery daemon d no longer lists a pool
// whose master is host pid master, or whose ID is id.
func waitUnlisted(t *testing.T, d *harness.Daemon, master int, id string) {
	t.Helper()
	harness.WaitFor(t, 20*time.Second, fmt.Sprintf("the pool of master %d to leave the list", master), func() error {
		l, err := harness.ReadList(d.Addr)
		if err != nil {
			return err
		}
		for _, p := range l {
			if p.HostPID == master || p.ID == id {
				return fmt.Errorf("still listed: %+v", p)
			}
		}
		return nil
	})
}

// settleAt waits until uWSGI pool p has accounted want requests and the
// dump at addr agrees with it worker by worker, and returns both dumps.
func settleAt(t *testing.T, p *harness.UWSGIPool, addr string, want uint64) (ours, theirs *observer.Stats) {
	t.Helper()
	harness.WaitFor(t, 20*time.Second, "workerstats to agree with uWSGI at "+addr, func() error {
		var err error
		if theirs, err = harness.ReadStats(p.Stats); err != nil {
			return err
		}
		if got, _, _ := harness.SumRequests(theirs); got != want {
			return fmt.Errorf("uWSGI counts %d requests, clients completed %d", got, want)
		}
		if ours, err = harness.ReadStats(addr); err != nil {
			return err
		}
		return harness.CompareWorkers(ours, theirs, nil)
	})
	return ours, theirs
}

// TestDiscoverPoolsOnOneAddressInTwoNamespaces: two uWSGI pools on the
// same address, 127.0.0.1 and one port, each in a container of its own
// (a Docker one, and a containerd one in a Kubernetes pod), with different
// loads, under one discovery daemon. Each pool's dump equals its own
// uWSGI's stats, worker by worker; its socket's queue_wait counts the
// connections its own workers accepted, not the other's; and /metrics
// labels each pool's series with its pool ID, server and container,
// never a pid.
func TestDiscoverPoolsOnOneAddressInTwoNamespaces(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSetsInTurn(t, ebpfkernel.AvailableHooks, 5) {
		t.Run(hooks, func(t *testing.T) {
			addr := harness.FreeAddr(t)
			shapes := []harness.Shape{harness.Docker, harness.Containerd}
			requests := []int{3000, 1200}
			d := harness.StartDiscovery(t, "--discover-interval", discoverEvery, "--hooks", hooks, "--metrics-labels", containerMetricsLabels)
			var pools []*harness.UWSGIPool
			var cs []*harness.Container
			for _, s := range shapes {
				c := harness.NewContainer(t, s)
				cs = append(cs, c)
				pools = append(pools, harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 4, Container: c, Addr: addr}))
			}
			listed := make([]harness.Listed, len(pools))
			warm := make([]waits, len(pools))
			for i, p := range pools {
				listed[i] = waitListed(t, d, p.PID, 4)
				warm[i] = warmUp(t, d, p, listed[i])
			}
			// Both loads, then both pools' figures: each must be its own.
			res := make([]*harness.LoadResult, len(pools))
			for i, p := range pools {
				res[i] = harness.Drive(t, p, requests[i], 16, 0)
			}
			dumps := make([]*observer.Stats, len(pools))
			for i, p := range pools {
				ours, theirs := settleAt(t, p, poolURL(d, listed[i]), uint64(res[i].OK)+warm[i].requests)
				harness.LogComparison(t, ours, theirs)
				checkInContainer(t, cs[i], ours, p.PID, theirs.PID)
				checkQueueWaitApart(t, d, listed[i], warm[i])
				dumps[i] = ours
			}
			checkPoolLabels(t, harness.MetricsText(t, d), listed, dumps, cs)
		})
	}
}

// poolURL is where discovery daemon d serves pool l's dump.
func poolURL(d *harness.Daemon, l harness.Listed) string {
	return d.Addr + strings.TrimPrefix(l.Path, "/")
}

// waits is what a pool's dump says of its listener's queue waits and its
// workers' connections.
type waits struct {
	socket             string
	timed, accepted    uint64 // queue_wait's count, the workers' accepted
	requests           uint64 // the workers' requests (warmUp: those it sent)
	sumUs              uint64
	hasQueue, hasTimed bool
}

// waitsOf reads waits from a dump.
func waitsOf(st *observer.Stats) waits {
	w := waits{hasQueue: len(st.Sockets) == 1}
	w.accepted, _ = harness.SumConns(st)
	w.requests, _, _ = harness.SumRequests(st)
	if w.hasQueue {
		w.socket = st.Sockets[0].Name
		if q := st.Sockets[0].QueueWait; q != nil {
			w.hasTimed, w.timed, w.sumUs = true, q.Count, q.SumUs
		}
	}
	return w
}

// warmUp sends pool p, listed as l, requests until its dump shows its
// listener timed (the kernel learns a pool's listeners at an accept), and
// returns what the dump says then, with the requests sent.
func warmUp(t *testing.T, d *harness.Daemon, p *harness.UWSGIPool, l harness.Listed) waits {
	t.Helper()
	var w waits
	sent := uint64(0)
	harness.WaitFor(t, 10*time.Second, "pool "+l.ID+"'s listener to be timed", func() error {
		sent += uint64(harness.Drive(t, p, 1, 1, 0).OK)
		st, err := harness.ReadStats(poolURL(d, l))
		if err != nil {
			return err
		}
		if w = waitsOf(st); !w.hasTimed {
			return fmt.Errorf("sockets %+v (unknown %q)", st.Sockets, st.Observer.Unknown["sockets"])
		}
		return nil
	})
	w.requests = sent
	return w
}

// checkQueueWaitApart fails t unless pool l's listener has timed, since
// warm, exactly the connections its own workers accepted (and not the
// other pool's on the same port).
func checkQueueWaitApart(t *testing.T, d *harness.Daemon, l harness.Listed, warm waits) {
	t.Helper()
	var w waits
	harness.WaitStats(t, poolURL(d, l), 10*time.Second, "pool "+l.ID+"'s queue waits", func(st *observer.Stats) error {
		w = waitsOf(st)
		if !w.hasTimed || w.timed-warm.timed != w.accepted-warm.accepted {
			return fmt.Errorf("socket %q: queue_wait counts %d connections more, its workers accepted %d more", w.socket, w.timed-warm.timed, w.accepted-warm.accepted)
		}
		return nil
	})
	t.Logf("pool %s: socket %s timed %d waits (%d µs in all) since its warm-up, as many as its workers accepted", l.ID, w.socket, w.timed-warm.timed, w.sumUs-warm.sumUs)
}

// checkPoolLabels fails t unless /metrics (body) has, for every slot of
// each pool in listed (its dump in dumps, in container cs[i]), its
// requests labelled with the pool's ID, its server and its container, and
// no series a label for a pid.
func checkPoolLabels(t *testing.T, body string, listed []harness.Listed, dumps []*observer.Stats, cs []*harness.Container) {
	t.Helper()
	for i, l := range listed {
		for _, w := range dumps[i].Workers {
			match := containerLabels(cs[i])
			match["pool"], match["server"], match["worker"] = l.ID, "uwsgi", strconv.Itoa(w.ID)
			if v, ok := harness.MetricValue(t, body, "workerstats_worker_requests_total", match); !ok || v != float64(w.Requests) {
				t.Errorf("/metrics: workerstats_worker_requests_total%v = %v (found: %v), want %d", match, v, ok, w.Requests)
			}
		}
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	for name, f := range families {
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if strings.Contains(l.GetName(), "pid") {
					t.Errorf("/metrics: %s has a label %s=%q", name, l.GetName(), l.GetValue())
				}
			}
		}
	}
}

// containerMetricsLabels are the labels that name a pool's container by
// its cgroup, beside its pool and server: opt-in (--metrics-labels).
const containerMetricsLabels = "pool,server,container_runtime,container_id,pod_uid"

// containerLabels are the labels /metrics gives a pool in container c
// (with --metrics-labels containerMetricsLabels), those with a value.
func containerLabels(c *harness.Container) map[string]string {
	m := map[string]string{}
	for k, v := range map[string]string{"container_runtime": c.Shape.Runtime, "container_id": c.ID, "pod_uid": c.PodUID} {
		if v != "" {
			m[k] = v
		}
	}
	return m
}

// TestDiscoverPoolsComeAndGo: a discovery daemon runs while pools start
// and stop: a gunicorn in a Podman container and a uWSGI on the host
// appear at GET / once started (with their container, their server, the
// master's own pid and the host's) and vanish once stopped; a uWSGI
// restarted in its container is a new pool that keeps nothing of the old
// one's processes: new host pids, each slot a first process, counts
// equal to the new uWSGI's own.
func TestDiscoverPoolsComeAndGo(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSetsInTurn(t, ebpfkernel.AvailableHooks, 6) {
		t.Run(hooks, func(t *testing.T) {
			d := harness.StartDiscovery(t, "--discover-interval", discoverEvery, "--hooks", hooks)

			c := harness.NewContainer(t, harness.Podman)
			g := harness.StartGunicornIn(t, c, 2, "-k", "sync")
			lg := waitListed(t, d, g.PID, 2)
			if lg.Server != "gunicorn" || lg.PID != 1 || lg.Container == nil || *lg.Container != c.Identity() || lg.Path != "/pools/"+lg.ID {
				t.Errorf("gunicorn in a container listed as %+v (container %+v); want server gunicorn, pid 1, container %+v, path /pools/ID", lg, lg.Container, c.Identity())
			}
			h := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2})
			lh := waitListed(t, d, h.PID, 2)
			if lh.Server != "uwsgi" || lh.PID != h.PID || (lh.Container != nil && lh.Container.InContainer()) {
				t.Errorf("uWSGI on the host listed as %+v (container %+v); want server uwsgi, pid %d, no container", lh, lh.Container, h.PID)
			}
			harness.StopGunicorn(t, g)
			waitUnlisted(t, d, g.PID, lg.ID)
			if err := syscall.Kill(h.PID, syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			waitUnlisted(t, d, h.PID, lh.ID)
			t.Logf("listed then gone: %s (gunicorn, pid 1 on host %d) and %s (uWSGI, pid %d)", lg.ID, g.PID, lh.ID, h.PID)

			restartInContainer(t, d)
		})
	}
}

// restartInContainer: a uWSGI in a CRI-O container, loaded, then stopped
// and started again there, is listed anew with nothing of the old
// processes.
func restartInContainer(t *testing.T, d *harness.Daemon) {
	t.Helper()
	c := harness.NewContainer(t, harness.CRIO)
	p1 := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 3, Container: c})
	l1 := waitListed(t, d, p1.PID, 3)
	r1 := harness.Drive(t, p1, 600, 8, 0)
	ours1, _ := settleAt(t, p1, poolURL(d, l1), uint64(r1.OK))
	old := map[int]bool{p1.PID: true}
	for _, w := range ours1.Workers {
		old[w.HostPID] = true
	}
	if err := syscall.Kill(p1.PID, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	harness.WaitGone(t, p1.PID)
	waitUnlisted(t, d, p1.PID, "")

	p2 := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 3, Container: c})
	l2 := waitListed(t, d, p2.PID, 3)
	r2 := harness.Drive(t, p2, 300, 8, 0)
	ours2, theirs2 := settleAt(t, p2, poolURL(d, l2), uint64(r2.OK))
	checkInContainer(t, c, ours2, p2.PID, theirs2.PID)
	var errs []error
	for _, w := range ours2.Workers {
		if old[w.HostPID] || w.RespawnCount != 1 || w.Requests != w.DeltaRequests || w.LastExit != nil {
			errs = append(errs, fmt.Errorf("slot %d: host pid %d (old: %v) respawn_count %d requests %d delta %d last_exit %+v",
				w.ID, w.HostPID, old[w.HostPID], w.RespawnCount, w.Requests, w.DeltaRequests, w.LastExit))
		}
	}
	if err := errors.Join(errs...); err != nil {
		t.Errorf("the restarted pool keeps something of the old one: %v", err)
	}
	t.Logf("restarted in its container: pool %s (master host pid %d) then %s (host pid %d); %d requests before, %d after, counted as the new uWSGI's own",
		l1.ID, p1.PID, l2.ID, p2.PID, r1.OK, r2.OK)
}
