package ebpfkernel

import (
	"fmt"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// unwatchedLoops is the loop iterations per state and round of
// BenchmarkUnwatchedEvents, which takes the median of
// WORKERSTATS_BENCH_ROUNDS (7) interleaved rounds.
const unwatchedLoops = 100_000

// loopChunks is the runs a timing of unwatchedLoops iterations is cut in.
const loopChunks = 100

// unwatchedLoop is one loop BenchmarkUnwatchedEvents times: its ns per
// iteration (instructions, in make bench-vm's icount guests).
type unwatchedLoop struct {
	name string
	run  func(b *testing.B) float64
	// socket says it makes socket operations, which our hooks may see;
	// a loop without (getpgid) must pay nothing for them.
	socket bool
}

var unwatchedLoopSet = []unwatchedLoop{
	{"getpgid", getpgidLoop, false},
	{"write+read 64 B", writeReadLoop, true},
	{"send+recv+close", eventLoop, true},
}

// BenchmarkUnwatchedEvents measures what our programs add to a process we
// do not watch, which is every other process of the host, in three tight
// loops: a syscall that is no socket operation (getpgid), a write and a
// read of 64 bytes on a socketpair, and a send, a receive and a close
// (write and read one byte, close a dup of its fd); each in three states
// taken in turn in each round: nothing attached, empty programs on our
// hooks, and our programs. It reports the median ns per loop of each, and
// "x-empty": what ours add over bare divided by what empty programs add,
// the price of the hooks themselves (the goal is 1.5 or less); getpgid's
// goal is nothing added at all, within the rounds' spread.
func BenchmarkUnwatchedEvents(b *testing.B) {
	testutil.RequireEBPF(b)
	for _, hooks := range hookSets(b) {
		unix := []bool{false}
		if hooks == HooksSock {
			unix = append(unix, true) // accept and close hooked too
		}
		for _, unixPool := range unix {
			name := hooks
			if unixPool {
				name += "+unix-pool"
			}
			for _, loop := range unwatchedLoopSet {
				b.Run(name+"/"+loop.name, func(b *testing.B) { benchUnwatched(b, hooks, unixPool, loop) })
			}
		}
	}
}

// benchUnwatched is BenchmarkUnwatchedEvents for one hook set and loop,
// with the daemon watching a TCP pool or (unixPool) also one on a Unix
// socket.
func benchUnwatched(b *testing.B, hooks string, unixPool bool, loop unwatchedLoop) {
	var bare, empty, ours []float64
	for r := range testutil.EnvInt(b, "WORKERSTATS_BENCH_ROUNDS", 7) {
		states := []func(){
			func() { bare = append(bare, loop.run(b)) },
			func() { empty = append(empty, withEmptyPrograms(b, hooks, unixPool, loop.run)) },
			func() { ours = append(ours, withOurPrograms(b, hooks, unixPool, loop.run)) },
		}
		for i := range states {
			states[(i+r)%len(states)]()
		}
	}
	mb, me, mo := testutil.Median(bare), testutil.Median(empty), testutil.Median(ours)
	b.ReportMetric(mb, "bare-ns/loop")
	b.ReportMetric(me-mb, "empty-added-ns/loop")
	b.ReportMetric(mo-mb, "ours-added-ns/loop")
	b.Logf("%s, %s: bare %.1f ns/loop (spread %s), empty programs %.1f (%s), ours %.1f (%s)", hooks, loop.name,
		mb, testutil.Spread(bare, "%.1f"), me, testutil.Spread(empty, "%.1f"), mo, testutil.Spread(ours, "%.1f"))
	what := hooks + " hooks"
	if hooks == HooksSock {
		what += map[bool]string{false: ", TCP pools", true: ", a pool on a Unix socket"}[unixPool]
	}
	measured := fmt.Sprintf("ours %+.1f ns, empty programs %+.1f ns per loop over bare %.1f ns (spreads %s, %s, %s)",
		mo-mb, me-mb, mb, testutil.Spread(ours, "%.1f"), testutil.Spread(empty, "%.1f"), testutil.Spread(bare, "%.1f"))
	if !loop.socket {
		// Nothing added: within the rounds' spread, or 0.5% where that
		// is wider (wall-clock runs).
		slack := max(slices.Max(bare)-slices.Min(bare), mb*0.005)
		testutil.BenchRow(b, "unwatched "+loop.name+", added by ours: "+what, "0 (within spread)",
			measured, mo-mb <= slack)
		return
	}
	ratio := 0.0
	if me > mb {
		ratio = (mo - mb) / (me - mb)
		b.ReportMetric(ratio, "x-empty")
	}
	testutil.BenchRow(b, "unwatched "+loop.name+", added by ours / by empty programs: "+what, "<= 1.5",
		fmt.Sprintf("%.2f (%s)", ratio, measured), ratio <= 1.5)
}

// timeLoop returns the ns per iteration of f on one locked thread: the
// fastest of loopChunks runs of unwatchedLoops/loopChunks iterations
// (a thousand: a few ms, shorter than the periods of what else wakes up).
// Whatever else runs on the CPU meanwhile (the kernel freeing the programs
// of the state before, a timer) only ever adds, so the fastest chunk is
// the loop's own cost: in make bench-vm's icount guests, where a chunk's
// ns are its instructions, it repeats to a fraction of an instruction.
func timeLoop(b *testing.B, f func() error) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const n = unwatchedLoops / loopChunks
	best := 0.0
	for range loopChunks {
		start := time.Now()
		for range n {
			if err := f(); err != nil {
				b.Fatal(err)
			}
		}
		per := float64(time.Since(start).Nanoseconds()) / n
		if best == 0 || per < best {
			best = per
		}
	}
	return best
}

