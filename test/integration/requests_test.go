package integration

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// TestGunicornShowsWhatWorkersServe: by default, a worker in a slow
// request shows it as uWSGI shows a core's: busy, in_request 1, the
// request's vars (method, URI, path, query, protocol, host; the cookie
// left out) and when it started; once answered, the worker is idle again.
// Gunicorn itself cannot tell what a worker is doing.
func TestGunicornShowsWhatWorkersServe(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartGunicorn(t, 2)
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			c, err := net.Dial("tcp", p.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sent := time.Now()
			if _, err := fmt.Fprintf(c, "GET /sleep/3000?who=test HTTP/1.1\r\nHost: app.test\r\nCookie: s=secret\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			want := []string{"REQUEST_METHOD=GET", "REQUEST_URI=/sleep/3000?who=test", "PATH_INFO=/sleep/3000",
				"QUERY_STRING=who=test", "SERVER_PROTOCOL=HTTP/1.1", "HTTP_HOST=app.test"}
			var busy observer.Worker
			// The kernel's counters say busy at the request's first byte;
			// its head is in the kernel's table once the worker has read
			// it (later under emulation): wait for both.
			harness.WaitStats(t, d.Addr, 2500*time.Millisecond, "a worker to show the request it serves", func(st *observer.Stats) error {
				for _, w := range st.Workers {
					if w.Status == "busy" && len(w.Cores) == 1 && w.Cores[0].InRequest == 1 && w.Cores[0].ReqInfo["request_start"] != nil {
						busy = w
						return nil
					}
				}
				return fmt.Errorf("workers %+v", st.Workers)
			})
			core := busy.Cores[0]
			for _, v := range want {
				if !slices.Contains(core.Vars, v) {
					t.Errorf("vars %q lack %q", core.Vars, v)
				}
			}
			for _, v := range core.Vars {
				if len(v) >= 12 && v[:12] == "HTTP_COOKIE=" {
					t.Errorf("the cookie is shown: %q", v)
				}
			}
			start, _ := core.ReqInfo["request_start"].(float64)
			if at := time.Unix(int64(start), 0); at.Before(sent.Add(-2*time.Second)) || at.After(sent.Add(2*time.Second)) {
				t.Errorf("request_start %v, the request was sent at %v", core.ReqInfo["request_start"], sent.Unix())
			}
			r, err := harness.ReadHTTPResponse(bufio.NewReader(c))
			if err != nil || r.Int("x-worker") != busy.PID {
				t.Fatalf("response %+v, %v; want one from the busy worker %d", r, err, busy.PID)
			}
			harness.WaitStats(t, d.Addr, 10*time.Second, "the worker to be idle once answered", func(st *observer.Stats) error {
				for _, w := range st.Workers {
					if w.PID == busy.PID && (w.Status != "idle" || w.Cores[0].InRequest != 0 || len(w.Cores[0].Vars) != 0) {
						return fmt.Errorf("worker %+v", w)
					}
				}
				return nil
			})
			t.Logf("worker %d (hooks %s) showed %q, started %v", busy.PID, hooks, core.Vars, core.ReqInfo["request_start"])
		})
	}
}

