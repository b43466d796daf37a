package soak

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
	"github.com/workerstats/workerstats/test/harness"
)

// soakEnv sets TestSoakMixedLoad's length (a Go duration); make soak sets
// 10m.
const soakEnv = "WORKERSTATS_SOAK"

// TestSoakMixedLoad: one daemon watches uWSGI (stats on a Unix socket) and
// gunicorn (stats over HTTP on TCP, /metrics too) for WORKERSTATS_SOAK (2
// minutes by default), in rounds of load on both while readers poll every
// socket, each round followed by a fault in turn: a uWSGI worker killed, a
// gunicorn worker killed, uWSGI reloaded. At a quarter of the way the
// daemon is stopped with SIGTERM, at half way killed with SIGKILL, and a
// round is served while it is down each time. At the end, per pid,
// uWSGI's counts equal ours and each gunicorn worker's equal what the
// clients got from it; and over the second half, one daemon process, its
// RSS and open fds are flat.
func TestSoakMixedLoad(t *testing.T) {
	testutil.RequireEBPF(t)
	s := startSoak(t, soakDuration(t))
	readers := s.startReaders(t)
	restarts := []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL}
	for round := 0; time.Now().Before(s.deadline); round++ {
		left := time.Until(s.deadline)
		if len(restarts) > 0 && left < s.length*time.Duration(1+len(restarts))/4 {
			s.restart(t, restarts[0])
			restarts = restarts[1:]
			t.Logf("round %d: %s", round, s.faults[len(s.faults)-1])
			continue
		}
		s.load(t)
		s.fault(t, round)
		t.Logf("round %d: %s", round, s.faults[len(s.faults)-1])
		if len(restarts) == 0 {
			s.sample(t)
		}
	}
	if n, errs := readers.stop(); n == 0 || len(errs) > 0 {
		t.Errorf("the readers read %d dumps; errors: %v", n, errs)
	}
	s.check(t)
}

// soakDuration is WORKERSTATS_SOAK, or 2 minutes.
func soakDuration(t *testing.T) time.Duration {
	v := os.Getenv(soakEnv)
	if v == "" {
		return 2 * time.Minute
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", soakEnv, v, err)
	}
	return d
}

// soak is TestSoakMixedLoad's pools, daemon and tallies.
type soak struct {
	length   time.Duration
	deadline time.Time
	u        *harness.UWSGIPool
	g        *harness.GunicornPool
	d        *harness.Daemon
	args     []string
	uStats   string // our stats for uWSGI: a Unix socket
	gStats   string // for gunicorn: http://127.0.0.1:PORT/
	// downs counts the daemon's stops and starts: odd while it is
	// stopping or down. A read across one may end early.
	downs atomic.Int64
	uOK   uint64 // requests uWSGI answered since its last reload
	// base holds, by uWSGI slot, what uWSGI counted before its reloads
	// (its counters restart at one, ours go on).
	base     map[int]observer.Worker
	gLoad    []*harness.HTTPLoad
	gKilled  map[int]bool
	rss, fds []uint64 // the daemon's, once it no longer restarts
	faults   []string
}

func startSoak(t *testing.T, length time.Duration) *soak {
	s := &soak{length: length, u: harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 4, Pidfile: true}), g: harness.StartGunicorn(t, 3),
		base: map[int]observer.Worker{}, gKilled: map[int]bool{}}
	dir := t.TempDir()
	s.uStats = filepath.Join(dir, "uwsgi.sock")
	gAddr := harness.FreeAddr(t)
	s.gStats = "http://" + gAddr + "/"
	conf := filepath.Join(dir, "workerstats.toml")
	harness.WriteFile(t, conf, fmt.Sprintf("stats-max-age = \"0s\"\n\n[[pool]]\npid = %d\nstats = %q\n\n[[pool]]\npid = %d\nstats = %q\nstats-http = true\n",
		s.u.PID, s.uStats, s.g.PID, gAddr))
	s.args = []string{"--config", conf, "--pin-path", harness.PinPath(t)}
	s.d = harness.StartDaemonAt(t, s.uStats, s.args...)
	s.deadline = time.Now().Add(length)
	return s
}

