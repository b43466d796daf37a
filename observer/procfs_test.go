package observer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// fixtureBtime is the boot time the fixture's /proc/stat reports.
const fixtureBtime = 1700000000

// fakeProc is one process of a procfs fixture tree.
type fakeProc struct {
	pid, ppid  int
	comm       string // as the kernel shows it between the parentheses
	startTicks uint64
	rssPages   uint64
	vszPages   uint64
	uid, gid   int
	cwd        string   // target of /proc/PID/cwd; none if empty
	state      byte     // field 3 of stat; 'S' if 0
	cmdline    []string // /proc/PID/cmdline; empty (a kernel thread's) if nil
	// tasks maps a thread id to the children that thread forked, written to
	// /proc/PID/task/TID/children. A process without tasks gets a single
	// task (its own pid) with no children.
	tasks map[int][]int
	// nspid is the NSpid line's pids, outermost first (a process in a
	// container: host pid, then its own); [pid] if nil.
	nspid []int
	root  string // target of /proc/PID/root; none if empty
	// cgroup is /proc/PID/cgroup; "0::/\n" if empty.
	cgroup string
	// mountinfo is /proc/PID/mountinfo; none if empty.
	mountinfo string
}

// writeStatFile writes <root>/stat and <root>/uptime as the kernel formats
// them.
func writeStatFile(t *testing.T, root string) {
	t.Helper()
	stat := "cpu  4946 0 2771 96671 267 0 65 17 0 0\n" +
		"cpu0 2204 0 1181 48937 18 0 13 7 0 0\n" +
		"cpu1 2742 0 1590 47734 249 0 51 10 0 0\n" +
		"intr 1043356 9 0 0 0 0 0 0 0 0 0 0 0 0\n" +
		"ctxt 2013452\n" +
		"btime " + strconv.Itoa(fixtureBtime) + "\n" +
		"processes 6040\n" +
		"procs_running 1\n" +
		"procs_blocked 0\n" +
		"softirq 502341 0 120412 12 31050 0 0 1291 190123 0 159453\n"
	writeFile(t, filepath.Join(root, "stat"), stat)
	// A real procfs has /proc/uptime too; its value here deliberately does
	// not agree with btime (a fixture is not a live clock).
	writeFile(t, filepath.Join(root, "uptime"), "350.51 690.12\n")
}

// statLine renders /proc/PID/stat in the kernel's format (52 fields).
func statLine(p fakeProc) string {
	page := uint64(os.Getpagesize())
	state := p.state
	if state == 0 {
		state = 'S'
	}
	return fmt.Sprintf("%d (%s) %c %d %d %d 0 -1 4194624 1520 0 0 0 12 3 0 0 20 0 1 0 %d %d %d "+
		"18446744073709551615 94484414099456 94484414119337 140720695276080 0 0 0 0 16781312 134234626 "+
		"1 0 0 17 1 0 0 0 0 0 94484414135344 94484414136960 94484414840832 140720695282120 "+
		"140720695282140 140720695282140 140720695283691 0\n",
		p.pid, p.comm, state, p.ppid, p.ppid, p.ppid, p.startTicks, p.vszPages*page, p.rssPages)
}