// TestGunicornRequestsByStatusAndDuration: by default, each worker
// counts its answers by status class, as the clients received them from
// it, and a 5xx answer is an exception; requests of known durations land
// in the right buckets of the duration histogram, in the dump and in
// /metrics: each between the bucket of the time the app slept and that of
// the time its client waited.
func TestGunicornRequestsByStatusAndDuration(t *testing.T) {
	testutil.RequireEBPF(t)
	// By path: the statuses the clients will get, and slow requests.
	paths := map[string]int{"/status/200": 12, "/status/302": 4, "/status/404": 6, "/status/503": 3}
	slow := map[int]int{150: 3, 700: 2, 1500: 1} // ms: requests
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartGunicorn(t, 2)
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t),
				"--hooks", hooks, "--stats-http") // counted by default
			var jobs []string
			var slept []time.Duration // the least each job takes
			for path, n := range paths {
				for range n {
					jobs, slept = append(jobs, path), append(slept, 0)
				}
			}
			for ms, n := range slow {
				for range n {
					jobs, slept = append(jobs, fmt.Sprintf("/sleep/%d", ms)), append(slept, time.Duration(ms)*time.Millisecond)
				}
			}
			got := map[int]*observer.Statuses{} // what the clients got, by pid
			waited := make([]time.Duration, len(jobs))
			var mu sync.Mutex
			harness.Parallel(t, len(jobs), 4, func(i int) error {
				start := time.Now()
				r, err := harness.GetOnce(p.Addr, jobs[i])
				if err != nil {
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				waited[i] = time.Since(start)
				if got[r.Int("x-worker")] == nil {
					got[r.Int("x-worker")] = &observer.Statuses{}
				}
				harness.CountStatus(got[r.Int("x-worker")], r.Status)
				return nil
			})
			var st *observer.Stats
			harness.WaitStats(t, d.Addr, 10*time.Second, "the workers' statuses to be what the clients got", func(s *observer.Stats) error {
				st = s
				for _, w := range s.Workers {
					want := got[w.PID]
					if want == nil {
						want = &observer.Statuses{}
					}
					if w.Statuses == nil || *w.Statuses != *want || w.Exceptions != want.S5xx {
						return fmt.Errorf("pid %d: statuses %+v exceptions %d; clients got %+v from it", w.PID, w.Statuses, w.Exceptions, *want)
					}
				}
				return nil
			})
			checkDurations(t, st, slept, waited)
			checkDurationMetrics(t, d, len(jobs))
			for _, w := range st.Workers {
				t.Logf("pid %d: statuses %+v exceptions %d; durations %+v", w.PID, *w.Statuses, w.Exceptions, *w.Durations)
			}
		})
	}
}

// checkDurations fails t unless the pool's histogram holds every request,
// each in a bucket no lower than that of slept[i], what the app took at
// least, and no higher than that of waited[i], what its client waited:
// cumulatively, at each bound, no fewer requests than the clients waited
// for at most that long, and no more than slept at most that long.
func checkDurations(t *testing.T, st *observer.Stats, slept, waited []time.Duration) {
	t.Helper()
	var counts, bounds []uint64
	var total uint64
	for _, w := range st.Workers {
		d := w.Durations
		if counts == nil {
			counts, bounds = make([]uint64, len(d.Counts)), d.BoundsUs
		}
		for i, c := range d.Counts {
			counts[i] += c
		}
		total += d.Count
	}
	if total != uint64(len(slept)) {
		t.Errorf("durations: %d requests, want %d", total, len(slept))
	}
	var cum uint64
	for i, b := range bounds {
		cum += counts[i]
		bound := time.Duration(b) * time.Microsecond
		least, most := 0, 0
		for j := range slept {
			if waited[j] <= bound {
				least++
			}
			if slept[j] <= bound {
				most++
			}
		}
		if cum < uint64(least) || cum > uint64(most) {
			t.Errorf("durations by bucket (bounds %v µs) %v: %d at most %v, want %d to %d", bounds, counts, cum, bound, least, most)
		}
	}
}

// checkDurationMetrics fails t unless /metrics has the pool's histogram of
// n requests and its requests by status class.
func checkDurationMetrics(t *testing.T, d *harness.Daemon, n int) {
	t.Helper()
	body := harness.MetricsText(t, d)
	count, ok := harness.MetricValue(t, body, "workerstats_request_duration_seconds_count", nil)
	_, byClass := harness.MetricValue(t, body, "workerstats_requests_total", map[string]string{"class": "4xx"})
	if !ok || count != float64(n) || !byClass {
		t.Errorf("/metrics: request_duration_seconds_count %v (found: %v), want %d, and requests by class (found: %v):\n%s", count, ok, n, byClass, body)
	}
}