// load is one round: uWSGI and gunicorn loaded at once.
func (s *soak) load(t *testing.T) {
	var wg sync.WaitGroup
	var g *harness.HTTPLoad
	wg.Go(func() { g = harness.DriveHTTP(t, s.g.Addr, 300, 1, 8, 10) })
	u := harness.Drive(t, s.u, 1500, 16, 20)
	wg.Wait()
	s.uOK += uint64(u.OK)
	s.gLoad = append(s.gLoad, g)
}

// fault is the round's fault, in turn.
func (s *soak) fault(t *testing.T, round int) {
	switch round % 3 {
	case 0:
		pid := harness.KillAndRespawn(t, s.u, 1+round/3%4)
		s.faults = append(s.faults, "uWSGI worker killed, now pid "+strconv.Itoa(pid))
	case 1:
		pid := harness.KillGunicornWorker(t, s.g)
		s.gKilled[pid] = true
		s.faults = append(s.faults, "gunicorn worker "+strconv.Itoa(pid)+" killed")
	case 2:
		s.reloadUWSGI(t)
		s.faults = append(s.faults, "uWSGI reloaded")
	}
}

// reloadUWSGI reloads uWSGI once its counts are settled, moving them into
// base, and waits for its new workers.
func (s *soak) reloadUWSGI(t *testing.T) {
	_, theirs := s.settleUWSGI(t)
	old := map[int]bool{}
	for _, u := range theirs.Workers {
		b := s.base[u.ID]
		s.base[u.ID] = observer.Worker{Requests: b.Requests + u.Requests, TX: b.TX + u.TX,
			RespawnCount: b.RespawnCount + u.RespawnCount, Exceptions: b.Exceptions + u.Exceptions}
		old[u.PID] = true
	}
	s.uOK = 0
	if out, err := exec.Command(s.u.Bin, "--reload", s.u.Pidfile).CombinedOutput(); err != nil {
		t.Fatalf("uwsgi --reload: %v\n%s", err, out)
	}
	harness.WaitStats(t, s.u.Stats, 60*time.Second, "uWSGI's new workers", func(st *observer.Stats) error {
		for _, w := range st.Workers {
			if old[w.PID] || w.PID == 0 || w.Accepting == 0 || len(st.Workers) != 4 {
				return fmt.Errorf("workers %s", harness.SlotList(st))
			}
		}
		return nil
	})
}

// restart stops the daemon with sig, serves a round without it, and starts
// it again on its pins.
func (s *soak) restart(t *testing.T, sig syscall.Signal) {
	s.downs.Add(1)
	defer s.downs.Add(1)
	s.d.Cmd.Process.Signal(sig)
	select {
	case err := <-s.d.Exited:
		s.d.Exited <- err
	case <-time.After(10 * time.Second):
		t.Fatalf("workerstats did not stop on %v", sig)
	}
	s.load(t)
	s.d = harness.StartDaemonAt(t, s.uStats, s.args...)
	s.faults = append(s.faults, "daemon stopped by "+sig.String()+" and started again")
}

// sample records the daemon's RSS and open fds.
func (s *soak) sample(t *testing.T) {
	pid := s.d.Cmd.Process.Pid
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			s.rss = append(s.rss, kb)
		}
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	s.fds = append(s.fds, uint64(len(fds)))
}

// settleUWSGI waits until uWSGI has counted every request answered since
// its last reload and we agree with it: per pid, the process's own count
// (delta_requests); across the pool, requests and tx with what uWSGI
// counted before its reloads. Which of our slots a process takes at a
// reload is ours to choose (the first free), so the slots' sums are
// compared pool-wide, not slot by slot.
func (s *soak) settleUWSGI(t *testing.T) (ours, theirs *observer.Stats) {
	var base observer.Worker
	for _, b := range s.base {
		base.Requests, base.TX = base.Requests+b.Requests, base.TX+b.TX
	}
	harness.WaitFor(t, 20*time.Second, "workerstats to agree with uWSGI", func() error {
		var err error
		if theirs, err = harness.ReadStats(s.u.Stats); err != nil {
			return err
		}
		if got, _, _ := harness.SumRequests(theirs); got != s.uOK {
			return fmt.Errorf("uWSGI counts %d requests, clients completed %d", got, s.uOK)
		}
		if ours, err = harness.ReadStats(s.uStats); err != nil {
			return err
		}
		return agreePoolWide(ours, theirs, base)
	})
	return ours, theirs
}