// getpgidLoop times getpgid(0), a syscall no hook of ours should see.
func getpgidLoop(b *testing.B) float64 {
	return timeLoop(b, func() error {
		_, _, errno := unix.RawSyscall(unix.SYS_GETPGID, 0, 0, 0)
		if errno != 0 {
			return errno
		}
		return nil
	})
}

// writeReadLoop times a write and a read of 64 bytes on a socketpair.
func writeReadLoop(b *testing.B) float64 {
	fds := socketpair(b)
	buf := make([]byte, 64)
	return timeLoop(b, func() error {
		if _, err := unix.Write(fds[0], buf); err != nil {
			return err
		}
		_, err := unix.Read(fds[1], buf)
		return err
	})
}

// eventLoop times a send, a receive and a close.
func eventLoop(b *testing.B) float64 {
	fds := socketpair(b)
	buf := []byte{1}
	return timeLoop(b, func() error {
		if _, err := unix.Write(fds[0], buf); err != nil {
			return err
		}
		if _, err := unix.Read(fds[1], buf); err != nil {
			return err
		}
		d, err := unix.Dup(fds[0])
		if err != nil {
			return err
		}
		return unix.Close(d)
	})
}

// socketpair is a connected pair of blocking Unix stream sockets, closed
// when t ends.
func socketpair(t testing.TB) [2]int {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds
}

// withOurPrograms runs f with our programs attached with hooks, as for a
// pool on TCP, or also one on a Unix socket.
func withOurPrograms(b *testing.B, hooks string, unixPool bool, f func(*testing.B) float64) float64 {
	k, err := Load(Options{Hooks: hooks, Log: testutil.NewLog(b).Logger})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	socks := []observer.Socket{{Proto: "tcp", Name: "127.0.0.1:1"}}
	if unixPool {
		socks = append(socks, observer.Socket{Proto: "unix", Name: "/run/bench.sock"})
	}
	if err := k.Listening(1, socks); err != nil {
		b.Fatal(err)
	}
	return f(b)
}

// withEmptyPrograms runs f with a program that returns at once attached
// where each of our programs is, for hooks.
func withEmptyPrograms(b *testing.B, hooks string, unixPool bool, f func(*testing.B) float64) float64 {
	e, err := AttachEmpty(hooks, unixPool)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	return f(b)
}

// BenchmarkSyscallTracepointPrice measures what attaching any syscall
// tracepoint at all costs every process: an empty program on
// sys_enter_getppid, a syscall the loop never makes, still sends every
// syscall of every thread through the kernel's slow path. The loop makes
// four syscalls; the figure is per syscall. It is the floor under the sock
// hooks' accept and close, and under the syscall and raw hooks.
func BenchmarkSyscallTracepointPrice(b *testing.B) {
	testutil.RequireEBPF(b)
	if err := ensureTracefs(); err != nil {
		b.Fatal(err)
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "empty", Type: ebpf.TracePoint, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	var bare, hooked []float64
	for r := range testutil.EnvInt(b, "WORKERSTATS_BENCH_ROUNDS", 7) {
		for i := range 2 {
			if (i+r)%2 == 0 {
				bare = append(bare, eventLoop(b))
				continue
			}
			l, err := link.Tracepoint("syscalls", "sys_enter_getppid", p, nil)
			if err != nil {
				b.Fatal(err)
			}
			hooked = append(hooked, eventLoop(b))
			l.Close()
		}
	}
	per := (testutil.Median(hooked) - testutil.Median(bare)) / 4
	b.ReportMetric(per, "slow-path-ns/syscall")
	testutil.BenchRow(b, "any syscall tracepoint attached: added to every syscall on the host", "(shown)",
		fmt.Sprintf("%.0f ns per syscall (bare loop %.0f ns, 4 syscalls)", per, testutil.Median(bare)), true)
}