// TestUWSGIShowsWhatWorkersServe: by default, during a slow request
// the busy worker's core shows the vars uWSGI's own stats show for it, in
// uWSGI's order, and the same request_start. Over http-socket uWSGI adds
// vars that are not in the request's bytes (SCRIPT_NAME, SERVER_NAME,
// SERVER_PORT, REMOTE_ADDR); over the uwsgi protocol the vars are the
// packet's, every one. Either way the cookie is never shown.
func TestUWSGIShowsWhatWorkersServe(t *testing.T) {
	notInBytes := map[string]bool{"SCRIPT_NAME": true, "SERVER_NAME": true, "SERVER_PORT": true, "REMOTE_ADDR": true, "REMOTE_PORT": true}
	eachSocketAndHooks(t, func(t *testing.T, unix bool, hooks string) {
		p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2, Unix: unix})
		d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
		req := harness.UWSGIRequest(7, "sleep=3000&who=test")
		if !unix {
			req = []byte("GET /7?sleep=3000&who=test HTTP/1.1\r\nHost: app.test\r\nUser-Agent: workerstats-test\r\nCookie: s=secret\r\n\r\n")
		}
		c, err := p.Dial()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		theirs := busyCore(t, p.Stats, "uWSGI")
		ours := busyCore(t, d.Addr, "workerstats")
		var want []string
		for _, v := range theirs.Vars {
			key, _, _ := strings.Cut(v, "=")
			if v != "" && (unix || !notInBytes[key]) && key != "HTTP_COOKIE" {
				want = append(want, v)
			}
		}
		if !slices.Equal(ours.Vars, want) {
			t.Errorf("vars\n ours  %q\n want  %q\n(uWSGI's %q)", ours.Vars, want, theirs.Vars)
		}
		if o, u := ours.ReqInfo["request_start"], theirs.ReqInfo["request_start"]; o == nil || u == nil || math.Abs(o.(float64)-u.(float64)) > 1 {
			t.Errorf("request_start %v, uWSGI's %v", o, u)
		}
		t.Logf("vars %q (uWSGI's %q), request_start %v (uWSGI's %v)", ours.Vars, theirs.Vars, ours.ReqInfo["request_start"], theirs.ReqInfo["request_start"])
	})
}

// busyCore waits until the stats at addr show a core in a request with
// its vars down to HTTP_HOST (uWSGI shows a core in a request while it is
// still parsing it), and returns it.
func busyCore(t *testing.T, addr, who string) observer.Core {
	t.Helper()
	var core observer.Core
	harness.WaitStats(t, addr, 2500*time.Millisecond, who+" to show a core in a request", func(st *observer.Stats) error {
		for _, w := range st.Workers {
			for _, c := range w.Cores {
				if c.InRequest == 1 && slices.ContainsFunc(c.Vars, func(v string) bool { return strings.HasPrefix(v, "HTTP_HOST=") }) {
					core = c
					return nil
				}
			}
		}
		return fmt.Errorf("no core in a request")
	})
	return core
}