// statusText renders /proc/PID/status as the kernel does: "Key:\tvalue",
// ids tab-separated (real, effective, saved, filesystem).
func statusText(p fakeProc) string {
	name := p.comm
	if len(name) > 15 {
		name = name[:15]
	}
	lines := []string{
		"Name:\t" + name,
		"Umask:\t0022",
		"State:\tS (sleeping)",
		"Tgid:\t" + strconv.Itoa(p.pid),
		"Ngid:\t0",
		"Pid:\t" + strconv.Itoa(p.pid),
		"PPid:\t" + strconv.Itoa(p.ppid),
		"TracerPid:\t0",
		// Effective ids differ from the real ones: uWSGI reports getuid()
		// and getgid(), the real ids.
		fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d", p.uid, p.uid+1, p.uid+1, p.uid+1),
		fmt.Sprintf("Gid:\t%d\t%d\t%d\t%d", p.gid, p.gid+1, p.gid+1, p.gid+1),
		"FDSize:\t64",
		"Groups:\t" + strconv.Itoa(p.gid) + " ",
		"NStgid:\t" + strconv.Itoa(p.pid),
		"NSpid:\t" + nspidText(p),
		"NSpgid:\t" + strconv.Itoa(p.ppid),
		"NSsid:\t" + strconv.Itoa(p.ppid),
		fmt.Sprintf("VmPeak:\t%8d kB", p.vszPages*4),
		fmt.Sprintf("VmSize:\t%8d kB", p.vszPages*4),
		"VmLck:\t       0 kB",
		fmt.Sprintf("VmHWM:\t%8d kB", p.rssPages*4),
		fmt.Sprintf("VmRSS:\t%8d kB", p.rssPages*4),
		"VmData:\t     360 kB",
		"VmStk:\t     132 kB",
		"VmSwap:\t       0 kB",
		"Threads:\t" + strconv.Itoa(max(1, len(p.tasks))),
		"SigQ:\t0/96365",
		"SigPnd:\t0000000000000000",
		"ShdPnd:\t0000000000000000",
		"SigBlk:\t0000000000000000",
		"SigIgn:\t0000000000001000",
		"SigCgt:\t0000000180004a07",
		"CapInh:\t0000000000000000",
		"Cpus_allowed_list:\t0-1",
		"voluntary_ctxt_switches:\t152",
		"nonvoluntary_ctxt_switches:\t7",
	}
	return strings.Join(lines, "\n") + "\n"
}

// nspidText renders the NSpid line's pids, tab-separated.
func nspidText(p fakeProc) string {
	if len(p.nspid) == 0 {
		return strconv.Itoa(p.pid)
	}
	f := make([]string, len(p.nspid))
	for i, n := range p.nspid {
		f[i] = strconv.Itoa(n)
	}
	return strings.Join(f, "\t")
}

// statmText renders /proc/PID/statm: size resident shared text lib data dt,
// all in pages.
func statmText(p fakeProc) string {
	return fmt.Sprintf("%d %d %d %d 0 %d 0\n", p.vszPages, p.rssPages, p.rssPages/2, 5, p.vszPages/3)
}

