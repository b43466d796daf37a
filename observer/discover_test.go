package observer

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer/container"
)

// Discovery over the fixture host of hostProcs: pools found, dropped when
// their master exits, found again (a new pool, the same ID) when it is
// restarted; IDs; the limit; masters whose pool cannot start.

// unwatchKernel is the fake kernel shared by every discovered pool, as
// the daemon's one eBPF kernel is, with Unwatch and a Watch that may fail.
type unwatchKernel struct {
	*fakeKernel
	mu        sync.Mutex
	unwatched []int
	watchErr  error
}

func (k *unwatchKernel) Watch(master Proc, workers []Proc) error {
	k.mu.Lock()
	err := k.watchErr
	k.mu.Unlock()
	if err != nil {
		return err
	}
	return k.fakeKernel.Watch(master, workers)
}

// Unwatch drops master's entries and its workers', as the eBPF kernel's.
func (k *unwatchKernel) Unwatch(master int) error {
	k.mu.Lock()
	k.unwatched = append(k.unwatched, master)
	k.mu.Unlock()
	k.fakeKernel.mu.Lock()
	defer k.fakeKernel.mu.Unlock()
	for pid, c := range k.counters {
		if c.Master == master || pid == master {
			delete(k.counters, pid)
		}
	}
	return nil
}

func (k *unwatchKernel) unwatchedMasters() []int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Sorted(slices.Values(k.unwatched))
}

// newDiscovery is discovery over fs's processes, the daemon (900) left
// out, every pool counting through one kernel and logging to log.
func newDiscovery(t *testing.T, fs Procfs, maxPools int) (d *Discovery, k *unwatchKernel, log *testutil.Log) {
	t.Helper()
	k = &unwatchKernel{fakeKernel: newFakeKernel()}
	log = testutil.NewLog(t)
	d = &Discovery{Proc: fs, Skip: []int{900}, MaxPools: maxPools, NewPool: func(id string) *Pool {
		return &Pool{Proc: fs, Kernel: k, Log: log.With("pool", id)}
	}}
	return d, k, log
}

func find(t *testing.T, d *Discovery) Found {
	t.Helper()
	f, err := d.Find(context.Background())
	if err != nil {
		t.Fatalf("Find: %v", err)
	}
	return f
}

func drop(t *testing.T, d *Discovery) []*Discovered {
	t.Helper()
	gone, err := d.Drop()
	if err != nil {
		t.Fatalf("Drop: %v", err)
	}
	return gone
}

// byServer maps discovered pools by their server's name.
func byServer(ps []*Discovered) map[string]*Discovered {
	out := map[string]*Discovered{}
	for _, p := range ps {
		out[p.Server] = p
	}
	return out
}

var idShape = regexp.MustCompile(`^[a-z0-9_-]+-[0-9a-f]{8}(-[0-9]+)?$`)

// TestDiscoveryFindsEveryMaster: every pre-fork master but the daemon is
// a pool, named by its server, watched through the kernel, once; a shell
// running subshells is none.
func TestDiscoveryFindsEveryMaster(t *testing.T) {
	fs := newProcfs(t, append(hostProcs(),
		fakeProc{pid: 1000, ppid: 1, comm: "bash", startTicks: 100, cmdline: []string{"bash", "loop.sh"}, tasks: map[int][]int{1000: {1001, 1002}}},
		fakeProc{pid: 1001, ppid: 1000, comm: "bash", startTicks: 101, cmdline: []string{"bash", "loop.sh"}},
		fakeProc{pid: 1002, ppid: 1000, comm: "bash", startTicks: 102, cmdline: []string{"bash", "loop.sh"}},
	)...)
	d, _, _ := newDiscovery(t, fs, 10)
	f := find(t, d)
	got := byServer(f.New)
	want := map[string]int{"uwsgi": 300, "php-fpm": 400, "nginx": 500, "gunicorn": 600}
	if len(got) != len(want) || f.Unwatched != 0 || len(f.Failed) != 0 {
		t.Fatalf("found %v (unwatched %d, failed %v), want %v", f.New, f.Unwatched, f.Failed, want)
	}
	for server, pid := range want {
		p := got[server]
		if p == nil || p.Master.PID != pid || !idShape.MatchString(p.ID) || !strings.HasPrefix(p.ID, server+"-") {
			t.Errorf("%s: %+v, want master %d and an ID %s-<8 hex>", server, p, pid, server)
			continue
		}
		if p.Path() != "/pools/"+p.ID || p.Container == nil || p.Container.Cgroup != "/" || p.Container.ID != "" {
			t.Errorf("%s: path %s, container %+v: want /pools/ID and the root cgroup, no container", server, p.Path(), p.Container)
		}
		if ms := p.Pool.Masters(); !slices.Equal(ms, []int{pid}) {
			t.Errorf("%s: masters %v, want %d", server, ms, pid)
		}
		if q, ok := d.Pool(p.ID); !ok || q != p {
			t.Errorf("Pool(%s) = %v, %v", p.ID, q, ok)
		}
	}
	if f := find(t, d); len(f.New) != 0 {
		t.Errorf("a second Find found %v again", f.New)
	}
	if ps := d.Pools(); len(ps) != 4 || !slices.IsSortedFunc(ps, func(a, b *Discovered) int { return strings.Compare(a.ID, b.ID) }) {
		t.Errorf("Pools() = %v, want the 4 by ID", ps)
	}
}

