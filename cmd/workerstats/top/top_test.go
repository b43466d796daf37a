package top

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/charmbracelet/x/ansi"
)

// fixture reads one of uWSGI's own dumps from testdata.
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("fixture: %v", err)
	}
	return b
}

// parse parses a dump or fails t.
func parse(t *testing.T, b []byte) *Dump {
	t.Helper()
	d, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// render renders the frame of two samples a second apart at w by h.
func render(t *testing.T, prev, cur *Dump, w, h int) string {
	t.Helper()
	at := time.Unix(1_800_000_000, 0)
	f := NewFrame(Sample{Dump: prev, At: at}, Sample{Dump: cur, At: at.Add(time.Second)}, at.Add(time.Second))
	return View{Addr: "127.0.0.1:1717", Frame: &f, Width: w, Height: h}.Render()
}

// rowOf returns the screen's line that begins with slot's number, "" if none.
func rowOf(screen string, slot int) string {
	for _, l := range strings.Split(screen, "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[0] == fmt.Sprint(slot) {
			return l
		}
	}
	return ""
}

// TestUWSGIFixturesShowEveryWorker: uWSGI's own stats server's dumps show a
// row per worker with its pid and avg_rt; what uWSGI does not count (5xx,
// p99, rss without --memory-report) shows "-".
func TestUWSGIFixturesShowEveryWorker(t *testing.T) {
	d := parse(t, fixture(t, "uwsgi-2.0.21-http-socket-4-workers.json"))
	screen := render(t, nil, d, 120, 30)
	for slot, want := range map[int][]string{
		1: {"3636", "idle", "82µs"}, 2: {"3637", "29µs"}, 3: {"3638", "115µs"}, 4: {"3639", "12µs"},
	} {
		row := rowOf(screen, slot)
		for _, w := range want {
			if !strings.Contains(row, w) {
				t.Errorf("slot %d's row %q lacks %q", slot, row, w)
			}
		}
		if f := strings.Fields(row); len(f) < 8 || f[3] != "-" || f[5] != "-" || f[6] != "-" || f[7] != "-" {
			t.Errorf("slot %d's row %q: want req/s, p99, 5xx and rss shown as - (one dump, uWSGI counts none)", slot, row)
		}
	}
	for _, want := range []string{"version 2.0.21-debian", "master 3634", "127.0.0.1:9090 queue 0/100", "workers 4, 0 busy"} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q:\n%s", want, screen)
		}
	}
	d = parse(t, fixture(t, "uwsgi-2.0.21-uwsgi-socket-2x2-memory-report.json"))
	screen = render(t, d, d, 120, 30)
	if !strings.Contains(rowOf(screen, 1), "8040") || !strings.Contains(rowOf(screen, 2), "8041") || !strings.Contains(screen, "/srv/app/u3.sock queue 0/0") {
		t.Errorf("2x2 dump:\n%s", screen)
	}
	if f := strings.Fields(rowOf(screen, 1)); len(f) < 5 || f[3] != "0.0" || f[4] != "-" {
		t.Errorf("an idle worker seen twice: row %q, want 0.0 req/s and avg -", rowOf(screen, 1))
	}
}

// worker is a hand-made worker of our daemon's dump.
func worker(id, pid int, requests uint64, extra string) string {
	return fmt.Sprintf(`{"id":%d,"pid":%d,"status":"idle","requests":%d,"avg_rt":1500,"rss":%d,"cores":[{"in_request":0,"vars":[],"req_info":{}}]%s}`,
		id, pid, requests, 10<<20*id, extra)
}

// dump is a hand-made dump of our daemon with workers.
func dump(t *testing.T, sockets string, workers ...string) *Dump {
	t.Helper()
	return parse(t, []byte(fmt.Sprintf(`{"version":"workerstats 1","pid":100,"listen_queue":3,"listen_queue_errors":1,"sockets":[%s],"workers":[%s],"observer":{"mode":"ebpf"}}`,
		sockets, strings.Join(workers, ","))))
}

