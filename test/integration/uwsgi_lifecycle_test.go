package integration

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The tests in this file run Debian's real uWSGI through the events of a
// pool's life, a worker killed under load and a graceful reload, and hold
// workerstats' slots to uWSGI's own stats and to what the clients got.

// slotWatch reads workerstats' dump every 20 ms while a test runs, as
// uwsgitop would, and holds every dump to what such a reader relies on: no
// more slots than the pool has, numbered 1..N; a slot's requests and
// respawn_count never go down; a new process in a slot comes with a higher
// respawn_count; a slot whose process exited shows pid 0 and "cheap" until
// it is replaced, never the dead pid.
type slotWatch struct {
	addr  string
	slots int
	stop  chan struct{}
	done  chan struct{}

	// Read once finish has returned.
	reads, failed int
	most          int // most slots in one dump
	cheap         int // dumps that showed a slot emptied by an exit
	problems      []string
}

// goneGrace is how long after a worker is seen gone from /proc a dump read
// may still show it: readers within --stats-max-age (100 ms) share a
// snapshot, which takes a moment to build.
const goneGrace = 250 * time.Millisecond

func watchSlots(t testing.TB, addr string, slots int) *slotWatch {
	w := &slotWatch{addr: addr, slots: slots, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	t.Cleanup(func() { w.finish() })
	return w
}

func (w *slotWatch) run() {
	defer close(w.done)
	last := map[int]observer.Worker{}   // by slot id, the last dump's
	holder := map[int]observer.Worker{} // by slot id, the last with a process
	seen := map[int]bool{}              // every pid a dump showed
	gone := map[int]time.Time{}         // when a pid was first seen exited
	for {
		select {
		case <-w.stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		for pid := range seen {
			if _, ok := gone[pid]; !ok && processGone(pid) {
				gone[pid] = time.Now()
			}
		}
		readAt := time.Now()
		st, err := harness.ReadStats(w.addr)
		if err != nil {
			w.failed++
			continue
		}
		w.reads++
		w.most = max(w.most, len(st.Workers))
		if len(st.Workers) > w.slots {
			w.problem("%d slots, the pool has %d: %s", len(st.Workers), w.slots, harness.SlotList(st))
		}
		emptied := false
		for i, s := range st.Workers {
			if s.ID != i+1 {
				w.problem("slot %d listed at position %d: %s", s.ID, i+1, harness.SlotList(st))
			}
			if s.DeltaRequests > s.Requests {
				w.problem("slot %d: delta_requests %d above requests %d", s.ID, s.DeltaRequests, s.Requests)
			}
			if p, ok := last[s.ID]; ok && (s.Requests < p.Requests || s.RespawnCount < p.RespawnCount) {
				w.problem("slot %d went down: requests %d -> %d, respawn_count %d -> %d (pid %d -> %d)",
					s.ID, p.Requests, s.Requests, p.RespawnCount, s.RespawnCount, p.PID, s.PID)
			}
			last[s.ID] = s
			if s.PID == 0 {
				emptied = true
				if s.Status != "cheap" || s.Accepting != 0 {
					w.problem("slot %d has no process but status %q accepting %d", s.ID, s.Status, s.Accepting)
				}
				continue
			}
			if at, ok := gone[s.PID]; ok && readAt.Sub(at) > goneGrace {
				w.problem("slot %d still shows pid %d, which exited %v before the read (status %q)", s.ID, s.PID, readAt.Sub(at).Round(time.Millisecond), s.Status)
			}
			if h, ok := holder[s.ID]; ok && h.PID != s.PID && s.RespawnCount <= h.RespawnCount {
				w.problem("slot %d: pid %d replaced pid %d but respawn_count stayed %d", s.ID, s.PID, h.PID, s.RespawnCount)
			}
			holder[s.ID] = s
			seen[s.PID] = true
		}
		if emptied {
			w.cheap++
		}
	}
}

func (w *slotWatch) problem(format string, args ...any) {
	if len(w.problems) < 10 {
		w.problems = append(w.problems, fmt.Sprintf(format, args...))
	}
}

// finish stops the watch and waits for its last read.
func (w *slotWatch) finish() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// check stops the watch and fails t with what it saw wrong.
func (w *slotWatch) check(t testing.TB) {
	t.Helper()
	w.finish()
	t.Logf("a reader polling every 20 ms: %d dumps (%d reads failed), at most %d slots, %d dumps with a slot emptied by an exit",
		w.reads, w.failed, w.most, w.cheap)
	if w.reads == 0 {
		t.Errorf("the watch read no dump")
	}
	for _, p := range w.problems {
		t.Errorf("a dump read during the test: %s", p)
	}
}

// processGone says whether pid has exited: no longer in /proc, or a zombie
// (its exit already ran, the master has not reaped it yet).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || i+2 >= len(b) || b[i+2] == 'Z' || b[i+2] == 'X'
}

// procStartUnix is when pid started, in whole unix seconds, as ps(1) shows
// it: the boot time from /proc/stat plus the start time, in clock ticks
// (USER_HZ, 100 on Linux) since boot, from /proc/PID/stat.
func procStartUnix(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	// After "pid (comm)": state is field 3, starttime field 22.
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat starttime: %w", pid, err)
	}
	s, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer s.Close()
	sc := bufio.NewScanner(s)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "btime "); ok {
			boot, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/stat btime: %w", err)
			}
			return boot + ticks/100, nil
		}
	}
	return 0, errors.New("/proc/stat has no btime")
}

