package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The cost benchmark: what the observed server loses when workerstats
// watches it. For each server and each hook set this kernel carries, wrk
// loads the server in interleaved rounds of runs, without the daemon, with
// empty programs on its hooks and with it (the order rotating), and the
// medians are compared:
// throughput with / without, p99 latency with / without, and the host's
// CPU time per request with minus without (every core: the server, wrk,
// softirqs and our programs, end to end).
//
// WORKERSTATS_BENCH_SECONDS (5) is each run's length and
// WORKERSTATS_BENCH_PAIRS (5) the rounds; make bench's CI smoke shortens
// both. make bench-vm's one-vCPU guests set WORKERSTATS_BENCH_WRK_THREADS
// and _CONNS (wrk's -t and -c: 1 and 4 there), and
// WORKERSTATS_BENCH_DAEMON_ARGS (extra flags of the daemon:
// --requests=false, say).

// costCase is one server loaded one way.
type costCase struct {
	name  string
	start func(b *testing.B) (master int, url string)
	close bool // one connection per request (wrk sends Connection: close)
	// serverCloses: the server closes each connection after its response
	// (uWSGI's http-socket), which wrk counts as read errors.
	serverCloses bool
	conns        int     // wrk's connections
	minTPS       float64 // throughput ratio goal
}

func BenchmarkServerCost(b *testing.B) {
	testutil.RequireEBPF(b)
	wrk := testutil.RequireCommand(b, "wrk", "wrk")
	cases := []costCase{
		{name: "nginx-keepalive", start: costNginx, conns: 32, minTPS: 0.99},
		{name: "nginx-close", start: costNginx, close: true, conns: 32, minTPS: 0.99},
		{name: "uwsgi", start: costUWSGI, serverCloses: true, conns: 8, minTPS: 0.995},
		{name: "gunicorn", start: costGunicorn, conns: 8, minTPS: 0.995},
		{name: "demo", start: costDemo, conns: 8, minTPS: 0.99},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			master, url := c.start(b)
			for _, hooks := range testutil.HookSets(b, ebpfkernel.AvailableHooks) {
				b.Run(hooks, func(b *testing.B) { costPairs(b, wrk, c, hooks, master, url) })
			}
		})
	}
}

// costPairs runs the interleaved rounds for one case and hook set, reports
// the medians and adds the case's rows to the bench table. Each round
// loads the server three ways, in an order that rotates: bare, with empty
// programs on the hook set's attachment points (the price of the hooks by
// themselves, which no program of ours can go under), and with the daemon.
func costPairs(b *testing.B, wrk string, c costCase, hooks string, master int, url string) {
	secs := testutil.EnvInt(b, "WORKERSTATS_BENCH_SECONDS", 5)
	rounds := testutil.EnvInt(b, "WORKERSTATS_BENCH_PAIRS", 5)
	var tps, floor, p99, p99Floor, cpu, cpuFloor []float64
	for i := range rounds {
		var runs [3]wrkResult // bare, empty programs, daemon
		for j := range 3 {
			state := (i + j) % 3
			runs[state] = runState(b, wrk, c, hooks, master, url, secs, state)
		}
		off, empty, on := runs[0], runs[1], runs[2]
		tps = append(tps, on.rps/off.rps)
		floor = append(floor, empty.rps/off.rps)
		p99 = append(p99, on.p99.Seconds()/off.p99.Seconds())
		p99Floor = append(p99Floor, empty.p99.Seconds()/off.p99.Seconds())
		cpu = append(cpu, on.cpuPerReq-off.cpuPerReq)
		cpuFloor = append(cpuFloor, empty.cpuPerReq-off.cpuPerReq)
		b.Logf("round %d: %.0f / %.0f req/s (empty programs %.0f), p99 %v / %v, host CPU %.0f / %.0f ns per request",
			i+1, on.rps, off.rps, empty.rps, on.p99, off.p99, on.cpuPerReq, off.cpuPerReq)
	}
	mt, mf, mp, mc := testutil.Median(tps), testutil.Median(floor), testutil.Median(p99), testutil.Median(cpu)
	b.ReportMetric(mt, "x-throughput")
	b.ReportMetric(mf, "x-throughput-empty")
	b.ReportMetric(mp, "x-p99")
	b.ReportMetric(mc, "added-host-cpu-ns/req")
	goal := c.minTPS // on every hook set: one a user picks is to be as cheap
	what := fmt.Sprintf("%s, %s hooks", c.name, hooks)
	testutil.BenchRowFloor(b, "throughput with/without: "+what, fmt.Sprintf(">= %g", goal),
		fmt.Sprintf("%.3f (%s, %d rounds; empty programs on the same hooks %.3f, %s)",
			mt, testutil.Spread(tps, "%.3f"), rounds, mf, testutil.Spread(floor, "%.3f")), mt >= goal, mf < goal)
	mpf, mcf := testutil.Median(p99Floor), testutil.Median(cpuFloor)
	testutil.BenchRowFloor(b, "p99 latency with/without: "+what, "<= 1.05",
		fmt.Sprintf("%.3f (%s; empty programs %.3f)", mp, testutil.Spread(p99, "%.3f"), mpf), mp <= 1.05, mpf > 1.05)
	cpuGoal := 150.0 // a kept-alive request
	if c.close {
		cpuGoal = 500
	}
	testutil.BenchRowFloor(b, "host CPU added per request, end to end: "+what, fmt.Sprintf("<= %.0f ns", cpuGoal),
		fmt.Sprintf("%.0f ns (%s; empty programs %.0f ns)", mc, testutil.Spread(cpu, "%.0f"), mcf), mc <= cpuGoal, mcf > cpuGoal)
}

