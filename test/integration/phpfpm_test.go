package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The test in this file runs Debian's real PHP-FPM, speaks FastCGI to it
// over its Unix socket, and compares, worker by worker, what workerstats
// counted from outside with FPM's own status page.
//
// How FPM counts: a worker increments its "requests" when it has accepted a
// connection, before it reads a byte (fpm_request_reading_headers). So FPM
// counts a connection that closes without sending anything as a request,
// where workerstats does not, and FPM's count for a worker equals the
// connections it accepted. It also counts the status request itself, in the
// very page it renders: a status read shows every connection accepted before
// it, plus itself. workerstats counts that status request too (it is a real
// FastCGI request), so once it has completed both sides include it.
//
// Known bug, reported as a skip while it lasts: FPM leaves the client's
// empty FCGI_STDIN record unread for a GET and drains it with recv() after
// shutdown(SHUT_WR) at the end of the response, and workerstats takes those
// 8 bytes for a second request. Without that record (not sent as a test)
// every figure below is exact on both hook sets.

// fpmSettle waits until workerstats agrees with FPM (see fpmDiffs) and
// returns its workers by pid. Once every connection is closed the request
// counts are final too; the caller compares them.
func fpmSettle(t testing.TB, d *harness.Daemon, st *harness.FPMStatus, tr *harness.FPMTraffic) map[int]observer.Worker {
	t.Helper()
	var byPID map[int]observer.Worker
	harness.WaitFor(t, 10*time.Second, "workerstats to agree with PHP-FPM", func() error {
		ours, err := harness.ReadStats(d.Addr)
		if err != nil {
			return err
		}
		byPID = harness.WorkersByPID(ours)
		return fpmDiffs(ours, byPID, st, tr)
	})
	return byPID
}

// fpmDiffs returns nil when workerstats shows every worker of the status
// page with accepted and closed equal to FPM's count (which is the
// connections the worker accepted), tx and rx in all equal to the bytes the
// clients read and wrote on the socket, and nothing dropped.
func fpmDiffs(ours *observer.Stats, byPID map[int]observer.Worker, st *harness.FPMStatus, tr *harness.FPMTraffic) error {
	var diffs []string
	if len(ours.Workers) != len(st.Processes) {
		diffs = append(diffs, fmt.Sprintf("%d workers, FPM has %d", len(ours.Workers), len(st.Processes)))
	}
	for pid, n := range st.Requests() {
		o, ok := byPID[pid]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("pid %d missing", pid))
		} else if o.Accepted != n || o.Closed != n {
			diffs = append(diffs, fmt.Sprintf("pid %d: accepted %d closed %d, FPM counts %d connections", pid, o.Accepted, o.Closed, n))
		}
	}
	if _, tx, rx := harness.SumRequests(ours); tx != uint64(tr.Received) || rx != uint64(tr.Sent) {
		diffs = append(diffs, fmt.Sprintf("workers' tx %d rx %d, clients received %d sent %d", tx, rx, tr.Received, tr.Sent))
	}
	if ours.Observer.Mode != "ebpf" {
		diffs = append(diffs, fmt.Sprintf("mode %q", ours.Observer.Mode))
	}
	if err := harness.Dropped(ours, 0); err != nil {
		diffs = append(diffs, err.Error())
	}
	if len(diffs) > 0 {
		return errors.New(strings.Join(diffs, "; "))
	}
	return nil
}

func fpmLog(t testing.TB, phase string, ours map[int]observer.Worker, st *harness.FPMStatus, tr *harness.FPMTraffic) {
	t.Helper()
	var tx, rx, req uint64
	for _, p := range st.Processes {
		o := ours[p.PID]
		tx, rx, req = tx+o.TX, rx+o.RX, req+o.Requests
		t.Logf("%s: worker %d pid %d: requests %d, accepted %d, closed %d; FPM requests %d; served %d status reads; tx %d rx %d avg_rt %dus",
			phase, o.ID, p.PID, o.Requests, o.Accepted, o.Closed, p.Requests, tr.ServedBy[p.PID], o.TX, o.RX, o.AvgRT)
	}
	t.Logf("%s: clients completed %d requests + %d status reads and made %d idle connections; FPM counts %d (accepted conn %d); workerstats requests %d; tx %d (client read %d from the socket), rx %d (client sent %d)",
		phase, tr.OK, tr.Status, tr.Idle, st.Total(), st.AcceptedConn, req, tx, tr.Received, rx, tr.Sent)
}