// TestRatesComeFromTwoDumps: requests per second are the requests a pid
// served between two dumps over the time between them; a worker replaced
// in between (a new pid) shows "-", not its whole count.
func TestRatesComeFromTwoDumps(t *testing.T) {
	prev := dump(t, "", worker(1, 11, 100, ""), worker(2, 12, 40, ""))
	cur := dump(t, "", worker(1, 11, 130, ""), worker(2, 22, 5, ""))
	at := time.Unix(1_800_000_000, 0)
	f := NewFrame(Sample{prev, at}, Sample{cur, at.Add(2 * time.Second)}, at)
	if r := f.Rows[0]; !r.HasRPS || r.RPS != 15 {
		t.Errorf("pid 11: %v req/s (known %v); want 15 (30 requests in 2 s)", r.RPS, r.HasRPS)
	}
	if r := f.Rows[1]; r.HasRPS {
		t.Errorf("pid 22, new in slot 2: %v req/s; want unknown", r.RPS)
	}
	screen := View{Addr: "x", Frame: &f, Width: 120, Height: 20}.Render()
	if !strings.Contains(rowOf(screen, 1), " 15.0 ") || !strings.Contains(screen, "15.0 req/s") {
		t.Errorf("screen:\n%s", screen)
	}
	if f := strings.Fields(rowOf(screen, 2)); len(f) < 4 || f[3] != "-" {
		t.Errorf("slot 2 row %q: want req/s -", rowOf(screen, 2))
	}
}

// TestHistogramQuantile: p99 is the upper bound of the bucket holding the
// 99th percentile, above the last bound when it is in the overflow.
func TestHistogramQuantile(t *testing.T) {
	for _, c := range []struct {
		counts     []uint64
		want       time.Duration
		over, isOK bool
	}{
		{[]uint64{100, 0, 0, 0}, time.Millisecond, false, true},
		{[]uint64{97, 1, 2, 0}, 100 * time.Millisecond, false, true},
		{[]uint64{98, 1, 1, 0}, 10 * time.Millisecond, false, true},
		{[]uint64{50, 49, 0, 1}, 10 * time.Millisecond, false, true},
		{[]uint64{50, 48, 0, 2}, time.Second / 10, true, true},
		{[]uint64{0, 0, 0, 0}, 0, false, false},
		{[]uint64{1, 2}, 0, false, false}, // malformed: counts must be one more than bounds
	} {
		h := &Histogram{BoundsUs: []uint64{1000, 10000, 100000}, Counts: c.counts}
		d, over, ok := h.Quantile(0.99)
		if d != c.want || over != c.over || ok != c.isOK {
			t.Errorf("counts %v: p99 %v over %v ok %v; want %v %v %v", c.counts, d, over, ok, c.want, c.over, c.isOK)
		}
	}
	var nilH *Histogram
	if _, ok := nilH.Avg(); ok {
		t.Error("a missing histogram has an average")
	}
	if avg, ok := (&Histogram{Count: 4, SumUs: 10000}).Avg(); !ok || avg != 2500*time.Microsecond {
		t.Errorf("avg %v %v; want 2.5ms", avg, ok)
	}
}

