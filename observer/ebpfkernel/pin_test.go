package ebpfkernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
)

func loadPinned(t testing.TB, hooks, dir string, log *testutil.Log) *Kernel {
	t.Helper()
	if log == nil {
		log = testutil.NewLog(t)
	}
	k, err := Load(Options{Hooks: hooks, PinPath: dir, Log: log.Logger})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// pinnedPrograms returns the info of the program each link pinned in dir
// runs, by id.
func pinnedPrograms(t testing.TB, dir string) map[ebpf.ProgramID]*ebpf.ProgramInfo {
	t.Helper()
	out := map[ebpf.ProgramID]*ebpf.ProgramInfo{}
	for _, id := range pinnedProgramIDs(t, dir) {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		pi, err := p.Info()
		p.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[id] = pi
	}
	return out
}

// linkIDs returns the ids of the kernel links an observer holds.
func linkIDs(t testing.TB, k *Kernel) []link.ID {
	t.Helper()
	var ids []link.ID
	for _, l := range k.links {
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	slices.Sort(ids)
	return ids
}

// pinnedProgramIDs returns the ids of the programs the links pinned in dir
// run.
func pinnedProgramIDs(t testing.TB, dir string) []ebpf.ProgramID {
	t.Helper()
	names, err := (&pinDir{path: dir}).pinnedLinks()
	if err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	for _, n := range names {
		l, err := link.LoadPinnedLink(filepath.Join(dir, n), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.Program)
	}
	return ids
}

// programsGone waits until none of ids is a loaded program.
func programsGone(t testing.TB, ids []ebpf.ProgramID) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, id := range ids {
		for {
			p, err := ebpf.NewProgramFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				p.Close()
			}
			if time.Now().After(deadline) {
				t.Fatalf("program %d is still loaded (%v)", id, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// TestPinnedCountingGoesOnWhileClosed: with pinning, closing the observer
// leaves the programs counting; a new observer on the same pins keeps the
// very links (no second copy attached) and shows, per worker pid, every
// request, including those served while no observer was open.
func TestPinnedCountingGoesOnWhileClosed(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range hookSets(t) {
		t.Run(hooks, func(t *testing.T) {
			dir := testPinPath(t)
			pool := forkpool.Start(t, 2, "")
			size := func(i int) int { return (i * 4099) % 30000 }
			var ts forkpool.Tallies
			drive := func(sessions int) {
				t.Helper()
				for s := range sessions {
					if err := pool.Session(&ts, 10, func(i int) int { return size(s*10 + i) }, 0, 0); err != nil {
						t.Fatal(err)
					}
				}
			}

			k1 := loadPinned(t, hooks, dir, nil)
			p1 := watch(t, k1, pool)
			drive(10)
			settleOn(t, p1, &ts)
			before := linkIDs(t, k1)
			if err := k1.Close(); err != nil {
				t.Fatal(err)
			}

			drive(10) // no observer open: only the pinned programs see these

			log := testutil.NewLog(t)
			k2 := loadPinned(t, hooks, dir, log)
			t.Cleanup(func() {
				k2.Unwatch(pool.Master)
				k2.Close()
			})
			if after := linkIDs(t, k2); !slices.Equal(before, after) {
				t.Errorf("links before the restart %v, after %v: want the pinned ones kept, none attached again", before, after)
			}
			if !strings.Contains(log.String(), "kept the pinned programs") {
				t.Errorf("log does not say the pinned programs were kept:\n%s", log.String())
			}
			p2 := watch(t, k2, pool)
			drive(10)
			st := settleOn(t, p2, &ts)
			var requests uint64
			for _, w := range st.Workers {
				requests += w.Requests
			}
			if requests != 300 {
				t.Errorf("kernel shows %d requests after 300 across a restart", requests)
			}
			noDrops(t, st)
		})
	}
}

// TestPinnedUpgradeReplacesChangedObjects: a pinned map whose layout no
// longer matches is replaced with one warning, and a pinned link running
// another program (an older version) is replaced by one running ours;
// the old program is unloaded.
func TestPinnedUpgradeReplacesChangedObjects(t *testing.T) {
	testutil.RequireEBPF(t)
	dir := testPinPath(t)
	k1 := loadPinned(t, pinnable(t), dir, nil)
	if err := k1.Close(); err != nil {
		t.Fatal(err)
	}

	// An "old version": inflight with other sizes (values that shrank
	// cannot be carried over), and on_fork's link
	// running another program.
	if err := os.Remove(filepath.Join(dir, "inflight")); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "inflight", Type: ebpf.Hash, KeySize: 8, ValueSize: 32, MaxEntries: 128})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, "inflight")); err != nil {
		t.Fatal(err)
	}
	old.Close()
	forkPin := filepath.Join(dir, linkPinPrefix+"on_fork_sched_process_fork")
	if err := os.Remove(forkPin); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "on_fork", Type: ebpf.RawTracepoint, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_fork", Program: prog})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Pin(forkPin); err != nil {
		t.Fatal(err)
	}
	oldInfo, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	oldID, _ := oldInfo.ID()
	l.Close()
	prog.Close()

	log := testutil.NewLog(t)
	k2 := loadPinned(t, pinnable(t), dir, log)
	t.Cleanup(func() { k2.Close() })
	logs := log.String()
	if !strings.Contains(logs, "does not fit this version's layout") || !strings.Contains(logs, "map=inflight") {
		t.Errorf("no warning that the pinned map inflight was replaced:\n%s", logs)
	}
	if !strings.Contains(logs, "replaced them") || strings.Count(logs, "level=WARN") != 2 {
		t.Errorf("want exactly two warnings, the map and the replaced programs:\n%s", logs)
	}
	info, err := k2.objs.Inflight.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.MaxEntries == 128 {
		t.Error("the incompatible inflight map is still in use")
	}
	programsGone(t, []ebpf.ProgramID{oldID})

	// Every pinned link now runs one of our programs, on our maps.
	ours := map[string]bool{}
	for _, p := range k2.attached() {
		pi, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		ours[pi.Tag] = true
	}
	mapIDs, err := k2.mapIDs()
	if err != nil {
		t.Fatal(err)
	}
	for id, pi := range pinnedPrograms(t, dir) {
		if !ours[pi.Tag] {
			t.Errorf("pinned program %d (%s, tag %s) is not one of ours", id, pi.Name, pi.Tag)
		}
		ids, _ := pi.MapIDs()
		for _, m := range ids {
			if !mapIDs[m] && !sameConstants(m, k2.consts) {
				t.Errorf("pinned program %d (%s) uses map %d, neither one of ours nor our constants", id, pi.Name, m)
			}
		}
	}
}