// checkLastSpawn fails t unless every live slot's last_spawn is when its
// process started.
func checkLastSpawn(t testing.TB, st *observer.Stats) {
	t.Helper()
	for _, w := range st.Workers {
		if w.PID == 0 {
			continue
		}
		want, err := procStartUnix(w.PID)
		if err != nil {
			t.Errorf("slot %d pid %d: %v", w.ID, w.PID, err)
		} else if w.LastSpawn != want {
			t.Errorf("slot %d pid %d: last_spawn %d, the process started at %d", w.ID, w.PID, w.LastSpawn, want)
		}
	}
}

// TestUWSGIWorkerKilledUnderLoad: while 32 clients send requests, the
// worker serving one more request is killed with SIGKILL and uWSGI's master
// respawns it. Until the respawn the slot shows no process and keeps the
// dead one's counts; then it passes to the new process, and everything the
// clients got a response to is counted once.
//
// What counts for the request the worker dies in: it is a request either
// way, and on loopback every byte sent before the kill reaches the client.
// Cut before its response ("before-response": the client reads EOF and
// nothing else) it is a request never answered, so also an exception; cut
// halfway through its response ("mid-response": the client got the headers
// and half the body) it is an answered one, with the bytes that were sent.
// uWSGI counts a request only after writing its whole response, and its tx
// after closing the connection, so it misses exactly that cut request; every
// other count, the killed process's earlier requests included, equals
// uWSGI's.
func TestUWSGIWorkerKilledUnderLoad(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			t.Run("before-response", func(t *testing.T) { killUnderLoad(t, hooks, false) })
			t.Run("mid-response", func(t *testing.T) { killUnderLoad(t, hooks, true) })
		})
	}
}

// cutSize is the body size of the request cut by the kill.
const cutSize = 10000