// runState loads the server for secs seconds in one state of a round:
// 0 bare, 1 with empty programs on the hooks, 2 with the daemon.
func runState(b *testing.B, wrk string, c costCase, hooks string, master int, url string, secs, state int) wrkResult {
	b.Helper()
	switch state {
	case 1:
		e, err := ebpfkernel.AttachEmpty(hooks, false) // every server here listens on TCP
		if err != nil {
			b.Fatal(err)
		}
		defer e.Close()
	case 2:
		args := []string{"--pid", strconv.Itoa(master), "--stats", harness.FreeAddr(b), "--hooks", hooks}
		d := harness.StartDaemon(b, append(args, strings.Fields(os.Getenv("WORKERSTATS_BENCH_DAEMON_ARGS"))...)...)
		defer d.Stop(b)
	}
	return runWrk(b, wrk, url, c, secs)
}

// wrkResult is one wrk run: requests per second, the 99th percentile of
// latency, and the host's busy CPU time per request over the run.
type wrkResult struct {
	rps       float64
	p99       time.Duration
	cpuPerReq float64
}

var (
	wrkRate   = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkP99    = regexp.MustCompile(`\s99%\s+([0-9.]+)(us|ms|s)\b`)
	wrkTotal  = regexp.MustCompile(`(\d+) requests in`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
)

// runWrk loads url for secs seconds.
func runWrk(b *testing.B, wrk, url string, c costCase, secs int) wrkResult {
	b.Helper()
	threads := testutil.EnvInt(b, "WORKERSTATS_BENCH_WRK_THREADS", 2)
	conns := testutil.EnvInt(b, "WORKERSTATS_BENCH_WRK_CONNS", c.conns)
	args := []string{"-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns), "-d", fmt.Sprintf("%ds", secs), "--latency"}
	if c.close {
		args = append(args, "-H", "Connection: close")
	}
	busy0 := hostBusy(b)
	out, err := exec.Command(wrk, append(args, url)...).CombinedOutput()
	busy := hostBusy(b) - busy0
	if err != nil {
		b.Fatalf("wrk %s: %v\n%s", url, err, out)
	}
	s := string(out)
	rate, p99, total := wrkRate.FindStringSubmatch(s), wrkP99.FindStringSubmatch(s), wrkTotal.FindStringSubmatch(s)
	if rate == nil || p99 == nil || total == nil || wrkNon2xx.MatchString(s) || !wrkClean(s, c.serverCloses) {
		b.Fatalf("wrk %s: no clean result:\n%s", url, s)
	}
	r := wrkResult{}
	r.rps, _ = strconv.ParseFloat(rate[1], 64)
	v, _ := strconv.ParseFloat(p99[1], 64)
	unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second}[p99[2]]
	r.p99 = time.Duration(v * float64(unit))
	n, _ := strconv.ParseFloat(total[1], 64)
	r.cpuPerReq = busy.Seconds() * 1e9 / n
	return r
}

// wrkClean says wrk saw no socket error, or only the read errors of a
// server that closes each connection after answering.
func wrkClean(out string, serverCloses bool) bool {
	m := wrkErrors.FindStringSubmatch(out)
	if m == nil {
		return true
	}
	return serverCloses && m[1] == "0" && m[3] == "0" && m[4] == "0"
}

// hostBusy is the CPU time every core of the host has spent not idle.
func hostBusy(b *testing.B) time.Duration {
	b.Helper()
	f, err := os.Open("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "cpu ") {
		b.Fatalf("/proc/stat: %q %v", line, err)
	}
	var busy uint64
	for i, field := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(field, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return time.Duration(busy) * time.Second / ticksPerSecond
}

// costNginx is nginx (two workers, sendfile on) serving a 512-byte file.
func costNginx(b *testing.B) (int, string) {
	s := harness.StartNginx(b, true)
	if err := os.WriteFile(filepath.Join(s.Dir, "www", "512.txt"), []byte(strings.Repeat("n", 512)), 0o644); err != nil {
		b.Fatal(err)
	}
	return s.PID, "http://" + s.Addr + "/512.txt"
}

// costUWSGI is uWSGI (four workers, http-socket) running the tests' Python
// app, answering 512 bytes.
func costUWSGI(b *testing.B) (int, string) {
	p := harness.StartUWSGI(b, harness.UWSGIOptions{Processes: 4})
	return p.PID, "http://" + p.Addr + "/512"
}

// costGunicorn is gunicorn (four sync workers) running the tests' app,
// answering 512 bytes.
func costGunicorn(b *testing.B) (int, string) {
	p := harness.StartGunicorn(b, 4, "-k", "sync")
	return p.PID, "http://" + p.Addr + "/512"
}

// costDemo is workerstats' own demo pool (four Go workers), answering 500
// bytes with no think time.
func costDemo(b *testing.B) (int, string) {
	cmd := exec.Command(harness.Binary(), "demo-pool", "--workers", "4")
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	harness.StartGroup(b, cmd, syscall.SIGTERM, func() string { return "the demo pool" })
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("demo pool: %v", err)
	}
	return cmd.Process.Pid, "http://" + strings.TrimSpace(addr) + "/500"
}

// BenchmarkDaemonFootprint measures the daemon itself while the pool it
// watches serves load (wrk on uWSGI) and a reader polls its stats ten
// times a second: its CPU time as a share of one core, and its peak
// resident memory (VmHWM). WORKERSTATS_BENCH_SECONDS (5) of load, taken
// three times as long.
func BenchmarkDaemonFootprint(b *testing.B) {
	testutil.RequireEBPF(b)
	wrk := testutil.RequireCommand(b, "wrk", "wrk")
	master, url := costUWSGI(b)
	d := harness.StartDaemon(b, "--pid", strconv.Itoa(master), "--stats", harness.FreeAddr(b))
	secs := 3 * testutil.EnvInt(b, "WORKERSTATS_BENCH_SECONDS", 5)
	pid := d.Cmd.Process.Pid
	stop := make(chan struct{})
	polled := make(chan int)
	go func() {
		n := 0
		var buf bytes.Buffer
		for t := time.NewTicker(100 * time.Millisecond); ; {
			select {
			case <-stop:
				polled <- n
				return
			case <-t.C:
				if _, err := readDump(d.Addr, &buf); err == nil {
					n++
				}
			}
		}
	}()
	cpu0, start := cpuTicks(b, pid), time.Now()
	runWrk(b, wrk, url, costCase{conns: 8, serverCloses: true}, secs)
	cpu, wall := cpuTicks(b, pid)-cpu0, time.Since(start)
	close(stop)
	reads := <-polled
	share := float64(cpu) / ticksPerSecond / wall.Seconds()
	hwm := statusKiB(b, pid, "VmHWM")
	b.ReportMetric(100*share, "cpu-%")
	b.ReportMetric(float64(hwm)/1024, "peak-rss-MiB")
	testutil.BenchRow(b, "daemon CPU under load, 10 reads/s", "< 1% of a core",
		fmt.Sprintf("%.2f%% (%d ticks over %.0f s, %d reads)", 100*share, cpu, wall.Seconds(), reads), share < 0.01)
	testutil.BenchRow(b, "daemon peak RSS under load", "< 30 MiB",
		fmt.Sprintf("%.1f MiB", float64(hwm)/1024), hwm < 30*1024)
}

// statusKiB reads a kB field of /proc/PID/status.
func statusKiB(b *testing.B, pid int, field string) uint64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("/proc/%d/status %s: %q", pid, field, v)
			}
			return n
		}
	}
	b.Fatalf("/proc/%d/status has no %s", pid, field)
	return 0
}