// TestPinnedUpgradeCarriesGrownWorkers: an upgrade that adds a counter at
// the end of a worker's entry keeps the slots' history a pinned workers
// map holds: every entry is carried into the new map, the new counter zero,
// and it is said once. (The pinned programs, on the old map, are replaced
// as in any upgrade.)
func TestPinnedUpgradeCarriesGrownWorkers(t *testing.T) {
	testutil.RequireEBPF(t)
	dir := testPinPath(t)
	k1 := loadPinned(t, pinnable(t), dir, nil)
	if err := k1.Close(); err != nil {
		t.Fatal(err)
	}
	// An "old version": a workers map whose values end before unanswered.
	size := uint32(unsafe.Offsetof(bpf.ObserverWorker{}.Unanswered))
	if err := os.Remove(filepath.Join(dir, "workers")); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "workers", Type: ebpf.Hash, KeySize: 4, ValueSize: size, MaxEntries: 4096})
	if err != nil {
		t.Fatal(err)
	}
	want := bpf.ObserverWorker{Role: roleWorker, Master: 7, StartNs: 11, ExitNs: 13, Requests: 300, Tx: 4500, Spawns: 2}
	value := make([]byte, unsafe.Sizeof(want))
	if _, err := binary.Encode(value, binary.NativeEndian, want); err != nil {
		t.Fatal(err)
	}
	if err := old.Put(uint32(4242), value[:size]); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, "workers")); err != nil {
		t.Fatal(err)
	}
	old.Close()

	log := testutil.NewLog(t)
	k2 := loadPinned(t, pinnable(t), dir, log)
	t.Cleanup(func() { k2.Close() })
	logs := log.String()
	if !strings.Contains(logs, "carrying its entries over") || !strings.Contains(logs, "map=workers") || strings.Contains(logs, "counts are lost") {
		t.Errorf("want one line that the workers map was carried over, and none that counts are lost:\n%s", logs)
	}
	var got bpf.ObserverWorker
	if err := k2.objs.Workers.Lookup(uint32(4242), &got); err != nil {
		t.Fatalf("the old version's worker is gone: %v", err)
	}
	if got != want {
		t.Errorf("carried over as %+v, want %+v", got, want)
	}
}