// agreePoolWide compares ours with uWSGI's dump per pid (delta_requests)
// and across the pool (requests and tx, ours holding base's too).
func agreePoolWide(ours, theirs *observer.Stats, base observer.Worker) error {
	byPID := harness.WorkersByPID(ours)
	for _, u := range theirs.Workers {
		if o, ok := byPID[u.PID]; !ok || o.DeltaRequests != u.DeltaRequests {
			return fmt.Errorf("pid %d: delta_requests %d, uWSGI's %d (in our dump: %v)", u.PID, o.DeltaRequests, u.DeltaRequests, ok)
		}
	}
	oReq, oTX, _ := harness.SumRequests(ours)
	uReq, uTX, _ := harness.SumRequests(theirs)
	if oReq != base.Requests+uReq || oTX != base.TX+uTX || len(ours.Workers) != len(theirs.Workers) {
		return fmt.Errorf("requests %d, tx %d in %d slots; uWSGI's %d + %d, %d + %d in %d", oReq, oTX, len(ours.Workers),
			base.Requests, uReq, base.TX, uTX, len(theirs.Workers))
	}
	return nil
}

// soakReaders poll every stats socket of the soak until stopped.
type soakReaders struct {
	stopReading context.CancelFunc
	wg          sync.WaitGroup
	mu          sync.Mutex
	reads       int
	errs        []string
}

// startReaders polls uWSGI's dump (Unix), gunicorn's (HTTP) and its
// /metrics, each every 100 ms. A read may fail only while the daemon is
// down; a dump read must parse, but for one the daemon's stop cut short
// (its socket closed before or while it wrote).
func (s *soak) startReaders(t *testing.T) *soakReaders {
	ctx, cancel := context.WithCancel(context.Background())
	r := &soakReaders{stopReading: cancel}
	for _, addr := range []string{s.uStats, s.gStats, s.gStats + "metrics"} {
		r.wg.Go(func() {
			for ctx.Err() == nil {
				r.readOnce(ctx, addr, &s.downs)
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
	return r
}

func (r *soakReaders) readOnce(ctx context.Context, addr string, downs *atomic.Int64) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	before := downs.Load()
	b, err := statsock.Read(rctx, addr)
	if err != nil {
		return // the daemon is restarting, or the read was stopped
	}
	if !strings.HasSuffix(addr, "metrics") {
		var st observer.Stats
		if err := json.Unmarshal(b, &st); err != nil {
			if after := downs.Load(); before%2 == 1 || after != before {
				return // cut short by the daemon's stop
			}
			r.mu.Lock()
			r.errs = append(r.errs, fmt.Sprintf("%s: %v", addr, err))
			r.mu.Unlock()
			return
		}
	}
	r.mu.Lock()
	r.reads++
	r.mu.Unlock()
}

// stop stops the readers and returns how many dumps they read, and what
// they read that did not parse.
func (r *soakReaders) stop() (int, []string) {
	r.stopReading()
	r.wg.Wait()
	return r.reads, r.errs
}

// check compares the end of the soak with uWSGI's and gunicorn's clients'
// counts, and the daemon's footprint over its last life.
func (s *soak) check(t *testing.T) {
	ours, theirs := s.settleUWSGI(t)
	harness.LogComparison(t, ours, theirs)
	g := harness.MergeHTTPLoads(s.gLoad)
	gOurs := harness.WaitRequests(t, s.gStats, 30*time.Second, "gunicorn's requests", g.OK)
	harness.CheckGunicorn(t, gOurs, g, gOurs.Observer.Hooks, s.gKilled)
	harness.CheckDropped(t, ours, 0)
	t.Logf("faults, in order: %s", strings.Join(s.faults, "; "))
	t.Logf("daemon RSS (kB) %v, open fds %v", s.rss, s.fds)
	if len(s.rss) < 3 {
		t.Fatalf("%d samples of the last daemon: make %s longer", len(s.rss), soakEnv)
	}
	first, last := s.rss[1], s.rss[len(s.rss)-1] // the first may still warm up
	if last > first+first/5+2048 {
		t.Errorf("the daemon's RSS grew from %d kB to %d kB over its last life", first, last)
	}
	if f, l := s.fds[1], s.fds[len(s.fds)-1]; l > f+4 {
		t.Errorf("the daemon's open fds grew from %d to %d over its last life", f, l)
	}
}
