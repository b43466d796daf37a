package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// heldPrograms returns the ids of the eBPF programs process pid holds a
// descriptor of (programs and links show a prog_id in fdinfo).
func heldPrograms(t testing.TB, pid int) []ebpf.ProgramID {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil && !slices.Contains(ids, ebpf.ProgramID(n)) {
					ids = append(ids, ebpf.ProgramID(n))
				}
			}
		}
	}
	return ids
}

// programsLoaded returns those of ids the kernel still has.
func programsLoaded(ids []ebpf.ProgramID) []ebpf.ProgramID {
	var left []ebpf.ProgramID
	for _, id := range ids {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			p.Close()
			left = append(left, id)
		}
	}
	return left
}

// pinned returns the names in a pin directory and the ids of the programs
// its links run and of its maps.
func pinned(t testing.TB, dir string) (names []string, progs []ebpf.ProgramID, maps []ebpf.MapID) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		names = append(names, e.Name())
		path := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), "link_") {
			l, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			info, err := l.Info()
			l.Close()
			if err != nil {
				t.Fatal(err)
			}
			progs = append(progs, info.Program)
			continue
		}
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		info, err := m.Info()
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		maps = append(maps, id)
	}
	return names, progs, maps
}

// wantPins is what a daemon with hooks pins for a pool whose listeners
// are unknown (a master with no worker): its maps (every map of the object),
// its links, and the distinct programs those links run. The sock set
// keeps accept and close hooked for such a pool.
func wantPins(t *testing.T, hooks string) (maps, links, programs int) {
	t.Helper()
	// Every map of the object is pinned, but its constants (.rodata).
	spec, err := bpf.LoadObserver()
	if err != nil {
		t.Fatal(err)
	}
	for name := range spec.Maps {
		if !strings.HasPrefix(name, ".") {
			maps++
		}
	}
	// Where the kernel side counts listen refusals under a set other than
	// fentry, kfree_skb's program too.
	drops := 0
	if hooks != ebpfkernel.HooksFentry && ebpfkernel.RefusalsCounted(hooks) == nil {
		drops = 1
	}
	switch hooks {
	case ebpfkernel.HooksFentry:
		// fork, exit, signal, OOM victim, TCP queued and its twin, TCP
		// close, TCP done and its twin; three receives and three sends
		// (TCP over IPv4 and IPv6, Unix), the two sendpages where the
		// kernel has them (before 6.5), Unix release, a refused SYN and
		// a refused ACK (IPv4, IPv6): each link its own program.
		n := 21 - lacking(t, "inet_sendpage", "unix_stream_sendpage", "tcp_v6_syn_recv_sock")
		return maps, n, n
	case ebpfkernel.HooksSock:
		return maps, 14 + drops, 13 + drops // fork, exit, signal, OOM victim, TCP queued and its twin, accept4, accept, close, send, recv, TCP close, TCP done and its twin
	case ebpfkernel.HooksRaw:
		return maps, 8 + drops, 8 + drops // fork, exit, signal, OOM victim, TCP queued and its twin, sys_enter (close), sys_exit
	}
	return maps, 27 + drops, 13 + drops // fork, exit, signal, OOM victim, TCP queued and its twin, accept4, accept, close, 9 enters (3 receive programs), 9 exits
}

// lacking is how many of the kernel functions fns the running kernel's
// BTF lacks.
func lacking(t *testing.T, fns ...string) int {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, name := range fns {
		var fn *btf.Func
		if spec.TypeByName(name, &fn) != nil {
			n++
		}
	}
	return n
}

// TestRestartLosesNoRequest is the restart without loss: the daemon is
// stopped with SIGTERM, or killed with SIGKILL, while clients load the
// pool, more requests are served while it is down, it is started again
// and more load follows. For every worker pid, requests, delta_requests
// and tx must equal uWSGI's own, under every hook set.
func TestRestartLosesNoRequest(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			t.Run(hooks+"/"+unix.SignalName(sig), func(t *testing.T) { restartUnderLoad(t, hooks, sig) })
		}
	}
}