// TestPinnedLargerWorkersTableCarries: a restart with a larger workers
// table (--max-workers raised) carries every entry of the pinned one over;
// a smaller one, which they might not fit, replaces it and says so.
func TestPinnedLargerWorkersTableCarries(t *testing.T) {
	testutil.RequireEBPF(t)
	dir := testPinPath(t)
	load := func(maxWorkers int, log *testutil.Log) *Kernel {
		k, err := Load(Options{Hooks: pinnable(t), PinPath: dir, MaxWorkers: maxWorkers, Log: log.Logger})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	k1 := load(100, testutil.NewLog(t))
	want := bpf.ObserverWorker{Role: roleWorker, Master: 7, StartNs: 11, ExitNs: 13, Requests: 300, Tx: 4500, Spawns: 2}
	if err := k1.objs.Workers.Put(uint32(4242), &want); err != nil {
		t.Fatal(err)
	}
	k1.Close()
	log := testutil.NewLog(t)
	k2 := load(200, log)
	var got bpf.ObserverWorker
	if err := k2.objs.Workers.Lookup(uint32(4242), &got); err != nil || got != want {
		t.Errorf("after growing the table: %+v (%v), want %+v", got, err, want)
	}
	if !strings.Contains(log.String(), "carrying its entries over") {
		t.Errorf("no line that the workers map was carried over:\n%s", log.String())
	}
	k2.Close()
	log = testutil.NewLog(t)
	k3 := load(50, log)
	defer k3.Close()
	if !strings.Contains(log.String(), "counts are lost") || !strings.Contains(log.String(), "map=workers") {
		t.Errorf("no warning that the smaller workers map replaced the pinned one:\n%s", log.String())
	}
}

// TestPinnedHookSetChange: restarting with another hook set removes the
// links of the old set and pins the new one's: on 5.10, from the syscall
// hooks (whose attachments cannot be pinned there) to the raw ones.
func TestPinnedHookSetChange(t *testing.T) {
	testutil.RequireEBPF(t)
	to, from := pinnable(t), HooksSyscall
	if to == HooksSyscall {
		from = HooksRaw
	}
	dir := testPinPath(t)
	k1 := loadPinned(t, from, dir, nil)
	k1.Close()
	k2 := loadPinned(t, to, dir, nil)
	defer k2.Close()
	names, err := k2.pins.pinnedLinks()
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, h := range k2.hookList() {
		want = append(want, h.pin)
	}
	slices.Sort(want)
	slices.Sort(names)
	if !slices.Equal(names, want) {
		t.Errorf("pinned links after switching from the %s to the %s hooks:\n%v\nwant:\n%v", from, to, names, want)
	}
}

// TestPinDirOneDaemonAndCleanup: a second observer on pins in use is
// refused in one line, and so is removing them; once closed, RemovePins
// detaches and unloads everything, and a second call finds nothing.
func TestPinDirOneDaemonAndCleanup(t *testing.T) {
	testutil.RequireEBPF(t)
	dir := testPinPath(t)
	k := loadPinned(t, pinnable(t), dir, nil)
	_, err := Load(Options{Hooks: pinnable(t), PinPath: dir})
	if err == nil || !strings.Contains(err.Error(), "pin directory "+dir+": another workerstats daemon is running with these pins") {
		t.Errorf("second observer on the same pins: %v", err)
	}
	if _, err := RemovePins(dir); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Errorf("RemovePins while in use: %v", err)
	}
	progs := pinnedProgramIDs(t, dir)
	if len(progs) != len(k.hookList()) {
		t.Errorf("%d pinned links, want %d", len(progs), len(k.hookList()))
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	n, err := RemovePins(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The C file's maps and one link per hook.
	if want := len(k.maps) + len(k.hookList()); n != want {
		t.Errorf("RemovePins removed %d objects, want %d", n, want)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory still there: %v", err)
	}
	programsGone(t, progs)
	if _, err := RemovePins(dir); !errors.Is(err, ErrNothingPinned) {
		t.Errorf("second RemovePins: %v, want ErrNothingPinned", err)
	}
}

// TestRemovePinsLeavesForeignObjects: what workerstats did not pin is left
// in place, and said.
func TestRemovePinsLeavesForeignObjects(t *testing.T) {
	testutil.RequireEBPF(t)
	dir := testPinPath(t)
	k := loadPinned(t, pinnable(t), dir, nil)
	k.Close()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	foreign := filepath.Join(dir, "someone_elses")
	if err := m.Pin(foreign); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(foreign)
	_, err = RemovePins(dir)
	if err == nil || !strings.Contains(err.Error(), "someone_elses, which workerstats did not pin") {
		t.Errorf("RemovePins with a foreign pin: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "someone_elses" {
		t.Errorf("left in %s: %v, want only someone_elses", dir, ents)
	}
}

// TestPinPathMustBeOnBPFFS: a pin path elsewhere, or relative, is refused
// in one line saying what to do.
func TestPinPathMustBeOnBPFFS(t *testing.T) {
	if _, err := openPinDir(t.TempDir()); err == nil || !strings.Contains(err.Error(), ": not on a bpf filesystem: use a path under /sys/fs/bpf") {
		t.Errorf("pin path on tmpfs: %v", err)
	}
	if _, err := openPinDir("pins"); err == nil || !strings.Contains(err.Error(), "must be an absolute path") {
		t.Errorf("relative pin path: %v", err)
	}
}

// TestBPFFSMountedWhenMissing: where nothing is mounted at /sys/fs/bpf, it
// is mounted there. Run in a mount namespace of the test's own, so the
// host's mounts are untouched.
func TestBPFFSMountedWhenMissing(t *testing.T) {
	testutil.RequireEBPF(t)
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked: it is discarded with its namespace
		// when this goroutine ends.
		runtime.LockOSThread()
		errc <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unshare: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
				return fmt.Errorf("make mounts private: %w", err)
			}
			for {
				ok, err := onBPFFS(BPFFSDir)
				if err != nil {
					return err
				}
				if !ok {
					break
				}
				if err := unix.Unmount(BPFFSDir, unix.MNT_DETACH); err != nil {
					return fmt.Errorf("unmount: %w", err)
				}
			}
			if err := ensureBPFFS(BPFFSDir + "/workerstats/x"); err != nil {
				return err
			}
			if ok, err := onBPFFS(BPFFSDir); err != nil || !ok {
				return fmt.Errorf("after ensureBPFFS, %s on bpffs: %v %v", BPFFSDir, ok, err)
			}
			return nil
		}()
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestPinnedForeignObjectsRefused: where the pin directory holds, under
// one of our names, an object of another kind (a program where a map
// goes, a map where a link goes: another tool's, or a corrupt directory),
// loading stops with a PinPathError that names it and says what to do,
// and leaves it as it was: nothing of it is taken, nothing replaces it.
func TestPinnedForeignObjectsRefused(t *testing.T) {
	testutil.RequireEBPF(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "foreign", Type: ebpf.RawTracepoint, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "foreign", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, c := range []struct {
		name string
		pin  func(path string) error
		kind string
	}{
		{"workers", prog.Pin, "map"},
		{linkPinPrefix + "on_fork_sched_process_fork", m.Pin, "link"},
	} {
		dir := testPinPath(t)
		loadPinned(t, pinnable(t), dir, nil).Close()
		path := filepath.Join(dir, c.name)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		if err := c.pin(path); err != nil {
			t.Fatal(err)
		}
		k, err := Load(Options{Hooks: pinnable(t), PinPath: dir, Log: testutil.NewLog(t).Logger})
		if err == nil {
			k.Close()
			t.Fatalf("%s: loaded over a foreign object", c.name)
		}
		var pe *PinPathError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), c.name+" is not a "+c.kind+" this daemon pinned") || !strings.Contains(err.Error(), "move it away") {
			t.Errorf("%s: error %q, want a PinPathError naming it and what to do", c.name, err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Errorf("%s: the foreign object was removed: %v", c.name, err)
		}
		t.Logf("%s: %v", c.name, err)
	}
}
