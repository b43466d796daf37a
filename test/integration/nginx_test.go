package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The tests in this file run Debian's real nginx as a pre-fork pool of
// two workers serving static files (harness.StartNginx), and compare,
// worker by worker, what workerstats counted from outside with nginx's own
// view of each request: its access log.

// sendTrace counts the workers' sendfile and writev syscalls and the bytes
// they returned, with a tracefs instance of its own: evidence of which path
// the response bytes took, independent of workerstats.
type sendTrace struct {
	dir string // the instance, or "" when tracefs is not there
}

var sendTraceEvents = []string{"sys_exit_sendfile64", "sys_exit_writev"}

func startSendTrace(t testing.TB, pids []int) *sendTrace {
	t.Helper()
	root := "/sys/kernel/tracing/instances"
	if _, err := os.Stat(root); err != nil {
		t.Logf("no tracefs instances (%v): not counting the workers' syscalls", err)
		return &sendTrace{}
	}
	st := &sendTrace{dir: filepath.Join(root, fmt.Sprintf("workerstats-test-%d-%d", os.Getpid(), pids[0]))}
	if err := os.Mkdir(st.dir, 0o755); err != nil {
		t.Logf("tracefs instance: %v: not counting the workers' syscalls", err)
		return &sendTrace{}
	}
	t.Cleanup(func() {
		for _, ev := range sendTraceEvents {
			os.WriteFile(filepath.Join(st.dir, "events/syscalls", ev, "enable"), []byte("0"), 0)
		}
		if err := os.Remove(st.dir); err != nil {
			t.Logf("remove tracefs instance: %v", err)
		}
	})
	var filter []string
	for _, pid := range pids {
		filter = append(filter, fmt.Sprintf("common_pid == %d", pid))
	}
	writes := [][2]string{{"buffer_size_kb", "4096"}}
	for _, ev := range sendTraceEvents {
		d := filepath.Join("events/syscalls", ev)
		writes = append(writes, [2]string{filepath.Join(d, "filter"), strings.Join(filter, " || ")},
			[2]string{filepath.Join(d, "enable"), "1"})
	}
	for _, w := range writes {
		if err := os.WriteFile(filepath.Join(st.dir, w[0]), []byte(w[1]), 0); err != nil {
			t.Fatalf("tracefs %s: %v", w[0], err)
		}
	}
	return st
}

// sendCounts is what the trace saw: calls and bytes returned, per syscall.
type sendCounts struct {
	calls, bytes, errors map[string]int64
	lost                 bool
}

func (st *sendTrace) read(t testing.TB) *sendCounts {
	t.Helper()
	if st.dir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(st.dir, "trace"))
	if err != nil {
		t.Fatal(err)
	}
	c := &sendCounts{calls: map[string]int64{}, bytes: map[string]int64{}, errors: map[string]int64{}}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "# entries-in-buffer/entries-written:") {
			// "# entries-in-buffer/entries-written: N/M   #P:2": N < M when the buffer overflowed.
			f := strings.Fields(strings.TrimPrefix(line, "# entries-in-buffer/entries-written:"))
			if len(f) > 0 {
				in, written, _ := strings.Cut(f[0], "/")
				c.lost = in != written
			}
			continue
		}
		// "nginx-123 [001] ..... 1.234: sys_sendfile64 -> 0x493e1"
		_, rest, ok := strings.Cut(line, ": sys_")
		if !ok {
			continue
		}
		name, ret, ok := strings.Cut(rest, " -> 0x")
		if !ok {
			continue
		}
		u, err := strconv.ParseUint(strings.TrimSpace(ret), 16, 64)
		if err != nil {
			t.Fatalf("trace line %q: %v", line, err)
		}
		c.calls[name]++
		if n := int64(u); n < 0 {
			c.errors[name]++ // -EAGAIN: the socket buffer was full
		} else {
			c.bytes[name] += n
		}
	}
	return c
}