// restartUnderLoad is one TestRestartLosesNoRequest: sig stops the daemon.
func restartUnderLoad(t *testing.T, hooks string, sig syscall.Signal) {
	p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 4})
	pins := harness.PinPath(t)
	args := []string{"--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t),
		"--hooks", hooks, "--pin-path", pins}
	d1 := harness.StartDaemon(t, args...)

	under := stopUnderLoad(t, p, d1, sig)

	down := harness.Drive(t, p, 3000, 16, 0) // nobody watching but the pinned programs
	// A worker dies while the daemon is down and uWSGI replaces it:
	// the restarted daemon must still know the slot's history.
	respawned := harness.KillAndRespawn(t, p, 2)
	downAfterKill := harness.Drive(t, p, 1000, 16, 0)
	down.OK += downAfterKill.OK
	down.Received += downAfterKill.Received
	down.Sent += downAfterKill.Sent

	d2 := harness.StartDaemon(t, args...)
	if !strings.Contains(d2.Log.String(), "kept the pinned programs") {
		t.Errorf("the restarted daemon did not keep the pinned programs:\n%s", d2.Log.String())
	}
	after := harness.Drive(t, p, 3000, 16, 0)
	total := uint64(under.OK + down.OK + after.OK)
	ours, theirs := harness.Settle(t, p, d2, total)
	harness.LogComparison(t, ours, theirs)
	_, tx, rx := harness.SumRequests(ours)
	if tx != uint64(under.Received+down.Received+after.Received) || rx != uint64(under.Sent+down.Sent+after.Sent) {
		t.Errorf("workers' tx %d rx %d, clients received %d sent %d", tx, rx,
			under.Received+down.Received+after.Received, under.Sent+down.Sent+after.Sent)
	}
	checkAllAnswered(t, ours, total)
	harness.CheckDropped(t, ours, 0)
	if len(ours.Workers) != 4 {
		t.Errorf("%d slots after the restart, uWSGI has 4", len(ours.Workers))
	}
	t.Logf("%v: %d requests (%d under load at the stop, %d while down, %d after), counts equal uWSGI's for all %d workers, slot 2 respawned while down (now pid %d)",
		sig, total, under.OK, down.OK, after.OK, len(theirs.Workers), respawned)
}

// stopUnderLoad sends sig to daemon d1 once p's clients have made it well
// into a load, and returns that load once it is over, with d1 gone.
func stopUnderLoad(t *testing.T, p *harness.UWSGIPool, d1 *harness.Daemon, sig syscall.Signal) *harness.LoadResult {
	// The signal once the load is well under way.
	stopped := make(chan error, 1)
	var atStop uint64 // requests uWSGI had served when the daemon was gone
	trigger := uint64(testutil.Scale(1500))
	go func() {
		harness.Poll(60*time.Second, func() error {
			st, err := harness.ReadStats(p.Stats)
			if err != nil {
				return err
			}
			if n, _, _ := harness.SumRequests(st); n < trigger {
				return fmt.Errorf("uWSGI served %d requests", n)
			}
			return nil
		})
		d1.Cmd.Process.Signal(sig)
		err := <-d1.Exited
		if st, rerr := harness.ReadStats(p.Stats); rerr == nil {
			atStop, _, _ = harness.SumRequests(st)
		}
		stopped <- err
	}()
	under := harness.Drive(t, p, 8000, 16, 0)
	var exit error
	select {
	case exit = <-stopped:
		d1.Exited <- exit
	case <-time.After(70 * time.Second):
		t.Fatal("workerstats did not stop")
	}
	if killed := sig == syscall.SIGKILL; killed != (exit != nil) {
		t.Fatalf("workerstats exited with %v on %v:\n%s", exit, sig, d1.Log.String())
	}
	if atStop == 0 || atStop >= uint64(under.OK) {
		t.Errorf("uWSGI had served %d of %d requests when the daemon exited: the stop was not under load", atStop, under.OK)
	}
	t.Logf("daemon stopped under load: it was gone after %d of the %d requests", atStop, under.OK)

	return under
}

// TestSIGTERMRemovesSocketKeepsPins: on SIGTERM the daemon exits 0 and
// removes its Unix stats socket; only its pins stay, and the programs stay
// loaded and attached through them.
func TestSIGTERMRemovesSocketKeepsPins(t *testing.T) {
	testutil.RequireEBPF(t)
	master := exec.Command("sleep", "300")
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Process.Kill(); master.Wait() })
	dir := t.TempDir()
	sock := filepath.Join(dir, "stats.sock")
	pins := harness.PinPath(t)
	hooks := testutil.HookSets(t, ebpfkernel.AvailableHooks)[0] // auto's: its links pin here
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(master.Process.Pid), "--stats", sock, "--hooks", hooks, "--pin-path", pins)
	held := heldPrograms(t, d.Cmd.Process.Pid)
	if err := d.Stop(t); err != nil {
		t.Fatalf("exit %v on SIGTERM, want 0:\n%s", err, d.Log.String())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left in the socket's directory after SIGTERM: %v", ents)
	}
	names, progs, maps := pinned(t, pins)
	wantMaps, wantLinks, wantProgs := wantPins(t, hooks)
	if len(progs) != wantLinks || len(maps) != wantMaps {
		t.Errorf("pinned after SIGTERM: %v; want %d maps and %d links", names, wantMaps, wantLinks)
	}
	// The pinned links are the daemon's own, and hold its attached
	// programs (those loaded but not attached are gone).
	var running []ebpf.ProgramID
	for _, id := range progs {
		if !slices.Contains(held, id) {
			t.Errorf("pinned link runs program %d, which the daemon did not hold (%v)", id, held)
		}
		if !slices.Contains(running, id) {
			running = append(running, id)
		}
	}
	if left := programsLoaded(running); len(left) != wantProgs {
		t.Errorf("after SIGTERM the pinned links run programs %v, of which %v are loaded; want %d", running, left, wantProgs)
	}
}