// TestDiscoveryDropsAnExitedMaster: a pool whose master exited is dropped
// and forgotten by the kernel; restarted, the master is a new pool with
// the same ID and none of the old one's processes. A pid taken by another
// master is a new pool too.
func TestDiscoveryDropsAnExitedMaster(t *testing.T) {
	fs := newProcfs(t, hostProcs()...)
	d, k, log := newDiscovery(t, fs, 10)
	old := byServer(find(t, d).New)["uwsgi"]
	if gone := drop(t, d); len(gone) != 0 {
		t.Fatalf("dropped %v with every master running", gone)
	}
	removeProc(t, fs.Root, 300, 301, 302)
	// Refreshed before it is dropped, the pool waits, and says it as the
	// routine it is.
	refresh(t, old.Pool)
	if w := old.Pool.Waiting(); !strings.Contains(w, "discovery drops the pool") || strings.Contains(log.String(), "level=WARN") {
		t.Errorf("waiting %q, log:\n%s\nwant discovery's reason, and no warning", w, log)
	}
	gone := drop(t, d)
	if len(gone) != 1 || gone[0] != old {
		t.Fatalf("dropped %v, want the uwsgi pool", gone)
	}
	if u := k.unwatchedMasters(); !slices.Equal(u, []int{300}) {
		t.Errorf("kernel unwatched %v, want master 300", u)
	}
	if _, ok := d.Pool(old.ID); ok || len(d.Pools()) != 3 {
		t.Errorf("pool %s still served after its master exited", old.ID)
	}
	if k.has(301) {
		t.Error("the dropped pool's worker 301 is still in the kernel")
	}

	// Restarted: pid 310, and its workers.
	uwsgi := hostProcs()[2:5]
	for i, pid := range []int{310, 311, 312} {
		p := uwsgi[i]
		p.pid, p.startTicks = pid, 100+uint64(i)
		if i == 0 {
			p.tasks = map[int][]int{310: {311, 312}}
		} else {
			p.ppid = 310
		}
		addProc(t, fs.Root, p)
	}
	again := byServer(find(t, d).New)["uwsgi"]
	if again == nil || again == old || again.Pool == old.Pool || again.ID != old.ID || again.Master.PID != 310 {
		t.Fatalf("restarted: %+v, want a new pool of master 310 with ID %s", again, old.ID)
	}
	st := snapshot(t, again.Pool)
	if _, pids := slotPIDs(st); !slices.Equal(pids, []int{311, 312}) {
		t.Errorf("the new pool's slots hold %v, want only the new workers 311 and 312", pids)
	}

	// Another master takes pid 310 (the same command line, a later start).
	removeProc(t, fs.Root, 310, 311, 312)
	reused := uwsgi[0]
	reused.pid, reused.startTicks, reused.tasks = 310, 200, map[int][]int{310: {313}}
	w := uwsgi[1]
	w.pid, w.ppid, w.startTicks = 313, 310, 201
	addProc(t, fs.Root, reused)
	addProc(t, fs.Root, w)
	if gone := drop(t, d); len(gone) != 1 || gone[0] != again {
		t.Fatalf("pid 310 reused: dropped %v, want the pool of the master that had it", gone)
	}
	third := byServer(find(t, d).New)["uwsgi"]
	if third == nil || third.Master != (Proc{PID: 310, StartTicks: 200}) || third.ID != old.ID {
		t.Fatalf("pid 310 reused: found %+v, want a new pool of the new process", third)
	}
}