// TestPHPFPMMatchesOwnStatus runs Debian's PHP-FPM (pm = static, 4 workers,
// Unix socket), observed from before its first connection, and compares
// every worker's counts with FPM's status page in three phases: requests
// only, requests mixed with connections that close without data, and such
// connections only.
func TestPHPFPMMatchesOwnStatus(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartPHPFPM(t)
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t),
				"--hooks", hooks, "--bpf-stats")
			tr := &harness.FPMTraffic{}

			// Phase 1: requests only. Every connection FPM counts is a
			// request (the status reads included), so per worker our
			// requests equal FPM's.
			harness.FPMDrive(t, p, tr, 3000, 16, 0)
			st := harness.FPMStatusAfter(t, p, tr)
			// A second read with nothing in between: FPM's count grows by
			// exactly one, for the worker serving it, in its own page.
			st2, err := harness.FPMReadStatus(p, tr)
			if err != nil {
				t.Fatal(err)
			}
			srv, _ := st2.Serving()
			r1 := st.Requests()
			for pid, n := range st2.Requests() {
				want := r1[pid]
				if pid == srv {
					want++
				}
				if n != want {
					t.Errorf("FPM's count for pid %d went from %d to %d across one status read served by pid %d", pid, r1[pid], n, srv)
				}
			}
			t.Logf("status reads back to back: FPM's total %d then %d; the second was served by pid %d and counted in its own page", st.Total(), st2.Total(), srv)
			ours := fpmSettle(t, d, st2, tr)
			fpmLog(t, "requests only", ours, st2, tr)

			// FPM drains the client's empty FCGI_STDIN record after it has
			// responded: those bytes must not count as another request.
			for pid, n := range st2.Requests() {
				if o := ours[pid]; o.Requests != n {
					t.Errorf("pid %d: requests %d, FPM's %d", pid, o.Requests, n)
				}
			}
			requests := func(o observer.Worker) uint64 { return o.Requests }

			// Phase 2: requests mixed with connections that close without
			// data. FPM counts those, workerstats does not: per worker FPM's
			// count equals our accepted (checked by fpmSettle), FPM's count
			// less our requests is that worker's share of the idle
			// connections, and the shares add up to them.
			before := ours
			harness.FPMDrive(t, p, tr, 1500, 16, 300)
			st3 := harness.FPMStatusAfter(t, p, tr)
			ours = fpmSettle(t, d, st3, tr)
			fpmLog(t, "mixed", ours, st3, tr)
			var idleShares, sum uint64
			for pid, n := range st3.Requests() {
				r := requests(ours[pid])
				sum += r
				if r > n || r < requests(before[pid]) {
					t.Errorf("pid %d: requests %d (before the phase %d), FPM's %d", pid, r, requests(before[pid]), n)
					continue
				}
				idleShares += n - r
			}
			if sum != uint64(tr.OK+tr.Status) || idleShares != uint64(tr.Idle) {
				t.Errorf("workers' requests sum to %d (clients completed %d); FPM counts %d more (clients made %d idle connections)",
					sum, tr.OK+tr.Status, idleShares, tr.Idle)
			}

			// Phase 3: connections that close without data only. Per
			// worker, FPM's count grows by the connections it accepted
			// (our accepted, checked by fpmSettle) while our requests grow
			// by exactly the status reads that worker served.
			before, servedBefore := ours, map[int]uint64{}
			for pid, n := range tr.ServedBy {
				servedBefore[pid] = n
			}
			harness.FPMDrive(t, p, tr, 0, 16, 200)
			st4 := harness.FPMStatusAfter(t, p, tr)
			ours = fpmSettle(t, d, st4, tr)
			fpmLog(t, "idle only", ours, st4, tr)
			sum = 0
			for pid := range st4.Requests() {
				got := requests(ours[pid]) - requests(before[pid])
				sum += requests(ours[pid])
				if want := tr.ServedBy[pid] - servedBefore[pid]; got != want {
					t.Errorf("pid %d: requests grew by %d over connections without data; it served %d status reads", pid, got, want)
				}
			}
			if sum != uint64(tr.OK+tr.Status) {
				t.Errorf("workers' requests sum to %d, clients completed %d", sum, tr.OK+tr.Status)
			}
			if dump, err := harness.ReadStats(d.Addr); err != nil {
				t.Error(err)
			} else if dump.Observer.Hooks != hooks {
				t.Errorf("dump says hooks %q, asked for %q", dump.Observer.Hooks, hooks)
			}
		})
	}
}

// fpmProcess is one process of FPM's /status?full&json, with what it says
// of the request a process is in.
type fpmProcess struct {
	PID      int    `json:"pid"`
	State    string `json:"state"`
	Method   string `json:"request method"`
	URI      string `json:"request uri"`
	Script   string `json:"script"`
	Duration int64  `json:"request duration"` // µs
}