// TestCleanupRemovesPins: `workerstats cleanup` refuses while the daemon
// runs; once it stopped, it removes the pins, which detaches and unloads
// the programs and frees the maps; run again it says nothing is pinned.
func TestCleanupRemovesPins(t *testing.T) {
	testutil.RequireEBPF(t)
	master := exec.Command("sleep", "300")
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Process.Kill(); master.Wait() })
	pins := harness.PinPath(t)
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(master.Process.Pid), "--stats", harness.FreeAddr(t), "--pin-path", pins)
	out, err := harness.RunCommand("cleanup", "--pin-path", pins)
	if err == nil || strings.Count(out, "\n") != 0 || !strings.Contains(out, "a workerstats daemon is running with the pins in "+pins+": stop it first") {
		t.Errorf("cleanup while the daemon runs: %v, %q; want one line saying to stop it first", err, out)
	}
	if err := d.Stop(t); err != nil {
		t.Fatal(err)
	}
	names, progs, maps := pinned(t, pins)

	out, err = harness.RunCommand("cleanup", "--pin-path", pins)
	if want := fmt.Sprintf("removed %d pinned objects from %s: the programs are detached and the maps freed", len(names), pins); err != nil || out != want {
		t.Errorf("cleanup: %v, %q; want %q", err, out, want)
	}
	if _, err := os.Stat(pins); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after cleanup (%v)", pins, err)
	}
	harness.WaitFor(t, 10*time.Second, "the programs and maps to be freed", func() error {
		if left := programsLoaded(progs); len(left) > 0 {
			return fmt.Errorf("programs %v still loaded", left)
		}
		for _, id := range maps {
			if m, err := ebpf.NewMapFromID(id); err == nil {
				m.Close()
				return fmt.Errorf("map %d still there", id)
			}
		}
		return nil
	})
	out, err = harness.RunCommand("cleanup", "--pin-path", pins)
	if want := "nothing is pinned in " + pins; err != nil || out != want {
		t.Errorf("second cleanup: %v, %q; want %q", err, out, want)
	}
}

// TestNoPinLeavesNothing: with --no-pin nothing is pinned, and the programs
// are gone once the daemon stops.
func TestNoPinLeavesNothing(t *testing.T) {
	testutil.RequireEBPF(t)
	master := exec.Command("sleep", "300")
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { master.Process.Kill(); master.Wait() })
	before := bpffsEntries(t)
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(master.Process.Pid), "--stats", harness.FreeAddr(t), "--no-pin")
	held := heldPrograms(t, d.Cmd.Process.Pid)
	if len(held) == 0 {
		t.Fatal("the daemon holds no eBPF program")
	}
	if err := d.Stop(t); err != nil {
		t.Fatal(err)
	}
	harness.WaitFor(t, 10*time.Second, "the daemon's programs to be unloaded", func() error {
		if left := programsLoaded(held); len(left) > 0 {
			return fmt.Errorf("programs %v still loaded", left)
		}
		return nil
	})
	for _, e := range bpffsEntries(t) {
		if !slices.Contains(before, e) && !strings.Contains(e, "workerstats-test-") {
			t.Errorf("%s appeared in bpffs with --no-pin", e)
		}
	}
	if out, err := harness.RunCommand("serve", "--pid", "1", "--no-pin", "--pin-path", "/sys/fs/bpf/x"); err == nil || out != "workerstats: --no-pin and --pin-path exclude each other" {
		t.Errorf("--no-pin with --pin-path: %v, %q", err, out)
	}
}

// bpffsEntries lists every path under /sys/fs/bpf.
func bpffsEntries(t testing.TB) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(ebpfkernel.BPFFSDir, func(path string, _ os.DirEntry, err error) error {
		if err == nil {
			out = append(out, path)
		}
		return nil
	})
	return out
}

// checkAllAnswered checks that the kernel's status classes and durations,
// which go on while the daemon is down, count every one of the total
// requests the clients had answered by the test app (a 200 each), across
// restarts and respawns as the requests do.
func checkAllAnswered(t *testing.T, st *observer.Stats, total uint64) {
	t.Helper()
	var ok, timed uint64
	for _, w := range st.Workers {
		if w.Statuses == nil || w.Durations == nil {
			t.Errorf("worker %d: no statuses or durations in the dump", w.ID)
			return
		}
		ok, timed = ok+w.Statuses.S2xx, timed+w.Durations.Count
	}
	if ok != total || timed != total {
		t.Errorf("2xx %d and durations %d across the workers, want the %d requests", ok, timed, total)
	}
}