// cutRequest sends one request over HTTP once the load has completed after
// requests and kills the worker serving it while the response is held back
// (midResponse: after half of it is sent). The worker tells its pid in a
// file in dir. The master is stopped (SIGSTOP) from just before the kill
// until workerstats shows the slot emptied, so that state, which a reader
// can see between a death and the respawn, is seen every time; then the
// master goes on and respawns the worker as usual. It records what the
// client got in res.
func cutRequest(p *harness.UWSGIPool, d *harness.Daemon, res *harness.LoadResult, dir string, after int64, midResponse bool) (cutResult, error) {
	var cr cutResult
	if err := harness.Poll(60*time.Second, func() error {
		if n := res.Completed(); n < after {
			return fmt.Errorf("the load completed %d requests, never %d", n, after)
		}
		return nil
	}); err != nil {
		return cr, err
	}
	tell := filepath.Join(dir, "cut-request-pid")
	// Both hold the response 30 s: the kill comes long before.
	query := "tell=" + tell + "&sleep=30000"
	if midResponse {
		query = "tell=" + tell + "&stream=30000"
	}
	req := []byte(fmt.Sprintf("GET /%d?%s HTTP/1.0\r\nHost: test\r\nUser-Agent: workerstats-test\r\n\r\n", cutSize, query))
	c, err := p.Dial()
	if err != nil {
		return cr, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(req); err != nil {
		return cr, err
	}
	// The app writes its pid to tell when the request reaches it.
	if err := harness.Poll(60*time.Second, func() error {
		b, err := os.ReadFile(tell)
		if err == nil {
			cr.pid, err = strconv.Atoi(string(b))
		}
		return err
	}); err != nil {
		return cr, fmt.Errorf("no worker took the request: %w", err)
	}
	var resp []byte
	if midResponse {
		// Read the headers and the first half of the body.
		buf := make([]byte, 65536)
		for {
			n, err := c.Read(buf)
			resp = append(resp, buf[:n]...)
			if err != nil {
				return cr, fmt.Errorf("response of worker pid %d before the kill: %w after %q", cr.pid, err, harness.Truncate(resp))
			}
			if _, body, ok := bytes.Cut(resp, []byte("\r\n\r\n")); ok && len(body) >= cutSize/2 {
				break
			}
		}
	}
	st, err := harness.ReadStats(d.Addr)
	if err != nil {
		return cr, err
	}
	cr.before = harness.WorkersByPID(st)[cr.pid]
	if cr.before.PID == 0 {
		return cr, fmt.Errorf("worker pid %d is in no slot: %s", cr.pid, harness.SlotList(st))
	}
	if err := syscall.Kill(p.PID, syscall.SIGSTOP); err != nil {
		return cr, fmt.Errorf("stop the master: %w", err)
	}
	defer syscall.Kill(p.PID, syscall.SIGCONT)
	if err := syscall.Kill(cr.pid, syscall.SIGKILL); err != nil {
		return cr, fmt.Errorf("kill worker pid %d: %w", cr.pid, err)
	}
	var readErr error // a failed read ends the wait and fails the cut
	err = harness.Poll(10*time.Second, func() error {
		if st, readErr = harness.ReadStats(d.Addr); readErr != nil {
			return nil
		}
		var shown []observer.Worker
		for _, w := range st.Workers {
			if w.ID == cr.before.ID {
				shown = append(shown, w)
			}
		}
		if len(shown) != 1 || shown[0].PID == cr.pid {
			return fmt.Errorf("workerstats still shows it in its slot: %s", harness.SlotList(st))
		}
		cr.emptied = shown[0]
		return nil
	})
	if readErr != nil {
		return cr, readErr
	}
	if err != nil {
		return cr, fmt.Errorf("10 s after worker pid %d was killed, with the master stopped, %w", cr.pid, err)
	}
	if err := syscall.Kill(p.PID, syscall.SIGCONT); err != nil {
		return cr, fmt.Errorf("resume the master: %w", err)
	}
	rest, err := io.ReadAll(c)
	if err != nil {
		return cr, fmt.Errorf("response of worker pid %d after the kill: %w", cr.pid, err)
	}
	resp = append(resp, rest...)
	r := harness.ParseResponse(resp, cutSize)
	if len(rest) != 0 || (midResponse && (!r.Cut || r.PID != cr.pid)) {
		return cr, fmt.Errorf("the response of the killed worker pid %d is not cut where it was killed: %q", cr.pid, harness.Truncate(resp))
	}
	res.Add(r, req, resp)
	return cr, nil
}

// cutResult is the worker cutRequest killed.
type cutResult struct {
	pid     int
	before  observer.Worker // its slot in workerstats' dump just before the kill
	emptied observer.Worker // the slot once it was gone, before its respawn
}

func killUnderLoad(t *testing.T, hooks string, midResponse bool) {
	const workers = 4
	// After the kill, enough for the respawned worker to get some.
	requests, after := testutil.Scale(3000), max(testutil.Scale(1000), 200)
	p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: workers})
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
	start, err := harness.ReadStats(p.Stats)
	if err != nil {
		t.Fatal(err)
	}
	watch := watchSlots(t, d.Addr, workers)

	// A quarter into the load, one more request; its worker is killed.
	res := &harness.LoadResult{}
	type killed struct {
		cutResult
		err error
	}
	cut := make(chan killed, 1)
	dir := t.TempDir()
	go func() {
		cr, err := cutRequest(p, d, res, dir, int64(requests/4), midResponse)
		cut <- killed{cr, err}
	}()
	harness.DriveLoad(t, p, harness.LoadSpec{Requests: requests, Conc: 32, Idle: testutil.Scale(75), Cut: true}, res)
	k := <-cut
	if k.err != nil {
		t.Fatal(k.err)
	}
	victim := harness.WorkersByPID(start)[k.pid]
	if victim.PID == 0 || k.before.ID != victim.ID {
		t.Fatalf("killed pid %d: uWSGI's workers %s; our slot %d", k.pid, harness.SlotList(start), k.before.ID)
	}

	// uWSGI's master sees the death on its next turn (up to a second), so
	// the load may be over before the respawn: more load once it is done,
	// for the new process to serve.
	// A respawned worker starts its app before it accepts (seconds under
	// emulation): uWSGI says when it accepts.
	theirs := harness.WaitStats(t, p.Stats, 60*time.Second, "uWSGI to respawn the killed worker", func(theirs *observer.Stats) error {
		if w := harness.SlotOf(t, theirs, victim.ID); w.PID == victim.PID || w.PID == 0 || w.Accepting == 0 {
			return fmt.Errorf("uWSGI's worker %d is pid %d, accepting %d", victim.ID, w.PID, w.Accepting)
		}
		return nil
	})
	fresh := harness.SlotOf(t, theirs, victim.ID).PID
	// Load until it has served some, a bounded number of times.
	for range 10 {
		harness.DriveLoad(t, p, harness.LoadSpec{Requests: after, Conc: 32, Idle: testutil.Scale(25)}, res)
		if res.Tally(fresh).OK > 0 {
			break
		}
	}
	old, newer := res.Tally(victim.PID), res.Tally(fresh)
	if newer.OK == 0 {
		t.Fatalf("the respawned worker pid %d served none of the requests after the kill", fresh)
	}
	// Exactly the test's request was cut: the killed worker was in it. Cut
	// mid-response it is answered (partial), cut before it unanswered (lost,
	// and an exception).
	var wantPartial, wantMissedTX int64
	wantUnanswered, how := int64(1), "before its response"
	if midResponse {
		wantPartial, wantMissedTX, how = 1, res.PartialReceived, "mid-response"
		wantUnanswered = 0
	}
	if res.Partial != wantPartial || res.Lost != 1-wantPartial || old.Partial != wantPartial {
		t.Errorf("clients: %d responses cut short (%d from the killed worker), %d requests without a response; want only the request the worker was killed in",
			res.Partial, old.Partial, res.Lost)
	}
	wantReq := uint64(res.OK + res.Partial + res.Lost)
	wantTX := uint64(res.Received + res.PartialReceived)
	wantConns := uint64(res.OK + res.Partial + res.Lost + res.Idle)

	var missed, missedTX int64 // the killed process's, by uWSGI's count
	var ours *observer.Stats
	harness.WaitFor(t, 20*time.Second, "workerstats to count what the clients got", func() error {
		if theirs, err = harness.ReadStats(p.Stats); err != nil {
			return err
		}
		if ours, err = harness.ReadStats(d.Addr); err != nil {
			return err
		}
		req, tx, _ := harness.SumRequests(ours)
		accepted, closed := harness.SumConns(ours)
		if req != wantReq || tx != wantTX || accepted != wantConns || closed != accepted {
			return fmt.Errorf("requests %d tx %d accepted %d closed %d; clients got %d responses (%d of them cut short), %d bytes, and opened %d connections",
				req, tx, accepted, closed, wantReq, res.Partial, wantTX, wantConns)
		}
		for _, w := range ours.Workers {
			c := res.Tally(w.PID)
			want := harness.PIDTally{OK: c.OK, Received: c.Received}
			if w.ID == victim.ID {
				want = harness.PIDTally{OK: old.OK + old.Partial + wantUnanswered + newer.OK, Received: old.Received + newer.Received}
			}
			if w.Requests != uint64(want.OK) || w.TX != uint64(want.Received) || w.DeltaRequests != uint64(c.OK) {
				return fmt.Errorf("slot %d pid %d: requests %d delta %d tx %d; clients got %d responses (%d from this pid), %d bytes",
					w.ID, w.PID, w.Requests, w.DeltaRequests, w.TX, want.OK, c.OK, want.Received)
			}
		}
		// uWSGI's slot is cumulative too: the killed process's part is
		// its requests minus the new process's.
		u := harness.SlotOf(t, theirs, victim.ID)
		missed = old.OK + old.Partial + wantUnanswered - int64(u.Requests-u.DeltaRequests)
		missedTX = old.Received + newer.Received - int64(u.TX)
		return harness.CompareWorkers(ours, theirs, map[int]observer.Worker{
			victim.ID: {Requests: uint64(missed), TX: uint64(missedTX), Exceptions: uint64(wantUnanswered)},
		})
	})
	watch.check(t)
	harness.LogComparison(t, ours, theirs)

	slot, u := harness.SlotOf(t, ours, victim.ID), harness.SlotOf(t, theirs, victim.ID)
	t.Logf("killed pid %d (slot %d) in its request %s, after %d of %d requests, then %d more after its respawn; clients: %d complete, %d cut short with %d bytes, %d without a response, %d idle connections",
		victim.PID, victim.ID, how, requests/4, requests, after,
		res.OK, res.Partial, res.PartialReceived, res.Lost, res.Idle)
	t.Logf("slot %d now pid %d: requests %d (killed pid %d: clients got %d, uWSGI counted %d; pid %d: %d), delta_requests %d (uWSGI %d), tx %d (uWSGI %d), respawn_count %d (uWSGI %d), last_spawn %d (uWSGI %d)",
		slot.ID, slot.PID, slot.Requests, victim.PID, old.OK+old.Partial, u.Requests-u.DeltaRequests, fresh, newer.OK,
		slot.DeltaRequests, u.DeltaRequests, slot.TX, u.TX, slot.RespawnCount, u.RespawnCount, slot.LastSpawn, u.LastSpawn)
	t.Logf("uWSGI did not count %d request(s) and %d bytes the killed worker sent", missed, missedTX)

	if slot.PID != fresh || slot.RespawnCount != victim.RespawnCount+1 {
		t.Errorf("slot %d: pid %d respawn_count %d, want the respawned pid %d and respawn_count %d",
			slot.ID, slot.PID, slot.RespawnCount, fresh, victim.RespawnCount+1)
	}
	for _, w := range ours.Workers {
		if w.ID != victim.ID && w.ID <= len(start.Workers) && (w.PID != start.Workers[w.ID-1].PID || w.RespawnCount != 1) {
			t.Errorf("slot %d: pid %d respawn_count %d, nothing happened to its worker pid %d", w.ID, w.PID, w.RespawnCount, start.Workers[w.ID-1].PID)
		}
	}
	// Between the death and the respawn the slot had no process and held
	// exactly what the dead one did.
	e := k.emptied
	t.Logf("between the kill and the respawn: slot %d pid %d status %q requests %d delta_requests %d tx %d respawn_count %d",
		e.ID, e.PID, e.Status, e.Requests, e.DeltaRequests, e.TX, e.RespawnCount)
	if e.PID != 0 || e.Status != "cheap" || e.Requests != uint64(old.OK+old.Partial+wantUnanswered) || e.TX != uint64(old.Received) || e.RespawnCount != victim.RespawnCount {
		t.Errorf("slot %d with its worker dead and not respawned yet: pid %d status %q requests %d tx %d respawn_count %d; want pid 0, \"cheap\", the dead process's %d requests and %d bytes, respawn_count %d",
			e.ID, e.PID, e.Status, e.Requests, e.TX, e.RespawnCount, old.OK+old.Partial+wantUnanswered, old.Received, victim.RespawnCount)
	}
	checkLastSpawn(t, ours)
	harness.CheckDropped(t, ours, 1)
	if len(ours.Workers) != workers {
		t.Errorf("%d slots, the pool has %d workers", len(ours.Workers), workers)
	}
	// uWSGI missed the cut request, and only it; but for the bytes of one
	// answered request of the killed worker: uWSGI's request end counts
	// the request, runs the after-request hooks, and only then adds the
	// response's bytes to tx, and a SIGKILL in between loses them (seen
	// under emulation on 5.10). Ours equal what the clients got, above.
	extraTX := missedTX - wantMissedTX
	if extraTX > 0 && extraTX <= maxResponse {
		t.Logf("uWSGI also missed %d bytes, one response of the killed worker's: killed between counting a request and its bytes", extraTX)
		extraTX = 0
	}
	if missed != 1 || extraTX != 0 {
		t.Errorf("uWSGI counted %d requests and %d bytes fewer than the killed worker received and the clients got from it; want 1 and %d",
			missed, missedTX, wantMissedTX)
	}
}