// TestDiscoverySameCommandTwice: two masters of one command line in one
// cgroup get the same ID apart by -2, in the order they started; when the
// first exits, the next one found takes its ID.
func TestDiscoverySameCommandTwice(t *testing.T) {
	procs := hostProcs()
	twin := []fakeProc{
		{pid: 350, ppid: 1, comm: "uwsgi", startTicks: 35, cmdline: []string{"uwsgi", "--ini", "app.ini"}, tasks: map[int][]int{350: {351}}},
		{pid: 351, ppid: 350, comm: "uwsgi", startTicks: 36, cmdline: []string{"uwsgi", "--ini", "app.ini"}},
	}
	fs := newProcfs(t, append(procs, twin...)...)
	d, _, _ := newDiscovery(t, fs, 10)
	var ids []string
	for _, p := range find(t, d).New {
		if p.Server == "uwsgi" {
			ids = append(ids, p.ID)
		}
	}
	first, _ := d.byMaster(300)
	if len(ids) != 2 || first == nil || ids[1] != first.ID+"-2" {
		t.Fatalf("uwsgi IDs %v, want the first started (300: %v) then its ID with -2", ids, first)
	}
	removeProc(t, fs.Root, 300, 301, 302)
	drop(t, d)
	addProc(t, fs.Root, fakeProc{pid: 360, ppid: 1, comm: "uwsgi", startTicks: 90, cmdline: []string{"uwsgi", "--ini", "app.ini"}, tasks: map[int][]int{360: {361}}})
	addProc(t, fs.Root, fakeProc{pid: 361, ppid: 360, comm: "uwsgi", startTicks: 91, cmdline: []string{"uwsgi", "--ini", "app.ini"}})
	f := find(t, d)
	if len(f.New) != 1 || f.New[0].ID != first.ID {
		t.Errorf("after the first exited, found %v, want its ID %s again", f.New, first.ID)
	}
	if second, _ := d.byMaster(350); second == nil || second.ID != first.ID+"-2" {
		t.Errorf("the second kept %v, want %s-2", second, first.ID)
	}
}

// byMaster is the pool of master pid.
func (d *Discovery) byMaster(pid int) (*Discovered, bool) {
	for _, p := range d.Pools() {
		if p.Master.PID == pid {
			return p, true
		}
	}
	return nil, false
}

// TestDiscoveryLimit: beyond MaxPools a master is not watched, and Find
// says how many are not; when a pool goes, the next Find takes one more.
func TestDiscoveryLimit(t *testing.T) {
	fs := newProcfs(t, hostProcs()...)
	d, _, _ := newDiscovery(t, fs, 2)
	f := find(t, d)
	// The longest running first: uwsgi (30), php-fpm (40).
	if got := byServer(f.New); len(f.New) != 2 || got["uwsgi"] == nil || got["php-fpm"] == nil || f.Unwatched != 2 {
		t.Fatalf("found %v, %d unwatched; want uwsgi and php-fpm, 2 unwatched", f.New, f.Unwatched)
	}
	if f := find(t, d); len(f.New) != 0 || f.Unwatched != 2 {
		t.Errorf("again: found %v, %d unwatched; want none and 2", f.New, f.Unwatched)
	}
	removeProc(t, fs.Root, 300, 301, 302)
	drop(t, d)
	if f := find(t, d); len(f.New) != 1 || f.New[0].Server != "nginx" || f.Unwatched != 1 {
		t.Errorf("after uwsgi exited: found %v, %d unwatched; want nginx, 1", f.New, f.Unwatched)
	}
}

// TestDiscoveryStartFails: a master whose pool cannot start is said once,
// tried again at every Find, and watched once it can be; what its failed
// starts told the kernel goes.
func TestDiscoveryStartFails(t *testing.T) {
	fs := newProcfs(t, hostProcs()...)
	d, k, _ := newDiscovery(t, fs, 10)
	k.watchErr = errors.New("workers map full")
	f := find(t, d)
	if len(f.New) != 0 || len(f.Failed) != 4 || !strings.Contains(f.Failed[0].Err.Error(), "workers map full") {
		t.Fatalf("found %v, failed %v: want 4 failures saying why", f.New, f.Failed)
	}
	if len(k.unwatchedMasters()) != 4 {
		t.Errorf("unwatched %v, want the 4 masters that failed", k.unwatchedMasters())
	}
	if f := find(t, d); len(f.New)+len(f.Failed) != 0 {
		t.Errorf("failing again: found %v, failed %v; want nothing said again", f.New, f.Failed)
	}
	k.watchErr = nil
	if f := find(t, d); len(f.New) != 4 || len(f.Failed) != 0 {
		t.Errorf("once they can start: found %v, failed %v; want the 4", f.New, f.Failed)
	}
}

