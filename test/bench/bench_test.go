package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/test/harness"
)

// benchReaders is how many clients read at once in BenchmarkStatsReads.
const benchReaders = 16

// BenchmarkStatsReads measures stats reads, workerstats' socket against
// uWSGI's own stats server, on one uWSGI pool (the same pool for both) of 4,
// 32 and 256 workers, with benchReaders concurrent clients that each
// connect, read to EOF and check the JSON. The goal is the server's CPU
// time per read: workerstats' at most half of uWSGI's, which rebuilds its
// JSON on every read ("x-uwsgi-cpu"). A C server that only accepts, writes
// the same bytes and closes is the floor under both. Reads per second are shown too; on
// a machine of two cores the clients cap them.
//
// The daemon runs with its default --stats-max-age; set
// WORKERSTATS_BENCH_MAX_AGE (e.g. 0) to measure another.
func BenchmarkStatsReads(b *testing.B) {
	for _, workers := range []int{4, 32, 256} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) { benchStatsReads(b, workers) })
	}
}

func benchStatsReads(b *testing.B, workers int) {
	pool := startBenchPool(b, workers)
	var theirs, ours readCost
	b.Run("uwsgi", func(b *testing.B) {
		theirs = benchReads(b, pool.uwsgiStats, pool.uwsgiPID)
	})
	b.Run("workerstats", func(b *testing.B) {
		ours = benchReads(b, pool.ourStats, pool.ourPID)
		if theirs.cpuPerRead > 0 {
			b.ReportMetric(ours.cpuPerRead/theirs.cpuPerRead, "x-uwsgi-cpu")
		}
	})
	var floor readCost
	b.Run("floor", func(b *testing.B) {
		addr, pid := startFloorServer(b, pool.ourDump)
		floor = benchReads(b, addr, pid)
	})
	if theirs.cpuPerRead <= 0 || ours.rate <= 0 || floor.rate <= 0 {
		return
	}
	ratio, floorRatio := ours.cpuPerRead/theirs.cpuPerRead, floor.cpuPerRead/theirs.cpuPerRead
	testutil.BenchRowFloor(b, fmt.Sprintf("stats read, server CPU per read vs uWSGI's: %d workers", workers), "<= 0.50",
		fmt.Sprintf("%.2f (%.0f vs %.0f us; %.0f vs %.0f reads/s; %d vs %d bytes; --stats-max-age %s; accept, write, close alone %.2f)",
			ratio, ours.cpuPerRead, theirs.cpuPerRead, ours.rate, theirs.rate, pool.ourBytes, pool.uwsgiBytes, pool.maxAge, floorRatio),
		ratio <= 0.5, floorRatio > 0.5)
}

// readCost is what reading a stats server cost: reads per second, and the
// server's CPU time per read in microseconds.
type readCost struct {
	rate, cpuPerRead float64
}

// benchReads reads the dump at addr b.N times from benchReaders clients and
// returns the reads per second. It also reports the CPU time the serving
// process (pid) and the clients (this process) spent per read: on a small
// or shared machine the clients compete with the server for CPU, and the
// server's own figure does not depend on them.
func benchReads(b *testing.B, addr string, pid int) readCost {
	b.SetParallelism(max(1, (benchReaders+runtime.GOMAXPROCS(0)-1)/runtime.GOMAXPROCS(0)))
	cpu0, client0 := cpuTicks(b, pid), cpuTicks(b, os.Getpid())
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var buf bytes.Buffer
		for pb.Next() {
			if _, err := readDump(addr, &buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
	c := readCost{rate: float64(b.N) / b.Elapsed().Seconds()}
	c.cpuPerRead = float64(cpuTicks(b, pid)-cpu0) * 1e6 / ticksPerSecond / float64(b.N)
	b.ReportMetric(c.rate, "reads/s")
	b.ReportMetric(c.cpuPerRead, "server-cpu-us/read")
	b.ReportMetric(float64(cpuTicks(b, os.Getpid())-client0)*1e6/ticksPerSecond/float64(b.N), "client-cpu-us/read")
	return c
}

// ticksPerSecond is USER_HZ, the unit of utime and stime in /proc/PID/stat.
const ticksPerSecond = 100

// cpuTicks returns the user and system time process pid (all its threads)
// has used, in clock ticks.
func cpuTicks(b *testing.B, pid int) uint64 {
	b.Helper()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// f[0] is field 3; utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		b.Fatalf("parse /proc/%d/stat: %v", pid, err)
	}
	return utime + stime
}

// readDump is the client both servers are measured with: connect, read to
// EOF, check the JSON. It returns the dump's size.
func readDump(addr string, buf *bytes.Buffer) (int, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf.Reset()
	if _, err := buf.ReadFrom(c); err != nil {
		return 0, fmt.Errorf("read %s: %w", addr, err)
	}
	if !json.Valid(buf.Bytes()) {
		return 0, fmt.Errorf("%s sent invalid JSON (%d bytes): %q", addr, buf.Len(), harness.Truncate(buf.Bytes()))
	}
	return buf.Len(), nil
}

type benchPool struct {
	uwsgiStats, ourStats string
	uwsgiPID, ourPID     int // uWSGI's master serves its stats
	uwsgiBytes, ourBytes int
	ourDump              []byte // a dump of ours, for the floor server
	maxAge               string
}

// startBenchPool starts uWSGI (workers, http-socket, its own --stats) and
// `workerstats serve` on its master, serves them a few requests until both
// agree, and stops both when b ends.
func startBenchPool(b *testing.B, workers int) *benchPool {
	b.Helper()
	testutil.RequireEBPF(b)
	u := harness.StartUWSGI(b, harness.UWSGIOptions{Processes: workers})
	p := &benchPool{uwsgiStats: u.Stats, uwsgiPID: u.PID, maxAge: "default"}
	args := []string{"--pid", strconv.Itoa(u.PID), "--stats", harness.FreeAddr(b)}
	if v, ok := os.LookupEnv("WORKERSTATS_BENCH_MAX_AGE"); ok {
		args = append(args, "--stats-max-age", v)
		p.maxAge = v
	}
	d := harness.StartDaemon(b, args...)
	p.ourStats, p.ourPID = d.Addr, d.Cmd.Process.Pid
	// A few requests, so both dumps hold non-zero numbers.
	res := harness.Drive(b, u, 200, 8, 0)
	harness.Settle(b, u, d, uint64(res.OK))
	var (
		buf bytes.Buffer
		err error
	)
	if p.uwsgiBytes, err = readDump(p.uwsgiStats, &buf); err != nil {
		b.Fatal(err)
	}
	if p.ourBytes, err = readDump(p.ourStats, &buf); err != nil {
		b.Fatal(err)
	}
	p.ourDump = bytes.Clone(buf.Bytes())
	return p
}
