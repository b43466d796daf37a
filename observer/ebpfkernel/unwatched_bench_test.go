package ebpfkernel

import (
	"fmt"
	"runtime"
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

// BenchmarkUnwatchedEvents measures what our programs add to a process we
// do not watch, which is every other process of the host: a tight loop of
// a send, a receive and a close (write and read one byte on a socketpair,
// close a dup of its fd), in three states taken in turn in each round:
// nothing attached, empty programs on our hooks, and our programs. It
// reports the median ns per loop of each, and "x-empty": what ours add
// over bare divided by what empty programs add, the price of the hooks
// themselves (the goal is 1.5 or less).
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
			b.Run(name, func(b *testing.B) { benchUnwatched(b, hooks, unixPool) })
		}
	}
}

// benchUnwatched is BenchmarkUnwatchedEvents for one hook set, with the
// daemon watching a TCP pool or (unixPool) also one on a Unix socket.
func benchUnwatched(b *testing.B, hooks string, unixPool bool) {
	var bare, empty, ours []float64
	for r := range testutil.EnvInt(b, "WORKERSTATS_BENCH_ROUNDS", 7) {
		states := []func(){
			func() { bare = append(bare, eventLoop(b)) },
			func() { empty = append(empty, withEmptyPrograms(b, hooks, unixPool, eventLoop)) },
			func() { ours = append(ours, withOurPrograms(b, hooks, unixPool, eventLoop)) },
		}
		for i := range states {
			states[(i+r)%len(states)]()
		}
	}
	mb, me, mo := testutil.Median(bare), testutil.Median(empty), testutil.Median(ours)
	b.ReportMetric(mb, "bare-ns/loop")
	b.ReportMetric(me-mb, "empty-added-ns/loop")
	b.ReportMetric(mo-mb, "ours-added-ns/loop")
	if me > mb {
		b.ReportMetric((mo-mb)/(me-mb), "x-empty")
	}
	b.Logf("%s: bare %.0f ns/loop (spread %s), empty programs %.0f (%s), ours %.0f (%s)",
		hooks, mb, testutil.Spread(bare, "%.0f"), me, testutil.Spread(empty, "%.0f"), mo, testutil.Spread(ours, "%.0f"))
	ratio := 0.0
	if me > mb {
		ratio = (mo - mb) / (me - mb)
	}
	what := hooks + " hooks"
	if hooks == HooksSock {
		what += map[bool]string{false: ", TCP pools", true: ", a pool on a Unix socket"}[unixPool]
	}
	testutil.BenchRow(b, "unwatched send+recv+close, added by ours / by empty programs: "+what, "<= 1.5",
		fmt.Sprintf("%.2f (ours %.0f ns, empty %.0f ns per loop over bare %.0f ns)", ratio, mo-mb, me-mb, mb), ratio <= 1.5)
}

// eventLoop returns the ns per loop of a send, a receive and a close on
// one locked thread.
func eventLoop(b *testing.B) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	buf := []byte{1}
	start := time.Now()
	for range unwatchedLoops {
		if _, err := unix.Write(fds[0], buf); err != nil {
			b.Fatal(err)
		}
		if _, err := unix.Read(fds[1], buf); err != nil {
			b.Fatal(err)
		}
		d, err := unix.Dup(fds[0])
		if err != nil {
			b.Fatal(err)
		}
		unix.Close(d)
	}
	return float64(time.Since(start).Nanoseconds()) / unwatchedLoops
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
