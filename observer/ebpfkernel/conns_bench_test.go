package ebpfkernel

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
	"github.com/workerstats/workerstats/observer"
)

// BenchmarkConnections100k holds 100,000 connections (WORKERSTATS_BENCH_CONNS)
// open at once on a watched pool, one request answered on each, and
// requires every one tracked and the per-pid counts equal to the clients'.
// It reports what that scale costs the daemon: one sweep of the connection
// tables, one snapshot of the pool, and the tables' kernel memory.
func BenchmarkConnections100k(b *testing.B) {
	testutil.RequireEBPF(b)
	for _, hooks := range hookSets(b) {
		b.Run(hooks, func(b *testing.B) { benchConnections(b, hooks) })
	}
}

func benchConnections(b *testing.B, hooks string) {
	n := testutil.EnvInt(b, "WORKERSTATS_BENCH_CONNS", 100_000)
	// No process may hold more files than RLIMIT_NOFILE's hard limit (on
	// this project's VMs 20,000, which root cannot raise there): workers
	// and client processes share the connections, with room to spare.
	perProc := int(nofileLimit(b)) / 2
	procs := (n + perProc - 1) / perProc
	pool := forkpool.Start(b, procs+1, "")
	k, err := Load(Options{Hooks: hooks, Log: testutil.NewLog(b).Logger})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	p := watch(b, k, pool)
	defer k.Unwatch(pool.Master)

	var ts forkpool.Tallies
	start := time.Now()
	pool.Hold(b, procs, n, 100, &ts)
	b.Cleanup(pool.Kill) // before the holders close theirs
	b.Logf("%d connections opened and answered in %v", n, time.Since(start).Round(time.Millisecond))
	st := waitFor(b, p, "the held connections' counts", func(st *observer.Stats) error {
		return agreeSince(&observer.Stats{}, st, &ts)
	})
	accepted, _, requests, _, _ := sums(st)
	untracked := st.Observer.Dropped["connections_untracked"]
	exact := accepted == uint64(n) && requests == uint64(n) && untracked == 0
	testutil.BenchRow(b, fmt.Sprintf("connections tracked at once (%s hooks), counts exact", hooks), ">= 100000",
		fmt.Sprintf("%d tracked of %d open (%d workers, %d client processes), %d untracked, per-pid requests and bytes equal the clients'", accepted, n, procs+1, procs, untracked),
		exact && n >= 100_000)

	sweep := timeIt(b, 3, k.Sweep)
	snap := timeIt(b, 3, func() error { _, err := p.Snapshot(context.Background()); return err })
	mem := memlock(b, k.objs.Conns) + memlock(b, k.objs.Fds)
	b.ReportMetric(sweep.Seconds()*1e3, "sweep-ms")
	b.ReportMetric(snap.Seconds()*1e3, "snapshot-ms")
	b.ReportMetric(float64(mem)/(1<<20), "tables-MiB")
	testutil.BenchRow(b, fmt.Sprintf("with %d connections open (%s hooks): a sweep of the tables (every 10 s), a snapshot", n, hooks), "(shown)",
		fmt.Sprintf("sweep %.1f ms, snapshot %.2f ms", sweep.Seconds()*1e3, snap.Seconds()*1e3), true)
	testutil.BenchRow(b, "kernel memory of the connection tables (--max-connections 131072)", "(shown)",
		fmt.Sprintf("%.1f MiB", float64(mem)/(1<<20)), true)
}

// nofileLimit raises RLIMIT_NOFILE's soft limit to its hard one, which
// the pool and the holders inherit, and returns it.
func nofileLimit(b *testing.B) uint64 {
	b.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	return lim.Max
}

// timeIt is the median time of rounds calls of f.
func timeIt(b *testing.B, rounds int, f func() error) time.Duration {
	b.Helper()
	var ds []float64
	for range rounds {
		start := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, float64(time.Since(start)))
	}
	return time.Duration(testutil.Median(ds))
}

// memlock is the kernel memory a map takes, from its fdinfo.
func memlock(b *testing.B, m *ebpf.Map) uint64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "memlock:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				b.Fatalf("fdinfo memlock %q", v)
			}
			return n
		}
	}
	b.Fatal("no memlock in the map's fdinfo")
	return 0
}
