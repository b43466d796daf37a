package integration

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// TestGunicornQueueWaitAddsUp: one sync worker, a request that takes
// 300 ms, 5 clients connecting at once. The worker takes them one after
// another, so each waits in the accept queue until the worker is done with
// the one before it: from its connect to the previous client's answer.
// The socket's queue_wait sums those waits (within 5%), counts the 5
// connections, and so does /metrics' workerstats_queue_wait_seconds.
func TestGunicornQueueWaitAddsUp(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartGunicorn(t, 1)
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--stats-http", "--hooks", hooks)
			before := waitQueueWait(t, d.Addr, p.Addr, "the pool's socket to be timed", func(*observer.Durations) error { return nil })
			seen := queueSchedule(t, p.Addr, 5, "/sleep/300")
			want := seen.expectedWaits()
			got := waitQueueWait(t, d.Addr, p.Addr, "5 more waits", func(q *observer.Durations) error {
				if q.Count != before.Count+5 {
					return fmt.Errorf("count %d, want %d", q.Count, before.Count+5)
				}
				return nil
			})
			sum := time.Duration(got.SumUs-before.SumUs) * time.Microsecond
			if off := float64(sum-want) / float64(want); off < -0.05 || off > 0.05 {
				t.Errorf("queue_wait sums %v, the clients' schedule %v (%+.1f%%)", sum, want, 100*off)
			}
			checkWaitBuckets(t, before, got, seen.waits())
			body := harness.MetricsText(t, d)
			if n, ok := harness.MetricValue(t, body, "workerstats_queue_wait_seconds_count", map[string]string{"socket": p.Addr}); !ok || n != float64(got.Count) {
				t.Errorf("/metrics: workerstats_queue_wait_seconds_count{socket=%q} %v (found: %v), want %d", p.Addr, n, ok, got.Count)
			}
			t.Logf("5 clients at once, 300 ms each, one worker: waits %v (%v on average), the clients' schedule %v", sum, sum/5, want)
		})
	}
}

// waitQueueWait waits until the dump at addr times the socket name and ok
// holds for its queue_wait, and returns that.
func waitQueueWait(t *testing.T, addr, name, what string, ok func(*observer.Durations) error) *observer.Durations {
	t.Helper()
	var q *observer.Durations
	harness.WaitStats(t, addr, 30*time.Second, what, func(st *observer.Stats) error {
		for _, s := range st.Sockets {
			if s.Name == name && s.QueueWait != nil {
				q = s.QueueWait
				return ok(q)
			}
		}
		return fmt.Errorf("no queue_wait on socket %s in %+v", name, st.Sockets)
	})
	return q
}

// schedule is when each client's connection was made and its answer read.
type schedule struct {
	connected, answered []time.Time
}

// queueSchedule connects n clients to addr at once, then has each send GET
// path and read its answer.
func queueSchedule(t *testing.T, addr string, n int, path string) *schedule {
	t.Helper()
	s := &schedule{connected: make([]time.Time, n), answered: make([]time.Time, n)}
	conns := make([]net.Conn, n)
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		s.connected[i] = time.Now()
		conns[i] = c
		defer c.Close()
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, c := range conns {
		wg.Go(func() {
			c.SetDeadline(time.Now().Add(60 * time.Second))
			if _, errs[i] = fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: test\r\n\r\n", path); errs[i] == nil {
				_, errs[i] = harness.ReadHTTPResponse(bufio.NewReader(c))
			}
			s.answered[i] = time.Now()
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// waits are the waits the schedule implies for a single worker taking the
// connections one at a time: each, but the first answered, waited from its
// connect until the answer before its own.
func (s *schedule) waits() []time.Duration {
	order := make([]int, len(s.answered))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return s.answered[a].Compare(s.answered[b]) })
	waits := []time.Duration{0}
	for k := 1; k < len(order); k++ {
		waits = append(waits, max(0, s.answered[order[k-1]].Sub(s.connected[order[k]])))
	}
	return waits
}

// expectedWaits is the sum of waits().
func (s *schedule) expectedWaits() time.Duration {
	var sum time.Duration
	for _, w := range s.waits() {
		sum += w
	}
	return sum
}

// checkWaitBuckets checks that the waits added to the histogram from
// before to after are in the buckets of waits: each in its own, but for
// the short ones (up to 131 ms), which are anywhere up to 131 ms: the
// clients cannot see how long the worker took from its wake-up to its
// accept, up to 30 ms under emulation. The others, 300 ms apart, are
// each in its own bucket.
func checkWaitBuckets(t *testing.T, before, after *observer.Durations, waits []time.Duration) {
	t.Helper()
	if len(after.Counts) != len(after.BoundsUs)+1 {
		t.Fatalf("queue_wait has %d bounds and %d counts", len(after.BoundsUs), len(after.Counts))
	}
	const shortUs = 131072
	want := make([]uint64, len(after.Counts))
	var wantShort, gotShort uint64
	got := make([]uint64, len(after.Counts))
	for i := range after.Counts {
		got[i] = after.Counts[i] - before.Counts[i]
	}
	var near [][2]int
	for _, w := range waits {
		i, _ := slices.BinarySearch(after.BoundsUs, uint64(w.Microseconds()))
		if i < len(after.BoundsUs) && after.BoundsUs[i] <= shortUs {
			wantShort++
			continue
		}
		want[i]++
		if j := nearBound(after.BoundsUs, i, w); j != i {
			near = append(near, [2]int{i, j})
		}
	}
	// Within 2% of a bound, the kernel's wait may be on its other side:
	// the clients see a little more or less than it does. Such a wait
	// moves only once every wait has its bucket, and only from a bucket
	// the kernel has fewer in to one it has more in.
	for _, m := range near {
		if i, j := m[0], m[1]; got[i] < want[i] && got[j] > want[j] {
			want[i]--
			want[j]++
		}
	}
	for i := range after.Counts {
		if i < len(after.BoundsUs) && after.BoundsUs[i] <= shortUs {
			gotShort += got[i]
		} else if got[i] != want[i] {
			t.Errorf("bucket %d: %d waits, the schedule's %d (bounds %v µs, waits %v)", i, got[i], want[i], after.BoundsUs, waits)
		}
	}
	if gotShort != wantShort {
		t.Errorf("%d waits up to %d µs, the schedule's %d (waits %v)", gotShort, shortUs, wantShort, waits)
	}
}

// nearBound is the bucket beside bucket i that wait w is within 2% of the
// shared bound of, or i.
func nearBound(bounds []uint64, i int, w time.Duration) int {
	us := float64(w.Microseconds())
	if i > 0 && us <= float64(bounds[i-1])*1.02 {
		return i - 1
	}
	if i < len(bounds) && us >= float64(bounds[i])*0.98 {
		return i + 1
	}
	return i
}