// maxResponse is the most bytes one response of the load takes: its
// largest body (harness.ResponseSize) and its headers.
const maxResponse = 20000 + 512

// TestUWSGIGracefulReload: `uwsgi --reload PIDFILE` between two rounds of
// load. uWSGI's master stops its workers gracefully, re-executes itself
// (same pid) and spawns a new set, whose counters in uWSGI's own stats start
// from zero. workerstats keeps the slots 1..N: each passes to a new process,
// respawn_count goes up by one, requests and tx add up across the reload,
// and delta_requests is the new process's own.
func TestUWSGIGracefulReload(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) { gracefulReload(t, hooks) })
	}
}

func gracefulReload(t *testing.T, hooks string) {
	const workers = 4
	p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: workers, Pidfile: true})
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
	watch := watchSlots(t, d.Addr, workers)

	first := harness.Drive(t, p, 2000, 16, 50)
	before, theirsBefore := harness.Settle(t, p, d, uint64(first.OK))
	old := map[int]bool{}
	for _, w := range theirsBefore.Workers {
		old[w.PID] = true
	}

	if out, err := exec.Command(p.Bin, "--reload", p.Pidfile).CombinedOutput(); err != nil {
		t.Fatalf("uwsgi --reload %s: %v\n%s", p.Pidfile, err, out)
	}
	harness.WaitStats(t, p.Stats, 60*time.Second, "uWSGI to reload with a new set of workers", func(st *observer.Stats) error {
		if st.PID != p.PID || len(st.Workers) != workers {
			return fmt.Errorf("master pid %d with %d workers", st.PID, len(st.Workers))
		}
		for _, w := range st.Workers {
			if old[w.PID] || w.PID == 0 || w.Accepting == 0 {
				return fmt.Errorf("worker %d is pid %d accepting %d", w.ID, w.PID, w.Accepting)
			}
		}
		return nil
	})

	second := harness.Drive(t, p, 2000, 16, 50)
	// uWSGI's counters restart at the reload: our slots hold what they
	// counted before it on top of uWSGI's.
	base := map[int]observer.Worker{}
	for _, u := range theirsBefore.Workers {
		base[u.ID] = observer.Worker{Requests: u.Requests, TX: u.TX, RespawnCount: u.RespawnCount}
	}
	after, theirs := harness.SettleFrom(t, p, d, uint64(second.OK), base)
	watch.check(t)

	for _, u := range theirs.Workers {
		if u.Requests != u.DeltaRequests || u.RespawnCount != 1 {
			t.Errorf("uWSGI's worker %d after the reload: requests %d delta_requests %d respawn_count %d; this test expects uWSGI's counters to restart at a reload",
				u.ID, u.Requests, u.DeltaRequests, u.RespawnCount)
		}
	}
	if after.PID != p.PID || len(after.Workers) != workers {
		t.Errorf("after the reload: master %d with %d slots, want %d with %d: %s", after.PID, len(after.Workers), p.PID, workers, harness.SlotList(after))
	}
	for _, b := range before.Workers {
		a, u := harness.SlotOf(t, after, b.ID), harness.SlotOf(t, theirs, b.ID)
		t.Logf("slot %d: pid %d -> %d, requests %d + %d = %d (uWSGI %d before, %d after), delta_requests %d (uWSGI %d), tx %d (uWSGI %d + %d), respawn_count %d -> %d (uWSGI %d)",
			b.ID, b.PID, a.PID, b.Requests, a.DeltaRequests, a.Requests, base[b.ID].Requests, u.Requests,
			a.DeltaRequests, u.DeltaRequests, a.TX, base[b.ID].TX, u.TX, b.RespawnCount, a.RespawnCount, u.RespawnCount)
		if old[a.PID] || a.PID == 0 {
			t.Errorf("slot %d: pid %d is not one of the new workers", a.ID, a.PID)
		}
		if a.RespawnCount != b.RespawnCount+1 || a.Requests != b.Requests+u.Requests || a.DeltaRequests != u.Requests || a.TX != b.TX+u.TX {
			t.Errorf("slot %d: respawn_count %d requests %d delta_requests %d tx %d; want %d, %d + %d, %d, %d + %d",
				a.ID, a.RespawnCount, a.Requests, a.DeltaRequests, a.TX, b.RespawnCount+1, b.Requests, u.Requests, u.Requests, b.TX, u.TX)
		}
		// And what the clients got from each process.
		if c := first.Tally(b.PID); b.Requests != uint64(c.OK) || b.TX != uint64(c.Received) {
			t.Errorf("slot %d before the reload: pid %d requests %d tx %d, clients got %d responses, %d bytes from it", b.ID, b.PID, b.Requests, b.TX, c.OK, c.Received)
		}
		if c := second.Tally(a.PID); a.DeltaRequests != uint64(c.OK) {
			t.Errorf("slot %d after the reload: pid %d delta_requests %d, clients got %d responses from it", a.ID, a.PID, a.DeltaRequests, c.OK)
		}
	}
	checkLastSpawn(t, after)
	harness.CheckDropped(t, after, 0)
	if _, tx, _ := harness.SumRequests(after); tx != uint64(first.Received+second.Received) {
		t.Errorf("tx %d, clients received %d", tx, first.Received+second.Received)
	}
	t.Logf("%d requests before the reload, %d after; counts equal uWSGI's plus what it counted before the reload, for all %d slots",
		first.OK, second.OK, len(after.Workers))
}
