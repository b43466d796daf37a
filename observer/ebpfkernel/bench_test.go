package ebpfkernel

import (
	"sync"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
)

// BenchmarkPrograms measures what each program costs per run, from the
// kernel's own accounting (kernel.bpf_stats_enabled), while a watched pool
// serves b.N kept-alive requests and the clients (unwatched) do their side.
// A program that does nothing is attached to the same tracepoints in the
// same run: its figure is what the measurement itself costs on this machine,
// so "<prog>-ns/run" minus "baseline-ns/run" is our programs' own cost.
func BenchmarkPrograms(b *testing.B) {
	testutil.RequireEBPF(b)
	for _, hooks := range hookSets(b) {
		b.Run(hooks, func(b *testing.B) {
			pool := forkpool.Start(b, 2, "")
			k, err := Load(Options{Hooks: hooks, BPFStats: true, Log: testutil.NewLog(b).Logger})
			if err != nil {
				b.Fatal(err)
			}
			defer k.Close()
			p := watch(b, k, pool)
			defer k.Unwatch(pool.Master)

			baseline, err := ebpf.NewProgram(&ebpf.ProgramSpec{
				Name: "baseline", Type: ebpf.TracePoint, License: "GPL",
				Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
			})
			if err != nil {
				b.Fatal(err)
			}
			defer baseline.Close()
			tps := [][2]string{{"syscalls", "sys_enter_read"}, {"syscalls", "sys_enter_write"}}
			if hooks == HooksSock {
				tps = [][2]string{{"sock", "sock_recv_length"}, {"sock", "sock_send_length"}}
			}
			for _, tp := range tps {
				l, err := link.Tracepoint(tp[0], tp[1], baseline, nil)
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
			}

			var ts forkpool.Tallies
			const sessions = 4
			b.ResetTimer()
			var wg sync.WaitGroup
			for s := range sessions {
				n := b.N / sessions
				if s == 0 {
					n += b.N % sessions
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := pool.Session(&ts, n, func(int) int { return 512 }, 0, 0); err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
			b.StopTimer()

			for _, ps := range k.Info().Programs {
				if ps.RunCount > 0 {
					b.ReportMetric(float64(ps.RunTimeNs)/float64(ps.RunCount), ps.Name+"-ns/run")
				}
			}
			if s, err := baseline.Stats(); err == nil && s.RunCount > 0 {
				b.ReportMetric(float64(s.Runtime.Nanoseconds())/float64(s.RunCount), "baseline-ns/run")
			}
			settleOn(b, p, &ts) // the counts stayed exact under load
		})
	}
}