// TestBusyWorkerShowsItsRequest: a worker in a request shows the request's
// method and URI and how long it has run; p99, 5xx and rss come from our
// daemon's histogram, statuses and rss.
func TestBusyWorkerShowsItsRequest(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	busy := fmt.Sprintf(`{"id":2,"pid":12,"status":"busy","requests":9,"avg_rt":2000,"rss":52428800,
		"statuses":{"2xx":7,"3xx":0,"4xx":1,"5xx":3,"other":0,"unanswered":0},
		"request_durations":{"count":9,"sum_us":18000,"bounds_us":[1000,5000,250000],"counts":[1,7,1,0]},
		"cores":[{"in_request":0,"vars":[]},{"in_request":1,"vars":["REQUEST_METHOD=POST","PATH_INFO=/slow","REQUEST_URI=/slow?sleep=3000","HTTP_HOST=app"],"req_info":{"request_start":%d}}]}`,
		now.Unix()-4)
	pathOnly := `{"id":3,"pid":13,"status":"busy","cores":[{"in_request":1,"vars":["REQUEST_METHOD=GET","PATH_INFO=/p"],"req_info":{}}]}`
	d := dump(t, "", worker(1, 11, 5, ""), busy, pathOnly)
	f := NewFrame(Sample{}, Sample{Dump: d, At: now}, now)
	screen := View{Addr: "x", Frame: &f, Width: 140, Height: 20}.Render()
	row := rowOf(screen, 2)
	for _, want := range []string{"busy", "2.0ms", "250ms", " 3 ", "50.0M", " 4s ", "POST /slow?sleep=3000"} {
		if !strings.Contains(row, want) {
			t.Errorf("busy row %q lacks %q", row, want)
		}
	}
	if row := rowOf(screen, 3); !strings.Contains(row, "GET /p") || !strings.Contains(row, " - ") {
		t.Errorf("a request without REQUEST_URI or start: %q, want GET /p and running -", row)
	}
	if row := rowOf(screen, 1); strings.Contains(row, "GET") || !strings.Contains(row, "10.0M") {
		t.Errorf("idle row %q: want no request, rss 10.0M", row)
	}
	if !strings.Contains(screen, "workers 3, 2 busy") {
		t.Errorf("screen:\n%s", screen)
	}
}

// TestPoolShowsQueueWaitAndExits: the listen queue, a socket's queue wait
// when the daemon counts it, harakiris and the newest last exits.
func TestPoolShowsQueueWaitAndExits(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	sock := `{"name":"127.0.0.1:8000","queue":2,"max_queue":128,"queue_wait":{"count":4,"sum_us":8000,"bounds_us":[1000,10000],"counts":[1,3,0]}}`
	exit := func(pid int, ago int64, rest string) string {
		return fmt.Sprintf(`,"harakiri_count":1,"exits":{"killed_by_kernel":1,"exited":2},"last_exit":{"pid":%d,"at":%d,%s}`, pid, now.Unix()-ago, rest)
	}
	d := dump(t, sock,
		worker(1, 11, 5, exit(9, 5, `"status":"killed","signal":"SIGKILL","by":"oom killer","in_request":1,"request":"GET /big"`)),
		worker(2, 12, 5, exit(8, 65, `"status":"exited","code":0,"by":"itself","in_request":0`)))
	f := NewFrame(Sample{}, Sample{Dump: d, At: now}, now)
	screen := View{Addr: "x", Frame: &f, Width: 140, Height: 20}.Render()
	for _, want := range []string{
		"listen queue 3, errors 1", "127.0.0.1:8000 queue 2/128 wait avg 2.0ms p99 10.0ms", "harakiri 2",
		"exits: exited 4, killed_by_kernel 2",
		"last exits\n  slot 1 pid 9 killed by SIGKILL (oom killer) 5s ago in request GET /big\n  slot 2 pid 8 exited 0 (itself) 1m05s ago",
	} {
		if !strings.Contains(screen, want) {
			t.Errorf("screen lacks %q:\n%s", want, screen)
		}
	}
}

// manyWorkers is a dump of n workers.
func manyWorkers(t *testing.T, n int) *Dump {
	var ws []string
	for i := 1; i <= n; i++ {
		ws = append(ws, worker(i, 1000+i, uint64(i), ""))
	}
	return dump(t, "", ws...)
}