// addProc writes one process into a fixture tree.
func addProc(t *testing.T, root string, p fakeProc) {
	t.Helper()
	dir := filepath.Join(root, strconv.Itoa(p.pid))
	writeFile(t, filepath.Join(dir, "stat"), statLine(p))
	writeFile(t, filepath.Join(dir, "statm"), statmText(p))
	writeFile(t, filepath.Join(dir, "status"), statusText(p))
	var cmdline strings.Builder
	for _, a := range p.cmdline {
		cmdline.WriteString(a + "\x00")
	}
	writeFile(t, filepath.Join(dir, "cmdline"), cmdline.String())
	tasks := p.tasks
	if len(tasks) == 0 {
		tasks = map[int][]int{p.pid: nil}
	}
	for tid, kids := range tasks {
		var b strings.Builder
		for _, k := range kids {
			b.WriteString(strconv.Itoa(k) + " ") // the kernel's format: "pid pid "
		}
		writeFile(t, filepath.Join(dir, "task", strconv.Itoa(tid), "children"), b.String())
	}
	cgroup := p.cgroup
	if cgroup == "" {
		cgroup = "0::/\n"
	}
	writeFile(t, filepath.Join(dir, "cgroup"), cgroup)
	if p.mountinfo != "" {
		writeFile(t, filepath.Join(dir, "mountinfo"), p.mountinfo)
	}
	for name, target := range map[string]string{"cwd": p.cwd, "root": p.root} {
		if target == "" {
			continue
		}
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// newProcfs builds a procfs fixture tree holding procs and returns a Procfs
// reading it.
func newProcfs(t *testing.T, procs ...fakeProc) Procfs {
	t.Helper()
	root := t.TempDir()
	writeStatFile(t, root)
	for _, p := range procs {
		addProc(t, root, p)
	}
	return Procfs{Root: root}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestProcfsStatParsesKernelFormat(t *testing.T) {
	tests := []struct {
		name  string
		comm  string
		ppid  int
		start uint64
	}{
		{"plain", "uwsgi", 1, 52573},
		{"space and parentheses", "uwsgi (worker)", 4000, 1000},
		{"close-open inside", "a) (b", 4000, 1234},
		{"ends with paren", "x)", 7, 9},
		{"looks like fields", ") S 1 2 3 4 (", 4000, 18446744073709551615},
		{"empty", "", 2, 0},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pid := 100 + i
			fs := newProcfs(t, fakeProc{pid: pid, ppid: tt.ppid, comm: tt.comm, startTicks: tt.start})
			ppid, proc, err := fs.Stat(pid)
			if err != nil {
				t.Fatalf("Stat(%d): %v", pid, err)
			}
			if ppid != tt.ppid {
				t.Errorf("ppid = %d, want %d", ppid, tt.ppid)
			}
			if want := (Proc{PID: pid, StartTicks: tt.start}); proc != want {
				t.Errorf("proc = %+v, want %+v", proc, want)
			}
		})
	}
}

func TestProcfsStatErrors(t *testing.T) {
	fs := newProcfs(t)
	t.Run("missing pid is ErrNoProcess", func(t *testing.T) {
		_, _, err := fs.Stat(4242)
		if !errors.Is(err, ErrNoProcess) {
			t.Fatalf("Stat of a missing pid: err = %v, want ErrNoProcess", err)
		}
	})
	bad := []struct {
		name, content string
	}{
		{"no command name", "4243 uwsgi S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"},
		{"truncated", "4243 (uwsgi) S 1 1 1 0 -1 0\n"},
		{"bad start time", "4243 (uwsgi) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 soon 0 0\n"},
		{"bad ppid", "4243 (uwsgi) S one 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"},
		{"empty", ""},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			writeFile(t, filepath.Join(fs.Root, "4243", "stat"), tt.content)
			_, _, err := fs.Stat(4243)
			if err == nil {
				t.Fatal("Stat of a malformed stat file succeeded")
			}
			if errors.Is(err, ErrNoProcess) {
				t.Fatalf("malformed stat reported as a missing process: %v", err)
			}
		})
	}
}

func TestProcfsChildren(t *testing.T) {
	const master = 4000
	fs := newProcfs(t,
		fakeProc{pid: master, ppid: 1, comm: "uwsgi (master)", startTicks: 900, tasks: map[int][]int{
			master: {4003, 4001, 4004, 4005},
			4010:   {4002, 4006}, // a second thread of the master forked too
		}},
		fakeProc{pid: 4001, ppid: master, comm: "uwsgi (worker)", startTicks: 1000},
		fakeProc{pid: 4002, ppid: master, comm: "uwsgi (worker)", startTicks: 1500},
		fakeProc{pid: 4003, ppid: master, comm: "uwsgi (worker)", startTicks: 1200},
		// Reparented since the children file was read: not ours.
		fakeProc{pid: 4004, ppid: 1, comm: "uwsgi (worker)", startTicks: 1100},
		// 4005 is listed but already gone (no /proc/4005).
		// Same start tick as 4003: ties go by pid.
		fakeProc{pid: 4006, ppid: master, comm: "uwsgi (worker)", startTicks: 1200},
	)
	kids, err := fs.Children(master)
	if err != nil {
		t.Fatal(err)
	}
	want := []Proc{{4001, 1000}, {4003, 1200}, {4006, 1200}, {4002, 1500}}
	if !reflect.DeepEqual(kids, want) {
		t.Errorf("Children = %v, want %v", kids, want)
	}
}

func TestProcfsChildrenNone(t *testing.T) {
	fs := newProcfs(t, fakeProc{pid: 4000, ppid: 1, comm: "uwsgi", startTicks: 900})
	kids, err := fs.Children(4000)
	if err != nil {
		t.Fatal(err)
	}
	if len(kids) != 0 {
		t.Errorf("Children = %v, want none", kids)
	}
}

