package ebpfkernel

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
)

// BenchmarkWatchedRequest measures the kernel time our programs take per
// request a watched pool serves (b.N requests of 512 bytes, the clients in
// this process doing their side), kept alive and one connection per
// request, from the kernel's own accounting (kernel.bpf_stats_enabled).
// That accounting adds its own clock reads to every run: an empty program
// attached beside each of ours, measured in the same run, is what it adds
// plus the cost of any program at all, so "own-ns/req" (ours minus the
// empty one's per run, times our runs) is what our programs' code costs
// per request, and "stats-ns/req" the whole of what bpf_stats saw.
// "keepalive+capture" is kept alive with request capture on
// (Options.CaptureHeads, the daemon's default): each request's head kept
// in the kernel.
func BenchmarkWatchedRequest(b *testing.B) {
	testutil.RequireEBPF(b)
	for _, hooks := range hookSets(b) {
		for _, mode := range []string{"keepalive", "close", "keepalive+capture"} {
			b.Run(hooks+"/"+mode, func(b *testing.B) {
				benchWatched(b, hooks, mode != "close", mode == "keepalive+capture")
			})
		}
	}
}

func benchWatched(b *testing.B, hooks string, keepAlive, capture bool) {
	pool := forkpool.Start(b, 2, "")
	k, err := Load(Options{Hooks: hooks, BPFStats: true, CaptureHeads: capture, Log: testutil.NewLog(b).Logger})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	p := watch(b, k, pool)
	defer k.Unwatch(pool.Master)
	empty, err := AttachEmpty(hooks, false) // the pool listens on TCP
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()

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
			per := n // requests per connection
			if !keepAlive {
				per = 1
			}
			for done := 0; done < n; done += per {
				if err := pool.Session(&ts, min(per, n-done), func(int) int { return 512 }, 0, 0); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	reportPerRequest(b, k, empty, hooks, keepAlive, capture)
	settleOn(b, p, &ts) // the counts stayed exact under load
}

// reportPerRequest reports and tables our programs' time per request.
func reportPerRequest(b *testing.B, k *Kernel, empty *EmptyHooks, hooks string, keepAlive, capture bool) {
	var runs, ns uint64
	for _, ps := range k.Info().Programs {
		runs += ps.RunCount
		ns += ps.RunTimeNs
		if ps.RunCount > 0 {
			b.ReportMetric(float64(ps.RunTimeNs)/float64(ps.RunCount), ps.Name+"-ns/run")
			b.ReportMetric(float64(ps.RunCount)/float64(b.N), ps.Name+"-runs/req")
		}
	}
	base, err := empty.NsPerRun()
	if err != nil {
		b.Fatal(err)
	}
	reqs := float64(b.N)
	stats := float64(ns) / reqs
	own := (float64(ns) - base*float64(runs)) / reqs
	b.ReportMetric(stats, "stats-ns/req")
	b.ReportMetric(own, "own-ns/req")
	b.ReportMetric(base, "empty-ns/run")
	goal, mode := 150.0, "kept alive"
	if !keepAlive {
		goal, mode = 500, "one connection per request"
	}
	figure := fmt.Sprintf("%.0f ns (bpf_stats %.0f ns, %.1f runs per request, empty program %.0f ns/run)", own, stats, float64(runs)/reqs, base)
	if capture {
		reportPerProgram(b, k, base, hooks, mode+", capturing its heads", reqs)
	} else {
		reportPerProgram(b, k, base, hooks, mode, reqs)
	}
	if capture {
		testutil.BenchRow(b, fmt.Sprintf("kernel time per request, %s, capturing its heads: %s hooks", mode, hooks), "(shown)", figure, true)
		return
	}
	testutil.BenchRow(b, fmt.Sprintf("kernel time per request, %s: %s hooks", mode, hooks), fmt.Sprintf("<= %.0f ns", goal), figure, own <= goal)
}

// reportPerProgram tables each program's own time per run (bpf_stats
// less an empty program's) and runs per request, and checks that no
// program costs more per run than twice the dearest send program.
func reportPerProgram(b *testing.B, k *Kernel, base float64, hooks, mode string, reqs float64) {
	var parts []string
	var send, dearest float64
	dearestName := ""
	for _, ps := range k.Info().Programs {
		if ps.RunCount == 0 {
			continue
		}
		own := float64(ps.RunTimeNs)/float64(ps.RunCount) - base
		parts = append(parts, fmt.Sprintf("%s %.0f ns x %.2f", ps.Name, own, float64(ps.RunCount)/reqs))
		if strings.Contains(ps.Name, "send") {
			send = max(send, own)
		}
		if own > dearest {
			dearest, dearestName = own, ps.Name
		}
	}
	if send == 0 {
		return // the raw hooks: one program per syscall, sends included
	}
	testutil.BenchRow(b, fmt.Sprintf("own time per run, per program, %s: %s hooks", mode, hooks), "none over 2x a send",
		fmt.Sprintf("dearest %s %.0f ns, send %.0f ns (%s)", dearestName, dearest, send, strings.Join(parts, ", ")), dearest <= 2*send)
}