// TestRequestVarsLeaveOutQueries: --request-vars no-query shows a busy
// worker's request without its query string anywhere; none shows no vars,
// only that the worker is in a request and since when; --requests=false
// keeps no head and counts no status, and shows only that it is in a
// request.
func TestRequestVarsLeaveOutQueries(t *testing.T) {
	testutil.RequireEBPF(t)
	hooks := testutil.HookSets(t, ebpfkernel.AvailableHooks)[0]
	for _, policy := range []string{"no-query", "none", "off"} {
		t.Run(policy, func(t *testing.T) {
			p := harness.StartGunicorn(t, 1)
			args := []string{"--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks, "--request-vars", policy}
			if policy == "off" {
				args = append(args[:len(args)-2], "--requests=false")
			}
			d := harness.StartDaemon(t, args...)
			c, err := net.Dial("tcp", p.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// The request outlasts the wait by far (emulated kernels are
			// slow); the test ends as soon as the dump shows it.
			if _, err := fmt.Fprintf(c, "GET /sleep/20000?token=secret HTTP/1.1\r\nHost: app.test\r\nReferer: http://app.test/?token=secret\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			var core observer.Core
			// Busy comes from the counters, the head from the kernel's
			// table once the request's first bytes are read: wait for both.
			harness.WaitStats(t, d.Addr, 15*time.Second, "the worker to be in the request, its head read", func(st *observer.Stats) error {
				for _, w := range st.Workers {
					if w.Status == "busy" && w.Cores[0].InRequest == 1 && (policy == "off" || w.Cores[0].ReqInfo["request_start"] != nil) {
						core = w.Cores[0]
						return nil
					}
				}
				return fmt.Errorf("workers %+v", st.Workers)
			})
			if policy == "off" {
				if len(core.Vars) != 0 || core.ReqInfo["request_start"] != nil {
					t.Errorf("--requests=false: core %+v, want no vars, no request_start", core)
				}
				st, err := harness.ReadStats(d.Addr)
				if err != nil {
					t.Fatal(err)
				}
				for _, w := range st.Workers {
					if w.Statuses != nil || w.Durations != nil {
						t.Errorf("--requests=false: worker %d shows statuses %+v, durations %+v; want neither", w.ID, w.Statuses, w.Durations)
					}
				}
				return
			}
			if core.ReqInfo["request_start"] == nil {
				t.Errorf("no request_start: %+v", core)
			}
			want := []string{"REQUEST_METHOD=GET", "PATH_INFO=/sleep/20000", "REQUEST_URI=/sleep/20000", "SERVER_PROTOCOL=HTTP/1.1",
				"HTTP_HOST=app.test", "HTTP_REFERER=http://app.test/"}
			if policy == "none" {
				want = []string{}
			}
			if !slices.Equal(core.Vars, want) {
				t.Errorf("vars %q, want %q", core.Vars, want)
			}
		})
	}
}

// TestUWSGIThreadsShowEachRequest: a worker of 4 threads in 3 slow
// requests at once shows 3 cores in a request, one per request with its
// own vars, as uWSGI's own stats show 3 of its 4 cores in one.
func TestUWSGIThreadsShowEachRequest(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 1, Threads: 4})
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t), "--hooks", hooks)
			var want []string
			for i := range 3 {
				c, err := p.Dial()
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				uri := fmt.Sprintf("REQUEST_URI=/%d?sleep=3000", i)
				want = append(want, uri)
				if _, err := fmt.Fprintf(c, "GET /%d?sleep=3000 HTTP/1.0\r\nHost: test\r\n\r\n", i); err != nil {
					t.Fatal(err)
				}
			}
			inRequest := func(addr, who string) []string {
				var uris []string
				harness.WaitStats(t, addr, 2500*time.Millisecond, who+" to show 3 cores in a request", func(st *observer.Stats) error {
					uris = uris[:0]
					for _, c := range st.Workers[0].Cores {
						if c.InRequest == 1 {
							for _, v := range c.Vars {
								if strings.HasPrefix(v, "REQUEST_URI=") {
									uris = append(uris, v)
								}
							}
						}
					}
					if len(uris) != 3 {
						return fmt.Errorf("cores %+v", st.Workers[0].Cores)
					}
					return nil
				})
				slices.Sort(uris)
				return uris
			}
			if theirs, ours := inRequest(p.Stats, "uWSGI"), inRequest(d.Addr, "workerstats"); !slices.Equal(ours, want) || !slices.Equal(theirs, want) {
				t.Errorf("cores in a request: ours %q, uWSGI's %q; want %q", ours, theirs, want)
			}
		})
	}
}
