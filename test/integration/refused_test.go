package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// TestListenQueueErrorsAreTheOverflows: a pool of one slow worker behind an
// accept queue of one, and 8 clients at once. The connection attempts the
// full queue refused are the pool's listen_queue_errors, on /metrics too:
// the host's ListenOverflows, which counts each refused SYN and refused
// handshake ACK once, moved by as much (nothing else on the host
// overflows meanwhile). Where the kernel side cannot count them (a hook
// set other than fentry on a kernel whose kfree_skb names no socket),
// they are the listener's sk_drops, which count a refused ACK twice: from
// the host's drops to twice them.
func TestListenQueueErrorsAreTheOverflows(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartGunicorn(t, 1, "--backlog", "1")
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--stats-http", "--hooks", hooks)
			waitQueueWait(t, d.Addr, p.Addr, "the pool's socket to be watched", func(*observer.Durations) error { return nil })
			before := tcpExt(t)
			harness.Parallel(t, 8, 8, func(i int) error {
				_, err := harness.GetOnce(p.Addr, "/sleep/50")
				return err
			})
			after := tcpExt(t)
			overflows := after["ListenOverflows"] - before["ListenOverflows"]
			lo, hi := overflows, overflows
			why := ebpfkernel.RefusalsCounted(hooks)
			if why != nil {
				lo, hi = after["ListenDrops"]-before["ListenDrops"], 2*(after["ListenDrops"]-before["ListenDrops"])
				t.Logf("listen_queue_errors are the listener's drops under %s here: %v", hooks, why)
			}
			st := harness.WaitStats(t, d.Addr, 5*time.Second, "listen_queue_errors to count the refusals", func(st *observer.Stats) error {
				if overflows == 0 || st.ListenQueueErrors < lo || st.ListenQueueErrors > hi {
					return fmt.Errorf("listen_queue_errors %d, want from %d to %d (the host's ListenOverflows %+d)", st.ListenQueueErrors, lo, hi, overflows)
				}
				return nil
			})
			body := harness.MetricsText(t, d)
			if n, ok := harness.MetricValue(t, body, "workerstats_listen_queue_errors_total", nil); !ok || n != float64(st.ListenQueueErrors) {
				t.Errorf("/metrics: workerstats_listen_queue_errors_total %v (found: %v), want %d", n, ok, st.ListenQueueErrors)
			}
			t.Logf("8 clients at once on an accept queue of 1: listen_queue_errors %d, the host's ListenOverflows %+d", st.ListenQueueErrors, overflows)
		})
	}
}

// TestListenQueueErrorsZeroUnderClosingLoad: requests one connection each,
// one after another, on a pool whose accept queue never fills. The
// listener drops the stray segments of the connections already gone (its
// sk_drops grows, here about one a request), but refused nothing, and
// listen_queue_errors stays at the host's ListenOverflows delta: 0.
func TestListenQueueErrorsZeroUnderClosingLoad(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			if why := ebpfkernel.RefusalsCounted(hooks); why != nil {
				t.Skipf("under %s this kernel cannot tell refusals from stray segments: %v", hooks, why)
			}
			p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2})
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			waitQueueWait(t, d.Addr, p.Addr, "the pool's socket to be watched", func(*observer.Durations) error { return nil })
			before, dropsBefore := tcpExt(t), listenerDrops(t, p.Addr)
			n := testutil.Scale(400)
			for range n {
				if _, err := harness.GetOnce(p.Addr, "/"); err != nil {
					t.Fatal(err)
				}
			}
			overflows := tcpExt(t)["ListenOverflows"] - before["ListenOverflows"]
			drops := listenerDrops(t, p.Addr) - dropsBefore
			st := harness.WaitStats(t, d.Addr, 5*time.Second, "the requests to be counted", func(st *observer.Stats) error {
				if got, _, _ := harness.SumRequests(st); got < uint64(n) {
					return fmt.Errorf("%d requests, want %d", got, n)
				}
				return nil
			})
			if st.ListenQueueErrors != overflows {
				t.Errorf("listen_queue_errors %d after %d requests that closed their connections, the host's ListenOverflows %+d (the listener dropped %d packets)", st.ListenQueueErrors, n, overflows, drops)
			}
			t.Logf("%d requests, a connection each: listen_queue_errors %d, ListenOverflows %+d, the listener's drops %+d", n, st.ListenQueueErrors, overflows, drops)
		})
	}
}

// tcpExt reads /proc/net/netstat's TcpExt counters.
func tcpExt(t *testing.T) map[string]uint64 {
	t.Helper()
	f, err := os.Open("/proc/net/netstat")
	if err != nil {
		testutil.SkipOrFail(t, "no /proc/net/netstat: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		names := strings.Fields(sc.Text())
		if !sc.Scan() {
			break
		}
		values := strings.Fields(sc.Text())
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) {
			continue
		}
		out := map[string]uint64{}
		for i, n := range names[1:] {
			v, err := strconv.ParseUint(values[i+1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			out[n] = v
		}
		return out
	}
	t.Fatal("no TcpExt in /proc/net/netstat")
	return nil
}

var skmemDrops = regexp.MustCompile(`skmem:\(.*\bd(\d+)\)`)

// listenerDrops is the sk_drops of the TCP listener at addr, as ss shows it.
func listenerDrops(t *testing.T, addr string) uint64 {
	t.Helper()
	ss := testutil.RequireCommand(t, "ss", "iproute2")
	_, port, _ := strings.Cut(addr[strings.LastIndex(addr, ":"):], ":")
	out, err := exec.Command(ss, "-Htlnm", "sport = :"+port).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	m := skmemDrops.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no drops in ss's %q", out)
	}
	n, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return n
}