// TestPHPFPMShowsWhatWorkersServe: by default, during a slow script
// the busy process's core shows the request method, URI and script FPM's
// own full status shows for it, and a request_start that agrees with FPM's
// request duration; per-pid requests still equal FPM's once it is done.
func TestPHPFPMShowsWhatWorkersServe(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartPHPFPM(t)
			slow := filepath.Join(p.Dir, "slow.php")
			if err := os.WriteFile(slow, []byte("<?php usleep((int)$_GET['ms'] * 1000); echo 'done';\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			tr := &harness.FPMTraffic{}
			done := make(chan error, 1)
			go func() {
				ex, err := harness.FPMDo(p, harness.FPMGet(p, slow, "/slow.php", "ms=3000&who=test"))
				if err == nil {
					tr.Add(ex)
				}
				done <- err
			}()
			var theirs fpmProcess
			harness.WaitFor(t, 2500*time.Millisecond, "FPM to show the slow request running", func() error {
				ex, err := harness.FPMDo(p, harness.FPMGet(p, filepath.Join(p.Dir, "status"), "/status", "full&json"))
				if err != nil {
					return err
				}
				tr.Add(ex)
				tr.Status++
				_, body, err := harness.FPMBody(ex.Stdout)
				if err != nil {
					return err
				}
				var st struct {
					Processes []fpmProcess `json:"processes"`
				}
				if err := json.Unmarshal(body, &st); err != nil {
					return err
				}
				for _, pr := range st.Processes {
					if pr.State == "Running" && strings.HasPrefix(pr.URI, "/slow.php") {
						theirs = pr
						return nil
					}
				}
				return fmt.Errorf("processes %+v", st.Processes)
			})
			seen := time.Now()
			var ours observer.Worker
			harness.WaitStats(t, d.Addr, 2*time.Second, "workerstats to show the slow request", func(st *observer.Stats) error {
				ours = harness.WorkersByPID(st)[theirs.PID]
				for _, c := range ours.Cores {
					if c.InRequest == 1 && slices.Contains(c.Vars, "SCRIPT_FILENAME="+slow) {
						return nil
					}
				}
				return fmt.Errorf("pid %d: %+v", theirs.PID, ours)
			})
			var core observer.Core
			for _, c := range ours.Cores {
				if slices.Contains(c.Vars, "SCRIPT_FILENAME="+slow) {
					core = c
				}
			}
			for _, want := range []string{"REQUEST_METHOD=" + theirs.Method, "REQUEST_URI=" + theirs.URI, "SCRIPT_FILENAME=" + theirs.Script} {
				if !slices.Contains(core.Vars, want) {
					t.Errorf("pid %d's core lacks %q: %q (FPM: %+v)", theirs.PID, want, core.Vars, theirs)
				}
			}
			start, _ := core.ReqInfo["request_start"].(float64)
			fpmStart := seen.Add(-time.Duration(theirs.Duration) * time.Microsecond)
			if math.Abs(start-float64(fpmStart.Unix())) > 1 {
				t.Errorf("request_start %v; FPM's request duration %d µs puts it at %d", start, theirs.Duration, fpmStart.Unix())
			}
			if core.ReqInfo["request_start"] == nil {
				t.Errorf("no request_start: %+v", core)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			tr.OK++
			st := harness.FPMStatusAfter(t, p, tr)
			ourWorkers := fpmSettle(t, d, st, tr)
			for pid, n := range st.Requests() {
				if o := ourWorkers[pid]; o.Requests != n {
					t.Errorf("pid %d: requests %d, FPM's %d", pid, o.Requests, n)
				}
			}
			// Every answer was a 200 (no Status header: FastCGI's default).
			want := observer.Statuses{S2xx: uint64(tr.OK + tr.Status)}
			harness.WaitStats(t, d.Addr, 5*time.Second, "every FastCGI answer counted as a 2xx", func(st *observer.Stats) error {
				var sum observer.Statuses
				for _, w := range st.Workers {
					if w.Statuses != nil {
						sum.S2xx, sum.S3xx, sum.S4xx, sum.S5xx = sum.S2xx+w.Statuses.S2xx, sum.S3xx+w.Statuses.S3xx, sum.S4xx+w.Statuses.S4xx, sum.S5xx+w.Statuses.S5xx
						sum.Other, sum.Unanswered = sum.Other+w.Statuses.Other, sum.Unanswered+w.Statuses.Unanswered
					}
				}
				if sum != want {
					return fmt.Errorf("statuses %+v, want %+v", sum, want)
				}
				return nil
			})
			t.Logf("pid %d: vars %q, request_start %v; FPM: %+v", theirs.PID, core.Vars, core.ReqInfo["request_start"], theirs)
		})
	}
}