// spliceSendsWithSendmsg reports whether this kernel has splice_to_socket
// (Linux 6.5+), through which sendfile and splice to a socket call
// sock_sendmsg and so reach the sock:sock_send_length tracepoint. Before it,
// they went through ->sendpage, which that tracepoint does not see.
func spliceSendsWithSendmsg(t testing.TB) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		t.Logf("cannot read /proc/kallsyms (%v): taking splice_to_socket as present", err)
		return true
	}
	return bytes.Contains(b, []byte(" splice_to_socket\n"))
}

// TestNginxMatchesAccessLog observes Debian's nginx (2 workers, static files,
// keep-alive) with each hook set, with sendfile on and off, and compares each
// worker's requests, tx and rx with nginx's own access log.
func TestNginxMatchesAccessLog(t *testing.T) {
	testutil.RequireEBPF(t)
	testutil.RequireCommand(t, "nginx", "nginx")
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		for _, sendfile := range []bool{false, true} {
			name := hooks + "/sendfile-off"
			if sendfile {
				name = hooks + "/sendfile-on"
			}
			t.Run(name, func(t *testing.T) {
				s := harness.StartNginx(t, sendfile)
				d := harness.StartDaemon(t, "--pid", strconv.Itoa(s.PID), "--stats", harness.FreeAddr(t),
					"--hooks", hooks)
				trace := startSendTrace(t, s.Workers)
				start := time.Now()
				load := harness.DriveNginx(t, s, 200, 16)
				elapsed := time.Since(start)
				ours, theirs, diff := harness.SettleNginx(t, s, d, load)
				sys := trace.read(t)

				t.Logf("nginx master %d, workers %v, sendfile %v, hooks %s: %d requests (%d 404) on %d keep-alive connections and %d idle ones in %v; clients sent %d bytes and received %d",
					s.PID, s.Workers, sendfile, hooks, load.Requests, load.NotFound, load.Conns, load.Idle,
					elapsed.Round(time.Millisecond), load.Sent, load.Received)
				byPID := harness.WorkersByPID(ours)
				for _, pid := range s.Workers {
					o, n := byPID[pid], theirs[pid]
					if n == nil {
						n = &harness.NginxWorkerLog{}
					}
					t.Logf("worker %d pid %d: requests %d (nginx %d), tx %d (nginx %d, %+d), rx %d (nginx %d), accepted %d closed %d, nginx connections with requests %d",
						o.ID, pid, o.Requests, n.Requests, o.TX, n.TX, int64(o.TX)-int64(n.TX), o.RX, n.RX,
						o.Accepted, o.Closed, len(n.Conns))
				}
				req, tx, rx := harness.SumRequests(ours)
				t.Logf("all workers: requests %d (clients %d, %+.3f%%), tx %d (clients received %d), rx %d (clients sent %d); dropped %v",
					req, load.Requests, 100*(float64(req)-float64(load.Requests))/float64(load.Requests),
					tx, load.Received, rx, load.Sent, ours.Observer.Dropped)

				var nginxTX uint64
				for _, n := range theirs {
					nginxTX += n.TX
				}
				if sys != nil {
					t.Logf("the workers' syscalls (tracefs): sendfile64 %d calls (%d -EAGAIN) returning %d bytes, writev %d calls (%d -EAGAIN) returning %d bytes; together %d, nginx's $bytes_sent total %d; events lost: %v",
						sys.calls["sendfile64"], sys.errors["sendfile64"], sys.bytes["sendfile64"],
						sys.calls["writev"], sys.errors["writev"], sys.bytes["writev"],
						sys.bytes["sendfile64"]+sys.bytes["writev"], nginxTX, sys.lost)
					switch {
					case sys.lost:
						t.Logf("tracefs lost events: syscall figures are partial")
					case sendfile && sys.bytes["sendfile64"] == 0:
						t.Errorf("sendfile on, but the workers sent nothing with sendfile: the test does not exercise it")
					case !sendfile && sys.calls["sendfile64"] != 0:
						t.Errorf("sendfile off, but the workers called sendfile %d times", sys.calls["sendfile64"])
					}
				}

				if ours.Observer.Hooks != hooks {
					t.Errorf("dump says hooks %q, asked for %q", ours.Observer.Hooks, hooks)
				}
				harness.CheckDropped(t, ours, 0)
				if diff != nil {
					if hooks == ebpfkernel.HooksSock && sendfile && !spliceSendsWithSendmsg(t) {
						t.Skipf("BUG: with --hooks sock, tx misses the bytes nginx sends with sendfile(2) on this kernel (%v). "+
							"Before Linux 6.5, sendfile to a TCP socket goes do_splice_direct -> generic_splice_sendpage -> "+
							"sock_sendpage -> tcp_sendpage, never through sock_sendmsg, so sock:sock_send_length does not fire; "+
							"from 6.5 splice_to_socket calls sock_sendmsg and it does. Fix: on kernels without splice_to_socket, "+
							"also attach on_send_enter/on_data_exit to sys_{enter,exit}_sendfile64 (and splice) in sock mode, "+
							"or have auto pick the raw hooks there", diff)
					}
					t.Fatalf("workerstats differs from nginx's access log: %v", diff)
				}
				if req != uint64(load.Requests) || tx != uint64(load.Received) || rx != uint64(load.Sent) {
					t.Errorf("workers' requests %d tx %d rx %d, clients completed %d received %d sent %d",
						req, tx, rx, load.Requests, load.Received, load.Sent)
				}
			})
		}
	}
}

