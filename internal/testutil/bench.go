package testutil

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
)

// BenchTableEnv names the file make bench collects its table in: each
// benchmark that measures a goal appends one row per figure.
const BenchTableEnv = "WORKERSTATS_BENCH_TABLE"

var benchTableMu sync.Mutex

// BenchRow records one figure for make bench's table: what was measured,
// its goal, the measurement (with its spread), and whether it meets the
// goal. Without BenchTableEnv it is only logged.
func BenchRow(b testing.TB, figure, goal, measured string, ok bool) {
	b.Helper()
	BenchRowFloor(b, figure, goal, measured, ok, false)
}

// BenchRowFloor is BenchRow for a figure with a measured floor: when the
// figure misses its goal and floorMisses says that the kernel's part alone
// (empty programs on the same hooks) misses it too, the verdict names
// that floor as the reason instead of failing the code measured.
func BenchRowFloor(b testing.TB, figure, goal, measured string, ok, floorMisses bool) {
	b.Helper()
	verdict := "pass"
	switch {
	case !ok && floorMisses:
		verdict = "FLOOR"
	case !ok:
		verdict = "FAIL"
	}
	b.Logf("%s: %s (goal %s) %s", figure, measured, goal, verdict)
	path := os.Getenv(BenchTableEnv)
	if path == "" {
		return
	}
	benchTableMu.Lock()
	defer benchTableMu.Unlock()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		b.Fatalf("bench table: %v", err)
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s\t%s\t%s\t%s\n", figure, goal, measured, verdict); err != nil {
		b.Fatalf("bench table: %v", err)
	}
}

// EnvInt is the positive integer in environment variable name, or def.
func EnvInt(b testing.TB, name string, def int) int {
	b.Helper()
	v, ok := os.LookupEnv(name)
	if !ok || v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// Median is the middle value of xs (the upper one of an even count).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// Spread is the lowest and highest of xs, each formatted with verb.
func Spread(xs []float64, verb string) string {
	if len(xs) == 0 {
		return "none"
	}
	return fmt.Sprintf(verb+"-"+verb, slices.Min(xs), slices.Max(xs))
}