// TestViewFitsTheTerminal: no line is wider than the terminal and the
// screen is exactly as tall; rows that do not fit say how many more there
// are; a narrow terminal drops the least needed columns first.
func TestViewFitsTheTerminal(t *testing.T) {
	d := manyWorkers(t, 30)
	for _, size := range [][2]int{{160, 40}, {80, 24}, {60, 12}, {40, 8}} {
		w, h := size[0], size[1]
		screen := render(t, d, d, w, h)
		lines := strings.Split(screen, "\n")
		if len(lines) != h {
			t.Errorf("%dx%d: %d lines", w, h, len(lines))
		}
		for _, l := range lines {
			if ansi.StringWidth(l) > w {
				t.Errorf("%dx%d: line %q is %d wide", w, h, l, ansi.StringWidth(l))
			}
		}
		shown := 0
		for i := 1; i <= 30; i++ {
			if rowOf(screen, i) != "" {
				shown++
			}
		}
		if more := fmt.Sprintf("+%d more", 30-shown); h < 36 && (shown == 30 || !strings.Contains(screen, more)) || h >= 36 && shown != 30 {
			t.Errorf("%dx%d: %d of 30 rows shown, or no %q line:\n%s", w, h, shown, more, screen)
		}
		if !strings.HasPrefix(lines[h-1], "q quit · sort: w slot") {
			t.Errorf("%dx%d: last line %q, want the keys", w, h, lines[h-1])
		}
	}
	head := func(w int) string { return strings.Split(render(t, d, d, w, 40), "\n")[3] }
	if h := head(160); !strings.Contains(h, "P99") || !strings.Contains(h, "REQUEST") {
		t.Errorf("wide header %q", h)
	}
	if h := head(70); strings.Contains(h, "P99") || strings.Contains(h, "5XX") || !strings.Contains(h, "REQ/S") || !strings.Contains(h, "REQUEST") {
		t.Errorf("70-wide header %q: want p99 and 5xx left out, req/s and request kept", h)
	}
}

// TestSortKeys: each key sorts by its column, figures largest first, and
// pressing it again reverses the order; the footer says which is on.
func TestSortKeys(t *testing.T) {
	d := manyWorkers(t, 3)
	d.Workers[0].RSS, d.Workers[1].RSS, d.Workers[2].RSS = 30<<20, 10<<20, 20<<20
	order := func(o Order) string {
		f := NewFrame(Sample{}, Sample{Dump: d}, time.Time{})
		screen := View{Frame: &f, Order: o, Width: 120, Height: 20}.Render()
		var slots []string
		for _, l := range strings.Split(screen, "\n")[4:] {
			if f := strings.Fields(l); len(f) > 1 && strings.HasPrefix(f[1], "100") {
				slots = append(slots, f[0])
			}
		}
		return strings.Join(slots, " ") + " / " + strings.Split(screen, "(now ")[1]
	}
	var o Order
	for _, c := range []struct {
		key  rune
		want string
	}{
		{'m', "1 3 2 / rss ↓)"},
		{'m', "2 3 1 / rss ↑)"},
		{'p', "1 2 3 / pid ↑)"},
		{'p', "3 2 1 / pid ↓)"},
		{'w', "1 2 3 / slot ↑)"},
	} {
		var sorts bool
		if o, sorts = o.Press(c.key); !sorts {
			t.Fatalf("%c does not sort", c.key)
		}
		if got := order(o); got != c.want {
			t.Errorf("after %c: %q, want %q", c.key, got, c.want)
		}
	}
	if _, sorts := o.Press('x'); sorts {
		t.Error("x sorts")
	}
}

// TestErrorLine: a socket that cannot be read is said in one line, with
// what to check.
func TestErrorLine(t *testing.T) {
	err := fmt.Errorf("connect to stats socket 127.0.0.1:1717: %w", syscall.ECONNREFUSED)
	if got, want := ErrorLine("127.0.0.1:1717", err), "cannot read 127.0.0.1:1717: connection refused — is the daemon running?"; got != want {
		t.Errorf("%q, want %q", got, want)
	}
	if got := ErrorLine("/run/x.sock", fmt.Errorf("dial: %w", syscall.ENOENT)); got != "cannot read /run/x.sock: no such socket — is the daemon running?" {
		t.Errorf("missing socket: %q", got)
	}
	if _, err := Parse([]byte("HTTP/1.1 200 OK")); err == nil {
		t.Error("not JSON parsed as a dump")
	}
}
