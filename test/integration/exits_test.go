package integration

import (
	"fmt"
	"io"
	"maps"
	"os"
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

// TestUWSGIWorkerExitsSayWhy: four ways a uWSGI worker dies, each shown on
// its slot once the master has respawned it: killed by another process
// (SIGKILL from the test, by its pid), a segmentation fault in the app
// (the kernel's SIGSEGV, sent in the worker's own context: by itself;
// uWSGI's handler catches it and exits 1), an exit code (os._exit(3)),
// and uWSGI's harakiri (the master kills a worker stuck in
// a request: by the master, in the request, and harakiri_count equal to
// uWSGI's own). A death in a request names it (request detail is on by default).
func TestUWSGIWorkerExitsSayWhy(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2, Extra: []string{"--harakiri", "2"}})
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			dir := t.TempDir()
			me := os.Getpid()
			for i, c := range []struct {
				name  string
				query string // "" kills the worker from the test
				want  observer.LastExit
			}{
				{"killed", "", observer.LastExit{Status: "killed", Signal: "SIGKILL", By: "pid " + strconv.Itoa(me), ByPID: me}},
				{"fault", "crash=1", observer.LastExit{Status: "exited", Code: 1, Signal: "SIGSEGV", By: "itself", InRequest: 1, Request: "GET /0?tell=%s&crash=1"}},
				{"exit code", "exit=3", observer.LastExit{Status: "exited", Code: 3, InRequest: 1, Request: "GET /0?tell=%s&exit=3"}},
				{"harakiri", "sleep=10000", observer.LastExit{Status: "killed", Signal: "SIGKILL", By: "master", ByPID: p.PID, InRequest: 1, Request: "GET /0?tell=%s&sleep=10000"}},
			} {
				tell := filepath.Join(dir, strconv.Itoa(i))
				pid := dieOnce(t, p, tell, c.query)
				want := c.want
				want.PID, want.HostPID = pid, pid // on the host, its own pid is the host's
				if want.By == "itself" {
					want.ByPID = pid
				}
				if want.Request != "" {
					want.Request = fmt.Sprintf(want.Request, tell)
				}
				var got *observer.LastExit
				var slot observer.Worker
				harness.WaitStats(t, d.Addr, 30*time.Second, c.name+": the slot to say how pid "+strconv.Itoa(pid)+" ended", func(st *observer.Stats) error {
					for _, w := range st.Workers {
						if w.LastExit != nil && w.LastExit.PID == pid {
							got, slot = w.LastExit, w
							return nil
						}
					}
					return fmt.Errorf("no slot's last_exit is pid %d", pid)
				})
				at := got.At
				got.At = 0
				if *got != want || at < time.Now().Unix()-60 || at > time.Now().Unix() {
					t.Errorf("%s: last_exit %+v at %d, want %+v", c.name, *got, at, want)
				}
				t.Logf("%s: slot %d last_exit %+v, harakiri_count %d", c.name, slot.ID, *got, slot.HarakiriCount)
			}
			theirs := harness.WaitStats(t, p.Stats, 30*time.Second, "uWSGI to count its harakiri", func(st *observer.Stats) error {
				var n uint64
				for _, w := range st.Workers {
					n += w.HarakiriCount
				}
				if n != 1 {
					return fmt.Errorf("uWSGI's harakiri_count %d", n)
				}
				return nil
			})
			ours, err := harness.ReadStats(d.Addr)
			if err != nil {
				t.Fatal(err)
			}
			exits := map[string]uint64{}
			for _, w := range ours.Workers {
				for cause, n := range w.Exits {
					exits[cause] += n
				}
			}
			if want := map[string]uint64{"killed_by_other": 1, "exited_error": 2, "killed_by_master": 1}; !maps.Equal(exits, want) {
				t.Errorf("exits by cause %v, want %v", exits, want)
			}
			for _, u := range theirs.Workers {
				if o := harness.SlotOf(t, ours, u.ID); o.HarakiriCount != u.HarakiriCount {
					t.Errorf("slot %d: harakiri_count %d, uWSGI's %d", u.ID, o.HarakiriCount, u.HarakiriCount)
				}
			}
		})
	}
}

