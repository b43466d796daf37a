package main

import (
	"bufio"
	"fmt"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
)

// TestGunicornShowsWhatWorkersServe: with --requests, a worker in a slow
// request shows it as uWSGI shows a core's: busy, in_request 1, the
// request's vars (method, URI, path, query, protocol, host; the cookie
// left out) and when it started; once answered, the worker is idle again.
// Gunicorn itself cannot tell what a worker is doing.
func TestGunicornShowsWhatWorkersServe(t *testing.T) {
	testutil.RequireEBPF(t)
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			p := startGunicorn(t, 2)
			d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--hooks", hooks, "--requests")
			c, err := net.Dial("tcp", p.addr)
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
			waitStats(t, d.addr, 2500*time.Millisecond, "a worker to show the request it serves", func(st *observer.Stats) error {
				for _, w := range st.Workers {
					if w.Status == "busy" && len(w.Cores) == 1 && w.Cores[0].InRequest == 1 {
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
			r, err := readHTTPResponse(bufio.NewReader(c))
			if err != nil || r.int("x-worker") != busy.PID {
				t.Fatalf("response %+v, %v; want one from the busy worker %d", r, err, busy.PID)
			}
			waitStats(t, d.addr, 10*time.Second, "the worker to be idle once answered", func(st *observer.Stats) error {
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