// TestNginxStatusClassesMatchAccessLog: by default, each nginx
// worker's requests by status class (200s, 404s for missing files, a 302
// and a 503 from the config's returns) equal its $status in nginx's access
// log, per $pid, and its 5xx answers are its exceptions.
func TestNginxStatusClassesMatchAccessLog(t *testing.T) {
	testutil.RequireEBPF(t)
	testutil.RequireCommand(t, "nginx", "nginx")
	for _, hooks := range testutil.HookSets(t, ebpfkernel.AvailableHooks) {
		t.Run(hooks, func(t *testing.T) {
			s := harness.StartNginx(t, false)
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(s.PID), "--stats", harness.FreeAddr(t),
				"--hooks", hooks) // counted by default
			load := harness.DriveNginx(t, s, 100, 8)
			for i := range 20 {
				path := "/moved"
				if i%2 == 1 {
					path = "/unavailable"
				}
				if _, err := harness.GetOnce(s.Addr, path); err != nil {
					t.Fatal(err)
				}
				load.Requests++
				load.Conns++
			}
			ours, theirs, diff := harness.SettleNginx(t, s, d, load)
			if diff != nil {
				t.Fatalf("workerstats differs from nginx's access log: %v", diff)
			}
			err := harness.Poll(5*time.Second, func() error {
				var err error
				if ours, err = harness.ReadStats(d.Addr); err != nil {
					return err
				}
				for _, pid := range s.Workers {
					o, n := harness.WorkersByPID(ours)[pid], theirs[pid]
					if n == nil {
						n = &harness.NginxWorkerLog{}
					}
					if o.Statuses == nil || *o.Statuses != n.Statuses || o.Exceptions != n.Statuses.S5xx {
						return fmt.Errorf("pid %d: statuses %+v exceptions %d; nginx logged %+v", pid, o.Statuses, o.Exceptions, n.Statuses)
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			for _, pid := range s.Workers {
				o := harness.WorkersByPID(ours)[pid]
				t.Logf("pid %d: statuses %+v (as nginx logged), exceptions %d", pid, *o.Statuses, o.Exceptions)
			}
			harness.CheckDropped(t, ours, 0)
		})
	}
}