// TestDiscoveryContainers: a master's container names its pool (ID, not
// cgroup path); an unknown cgroup layout is its path and no container ID,
// never an error.
func TestDiscoveryContainers(t *testing.T) {
	const id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	procs := hostProcs()
	procs[2].cgroup = "0::/system.slice/docker-" + id + ".scope\n" // uwsgi
	procs[9].cgroup = "0::/some/odd/layout\n"                      // nginx
	fs := newProcfs(t, procs...)
	d, _, _ := newDiscovery(t, fs, 10)
	got := byServer(find(t, d).New)
	if c := got["uwsgi"].Container; c == nil || c.ID != id || c.Runtime != "docker" {
		t.Errorf("uwsgi in docker: container %+v", c)
	}
	if c := got["nginx"].Container; c == nil || c.Cgroup != "/some/odd/layout" || c.ID != "" || c.Runtime != "" {
		t.Errorf("nginx in an unknown layout: container %+v, want its cgroup path and no ID", c)
	}
	if got["uwsgi"].ID == poolID("uwsgi", &container.Identity{Cgroup: "/"}, []string{"uwsgi", "--ini", "app.ini"}) {
		t.Error("the uwsgi in a container has the ID of the one outside it")
	}
}

// TestPoolID: the ID is the server's name and a hash of the container
// (its ID over its cgroup path) and the command line: stable, never a pid.
func TestPoolID(t *testing.T) {
	const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cmd := []string{"uwsgi", "--ini", "app.ini"}
	host := &container.Identity{Cgroup: "/system.slice/uwsgi.service"}
	a := poolID("uwsgi", host, cmd)
	if !idShape.MatchString(a) || !strings.HasPrefix(a, "uwsgi-") || a != poolID("uwsgi", host, slices.Clone(cmd)) {
		t.Errorf("poolID = %q: want uwsgi-<8 hex>, the same every time", a)
	}
	for name, other := range map[string]string{
		"another cgroup":       poolID("uwsgi", &container.Identity{Cgroup: "/system.slice/other.service"}, cmd),
		"another command line": poolID("uwsgi", host, []string{"uwsgi", "--ini", "other.ini"}),
		"args joined apart":    poolID("uwsgi", host, []string{"uwsgi --ini", "app.ini"}),
		"no cgroup":            poolID("uwsgi", nil, cmd),
	} {
		if other == a {
			t.Errorf("%s: the same ID %s", name, a)
		}
	}
	in1 := poolID("uwsgi", &container.Identity{Cgroup: "/docker/" + cid, ID: cid}, cmd)
	in2 := poolID("uwsgi", &container.Identity{Cgroup: "/system.slice/docker-" + cid + ".scope", ID: cid}, cmd)
	if in1 != in2 {
		t.Errorf("one container seen by two cgroup paths: %s and %s", in1, in2)
	}
	for _, c := range []struct {
		pi   ProcInfo
		want string
	}{
		{ProcInfo{Comm: "uwsgi"}, "uwsgi"},
		{ProcInfo{Comm: "php-fpm8.2", Args: []string{"php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)"}}, "php-fpm"},
		{ProcInfo{Comm: "gunicorn", Args: []string{"/usr/bin/python3", "/usr/bin/gunicorn"}}, "gunicorn"},
		{ProcInfo{Comm: "python3", Args: []string{"/usr/bin/python3", "/usr/local/bin/gunicorn"}}, "gunicorn"},
		{ProcInfo{Comm: "nginx", Args: []string{"nginx: master process /usr/sbin/nginx"}}, "nginx"},
		{ProcInfo{Comm: "My App.2"}, "my_app_2"},
		{ProcInfo{Comm: "(/)"}, "server"},
	} {
		if got := serverName(c.pi); got != c.want {
			t.Errorf("serverName(%+v) = %q, want %q", c.pi, got, c.want)
		}
	}
}

// TestDiscoveryList: the root's JSON lists each pool: who it is, where
// its stats are, its workers; by ID.
func TestDiscoveryList(t *testing.T) {
	fs := newProcfs(t, hostProcs()...)
	d, _, _ := newDiscovery(t, fs, 10)
	if b, err := d.List(context.Background()); err != nil || strings.TrimSpace(string(b)) != "[]" {
		t.Errorf("no pool: %s, %v; want []", b, err)
	}
	find(t, d)
	b, err := d.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if len(got) != 4 {
		t.Fatalf("%d pools listed, want 4: %s", len(got), b)
	}
	for _, l := range got {
		id, _ := l["id"].(string)
		p, ok := d.Pool(id)
		if !ok || l["path"] != "/pools/"+id || l["server"] != p.Server || l["host_pid"] != float64(p.Master.PID) || l["pid"] != float64(p.Master.PID) {
			t.Errorf("listed %v, want pool %+v", l, p)
		}
		if c, ok := l["container"].(map[string]any); !ok || c["cgroup"] != "/" {
			t.Errorf("listed container %v", l["container"])
		}
		if _, ok := l["waiting"]; ok {
			t.Errorf("waiting listed for a watched pool: %v", l)
		}
	}
	if got[0]["server"] != "gunicorn" || got[0]["workers"] != float64(2) || got[2]["workers"] != float64(3) {
		t.Errorf("want by ID (gunicorn first, 2 workers; php-fpm third, 3): %s", b)
	}
}