func TestProcfsChildrenErrors(t *testing.T) {
	fs := newProcfs(t, fakeProc{pid: 4000, ppid: 1, comm: "uwsgi", startTicks: 900})
	t.Run("missing pid is ErrNoProcess", func(t *testing.T) {
		_, err := fs.Children(4242)
		if !errors.Is(err, ErrNoProcess) {
			t.Fatalf("err = %v, want ErrNoProcess", err)
		}
	})
	t.Run("kernel without children files", func(t *testing.T) {
		if err := os.RemoveAll(filepath.Join(fs.Root, "4000", "task")); err != nil {
			t.Fatal(err)
		}
		_, err := fs.Children(4000)
		if err == nil {
			t.Fatal("Children succeeded without task/*/children files")
		}
		if errors.Is(err, ErrNoProcess) {
			t.Fatalf("an existing process reported missing: %v", err)
		}
		if !strings.Contains(err.Error(), "CONFIG_PROC_CHILDREN") {
			t.Errorf("error %q does not name the missing kernel option", err)
		}
	})
}

func TestProcfsMemory(t *testing.T) {
	fs := newProcfs(t, fakeProc{pid: 4001, ppid: 4000, comm: "uwsgi (worker)", startTicks: 1000, rssPages: 1234, vszPages: 56789})
	rss, vsz, err := fs.Memory(context.Background(), 4001)
	if err != nil {
		t.Fatal(err)
	}
	page := uint64(os.Getpagesize())
	if rss != 1234*page || vsz != 56789*page {
		t.Errorf("Memory = rss %d vsz %d, want %d %d (statm pages * page size)", rss, vsz, 1234*page, 56789*page)
	}
	if _, _, err := fs.Memory(context.Background(), 4242); err == nil {
		t.Error("Memory of a missing pid succeeded")
	}
}

func TestProcfsOwner(t *testing.T) {
	fs := newProcfs(t, fakeProc{pid: 4000, ppid: 1, comm: "uwsgi (master)", startTicks: 900, uid: 1000, gid: 2000, cwd: "/srv/app"})
	uid, gid, err := fs.Owner(context.Background(), 4000)
	if err != nil {
		t.Fatal(err)
	}
	if uid != 1000 || gid != 2000 {
		t.Errorf("Owner = %d %d, want the real ids 1000 2000", uid, gid)
	}
	cwd, err := fs.Cwd(4000)
	if err != nil || cwd != "/srv/app" {
		t.Errorf("Cwd = %q %v, want /srv/app", cwd, err)
	}

	// Without access to cwd the owner is still known.
	if err := os.Remove(filepath.Join(fs.Root, "4000", "cwd")); err != nil {
		t.Fatal(err)
	}
	if uid, gid, err = fs.Owner(context.Background(), 4000); err != nil || uid != 1000 || gid != 2000 {
		t.Errorf("Owner without cwd = %d %d %v, want 1000 2000 nil", uid, gid, err)
	}
	if cwd, err := fs.Cwd(4000); err == nil {
		t.Errorf("Cwd without its link = %q, want an error", cwd)
	}

	if _, _, err := fs.Owner(context.Background(), 4242); err == nil {
		t.Error("Owner of a missing pid succeeded")
	}
}

func TestProcfsBootTimeIsBtime(t *testing.T) {
	fs := newProcfs(t)
	bt, err := fs.BootTime()
	if err != nil {
		t.Fatal(err)
	}
	if bt != fixtureBtime {
		t.Errorf("BootTime = %d, want btime %d from %s/stat", bt, fixtureBtime, fs.Root)
	}
	// /proc/stat alone is enough to know the boot time.
	if err := os.Remove(filepath.Join(fs.Root, "uptime")); err != nil {
		t.Fatal(err)
	}
	if bt, err := fs.BootTime(); err != nil || bt != fixtureBtime {
		t.Errorf("BootTime without %s/uptime = %d, %v; want %d, nil", fs.Root, bt, err, fixtureBtime)
	}
}
