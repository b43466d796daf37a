package integration

import (
	"errors"
	"fmt"
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

// TestUWSGIWorkerOOMKilled: a uWSGI worker moved into a cgroup of 64 MiB
// allocates 512 MiB in a request. The kernel's OOM killer kills it; once
// the master has respawned it, its slot's last_exit says SIGKILL by the
// OOM killer, in that request, and its exits count one killed_by_oom.
func TestUWSGIWorkerOOMKilled(t *testing.T) {
	testutil.RequireEBPF(t)
	cg := memoryCgroup(t, 64<<20)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 1})
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			theirs, err := harness.ReadStats(p.Stats)
			if err != nil {
				t.Fatal(err)
			}
			cg.add(t, theirs.Workers[0].PID)
			tell := filepath.Join(t.TempDir(), "tell")
			pid := dieOnce(t, p, tell, "alloc=512")
			want := observer.LastExit{PID: pid, HostPID: pid, Status: "killed", Signal: "SIGKILL", By: "oom killer", InRequest: 1,
				Request: "GET /0?tell=" + tell + "&alloc=512"}
			st := harness.WaitStats(t, d.Addr, 30*time.Second, "the slot to say how pid "+strconv.Itoa(pid)+" ended", func(st *observer.Stats) error {
				if x := st.Workers[0].LastExit; x == nil || x.PID != pid {
					return fmt.Errorf("slot 1's last_exit %+v", x)
				}
				return nil
			})
			got := *st.Workers[0].LastExit
			got.At = 0
			if got != want || st.Workers[0].Exits["killed_by_oom"] != 1 {
				t.Errorf("last_exit %+v, exits %v; want %+v and one killed_by_oom", got, st.Workers[0].Exits, want)
			}
			t.Logf("slot 1 last_exit %+v, exits %v", got, st.Workers[0].Exits)
		})
	}
}

// cgroup is a memory cgroup the test made.
type cgroup struct {
	dir   string
	procs string // its cgroup.procs
}

// add moves process pid into the cgroup.
func (c *cgroup) add(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(c.procs, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatalf("move pid %d into %s: %v", pid, c.dir, err)
	}
}

// memoryCgroup makes a cgroup whose processes may use limit bytes of
// memory and no swap, on a memory hierarchy mounted for the test (cgroup
// v1's memory controller, else v2 with memory enabled), removed at cleanup
// once its processes are gone.
func memoryCgroup(t *testing.T, limit int64) *cgroup {
	t.Helper()
	root := t.TempDir()
	v2 := false
	if err := syscall.Mount("workerstats-test", root, "cgroup", 0, "memory"); err != nil {
		if err2 := syscall.Mount("workerstats-test", root, "cgroup2", 0, ""); err2 != nil {
			testutil.SkipOrFail(t, "no memory cgroup to mount: cgroup v1 memory: %v; cgroup2: %v", err, err2)
		}
		v2 = true
	}
	t.Cleanup(func() { syscall.Unmount(root, syscall.MNT_DETACH) })
	if v2 {
		ctl, _ := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
		if !strings.Contains(string(ctl), "memory") {
			testutil.SkipOrFail(t, "cgroup2 has no memory controller (controllers: %q)", strings.TrimSpace(string(ctl)))
		}
		os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+memory"), 0o644)
	}
	dir := filepath.Join(root, fmt.Sprintf("workerstats-test-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeCgroup(dir) })
	limits := map[bool][][2]string{
		false: {{"memory.limit_in_bytes", strconv.FormatInt(limit, 10)}, {"memory.memsw.limit_in_bytes", strconv.FormatInt(limit, 10)}},
		true:  {{"memory.max", strconv.FormatInt(limit, 10)}, {"memory.swap.max", "0"}},
	}[v2]
	for i, l := range limits {
		err := os.WriteFile(filepath.Join(dir, l[0]), []byte(l[1]), 0o644)
		if err != nil && (i == 0 || !errors.Is(err, os.ErrNotExist)) {
			t.Fatalf("limit %s: %v", l[0], err)
		}
	}
	return &cgroup{dir: dir, procs: filepath.Join(dir, "cgroup.procs")}
}

// removeCgroup removes the cgroup at dir once no process is left in it.
func removeCgroup(dir string) {
	harness.Poll(10*time.Second, func() error {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	})
}