// dieOnce makes one of p's workers die: with query, in a request for
// /0?tell=TELL&QUERY (the app writes its pid to tell); without, by the
// test's SIGKILL to the worker a first request named. It returns the pid,
// once uWSGI's master has respawned it.
func dieOnce(t *testing.T, p *harness.UWSGIPool, tell, query string) int {
	t.Helper()
	q := "tell=" + tell
	if query != "" {
		q += "&" + query
	}
	c, err := p.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "GET /0?%s HTTP/1.0\r\nHost: test\r\n\r\n", q); err != nil {
		t.Fatal(err)
	}
	var pid int
	harness.WaitFor(t, 10*time.Second, "a worker to take the request", func() error {
		b, err := os.ReadFile(tell)
		if err == nil {
			pid, err = strconv.Atoi(string(b))
		}
		return err
	})
	if query == "" {
		// Once answered and closed, the worker is in no request.
		if _, err := io.ReadAll(c); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	harness.WaitStats(t, p.Stats, 30*time.Second, "uWSGI to respawn pid "+strconv.Itoa(pid), func(st *observer.Stats) error {
		for _, w := range st.Workers {
			if w.PID == pid || w.PID == 0 || w.Accepting == 0 {
				return fmt.Errorf("workers %s", harness.SlotList(st))
			}
		}
		return nil
	})
	return pid
}

// TestGunicornTimeoutIsHarakiri: gunicorn's master kills a worker stuck in
// a request past --timeout (SIGABRT, which the worker handles by closing
// the connection and exiting 1; or, when it has not exited a second later,
// SIGKILL, as under emulation, or here where a worker_exit hook lingers):
// its slot shows that end, as gunicorn's log tells it, by the master, in
// the request, and counts it in harakiri_count, as uWSGI counts its
// harakiri.
func TestGunicornTimeoutIsHarakiri(t *testing.T) {
	testutil.RequireEBPF(t)
	hooks := testutil.HookSets(t, ebpfkernel.AvailableHooks)[0]
	t.Run("obeyed", func(t *testing.T) { gunicornTimeout(t, hooks, false) })
	t.Run("escalated", func(t *testing.T) { gunicornTimeout(t, hooks, true) })
}

func gunicornTimeout(t *testing.T, hooks string, linger bool) {
	extra := []string{"--timeout", "2"}
	if linger {
		conf := filepath.Join(t.TempDir(), "linger.py")
		hook := "import time\ndef worker_exit(server, worker):\n    time.sleep(5)\n"
		if err := os.WriteFile(conf, []byte(hook), 0o644); err != nil {
			t.Fatal(err)
		}
		extra = append(extra, "-c", conf)
	}
	p := harness.StartGunicorn(t, 1, extra...)
	kids, err := harness.ChildPIDs(p.PID)
	if err != nil || len(kids) != 1 {
		t.Fatalf("gunicorn's workers %v, %v", kids, err)
	}
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
	if _, err := harness.GetOnce(p.Addr, "/sleep/30000"); err == nil {
		t.Fatal("a request of 30 s got an answer under --timeout 2")
	}
	var w observer.Worker
	harness.WaitStats(t, d.Addr, 30*time.Second, "the slot to say how its worker ended", func(st *observer.Stats) error {
		w = st.Workers[0]
		if w.LastExit == nil || w.LastExit.PID != kids[0] {
			return fmt.Errorf("slot 1: last_exit %+v", w.LastExit)
		}
		return nil
	})
	got := *w.LastExit
	got.At = 0
	want := observer.LastExit{PID: kids[0], HostPID: kids[0], Status: "exited", Code: 1, Signal: "SIGABRT", By: "master", ByPID: p.PID, InRequest: 1, Request: "GET /sleep/30000"}
	killed := fmt.Sprintf("Worker with pid %d was terminated due to signal 9", kids[0])
	if linger || got.Status == "killed" {
		harness.WaitFor(t, 10*time.Second, "gunicorn to log how its worker ended", func() error {
			if !strings.Contains(p.Log(), killed) {
				return fmt.Errorf("gunicorn's log has no %q:\n%s", killed, p.Log())
			}
			return nil
		})
		want.Status, want.Code, want.Signal = "killed", 0, "SIGKILL"
	} else if strings.Contains(p.Log(), killed) {
		t.Errorf("gunicorn logged %q; the slot says %+v", killed, got)
	}
	if !strings.Contains(p.Log(), fmt.Sprintf("WORKER TIMEOUT (pid:%d)", kids[0])) {
		t.Errorf("gunicorn logged no timeout of worker %d:\n%s", kids[0], p.Log())
	}
	if got != want || w.HarakiriCount != 1 {
		t.Errorf("slot 1: last_exit %+v, harakiri_count %d; want %+v and 1", got, w.HarakiriCount, want)
	}
}
