package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
)

// The tests in this file look at `workerstats top` as a person does: in a
// 160x40 terminal under tmux, reading the screen.

// topRow is one worker's row as the screen shows it.
type topRow struct {
	slot, pid int
	fields    []string // slot pid status req/s, then as wide as the terminal: avg p99 5xx rss [running request...]
}

// topRows reads the worker rows off a screen of top's, in screen order.
func topRows(screen string) []topRow {
	var rows []topRow
	inTable := false
	for _, l := range strings.Split(screen, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "SLOT" {
			inTable = true
			continue
		}
		if !inTable || len(f) < 4 {
			continue
		}
		slot, err1 := strconv.Atoi(f[0])
		pid, err2 := strconv.Atoi(f[1])
		if err1 == nil && err2 == nil {
			rows = append(rows, topRow{slot: slot, pid: pid, fields: f})
		}
	}
	return rows
}

// rowsOf checks the screen has a row for each of pids and no other, and
// returns them by pid.
func rowsOf(screen string, pids []int) (map[int]topRow, error) {
	rows := map[int]topRow{}
	var got []int
	for _, r := range topRows(screen) {
		rows[r.pid] = r
		got = append(got, r.pid)
	}
	slices.Sort(got)
	if !slices.Equal(got, pids) {
		return nil, fmt.Errorf("rows for pids %v, want %v", got, pids)
	}
	return rows, nil
}

// rates is the req/s column of every row, by pid, and their sum.
func rates(rows map[int]topRow) (map[int]string, float64) {
	m, sum := map[int]string{}, 0.0
	for pid, r := range rows {
		m[pid] = r.fields[3]
		if v, err := strconv.ParseFloat(r.fields[3], 64); err == nil {
			sum += v
		}
	}
	return m, sum
}

// workerPIDs returns the sorted worker pids of the stats at addr.
func workerPIDs(t *testing.T, addr string) []int {
	t.Helper()
	st, err := readStats(addr)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, w := range st.Workers {
		pids = append(pids, w.PID)
	}
	slices.Sort(pids)
	return pids
}

// steadyLoad sends GETs to the HTTP server at addr, at a rate that varies,
// until the test ends.
func steadyLoad(t *testing.T, addr string) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Duration(5+i%7*5) * time.Millisecond):
			}
			getOnce(addr, fmt.Sprintf("/%d", responseSize(i)))
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
}

// running is a RUNNING cell of a second or more: "3s", "1m05s".
var running = regexp.MustCompile(`^([1-9][0-9]*s|[0-9]+m[0-9]{2}s)$`)

// TestUWSGITopShowsWorkersLive: top on our daemon's socket, watching a
// real uWSGI with --requests, shows a row per worker with its pid,
// requests per second that move as traffic comes, and on the row of the
// worker serving a slow request that request and how long it has run; p
// sorts by pid (again: the other way) and q quits.
func TestUWSGITopShowsWorkersLive(t *testing.T) {
	testutil.RequireEBPF(t)
	requireTmux(t)
	p := startUWSGI(t, uwsgiOptions{processes: 3})
	d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--requests")
	pids := workerPIDs(t, p.stats)
	steadyLoad(t, p.addr)
	term := startTerminal(t, 160, 40, binPath+" top "+d.addr)

	var first map[int]string
	term.waitScreen(30*time.Second, "a row per worker, requests per second above 0", func(screen string) error {
		rows, err := rowsOf(screen, pids)
		if err != nil {
			return err
		}
		var sum float64
		if first, sum = rates(rows); sum <= 0 {
			return fmt.Errorf("req/s %v", first)
		}
		return nil
	})
	term.waitScreen(30*time.Second, "requests per second to move", func(screen string) error {
		rows, err := rowsOf(screen, pids)
		if err != nil {
			return err
		}
		if now, sum := rates(rows); sum <= 0 || fmt.Sprint(now) == fmt.Sprint(first) {
			return fmt.Errorf("req/s %v, as before", now)
		}
		return nil
	})

	slow := slowRequest(t, p, "/7?sleep=8000")
	screen := term.waitScreen(30*time.Second, fmt.Sprintf("pid %d's row to show GET /7?sleep=8000 running a second or more", slow), func(screen string) error {
		rows, err := rowsOf(screen, pids)
		if err != nil {
			return err
		}
		f := rows[slow].fields
		if len(f) < 11 || f[2] != "busy" || !running.MatchString(f[8]) || f[9] != "GET" || !strings.HasPrefix(f[10], "/7?sleep=8000") {
			return fmt.Errorf("pid %d's row is %q", slow, f)
		}
		return nil
	})
	t.Logf("what top showed, in a 160x40 terminal:\n%s", screen)

	checkSortByPID(t, term, pids)
	term.keys("q")
	if status := term.waitExit(10 * time.Second); status != 0 {
		t.Errorf("top exited %d on q, want 0", status)
	}
}

// slowRequest sends GET path (a query in testApp's terms, to which it adds
// tell=) to p on a connection left open, and returns the pid of the worker
// that took it.
func slowRequest(t *testing.T, p *uwsgiPool, path string) int {
	t.Helper()
	tell := filepath.Join(t.TempDir(), "pid")
	c, err := p.dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprintf(c, "GET %s&tell=%s HTTP/1.0\r\nHost: test\r\n\r\n", path, tell); err != nil {
		t.Fatal(err)
	}
	var pid int
	waitFor(t, 10*time.Second, "a worker to take the slow request", func() error {
		b, err := os.ReadFile(tell)
		if err == nil {
			pid, err = strconv.Atoi(string(b))
		}
		return err
	})
	return pid
}

// checkSortByPID presses p twice: the rows go by pid, smallest first, then
// largest first, and the footer says so.
func checkSortByPID(t *testing.T, term *terminal, pids []int) {
	t.Helper()
	desc := slices.Clone(pids)
	slices.Reverse(desc)
	for _, c := range []struct {
		want []int
		says string
	}{{pids, "(now pid ↑)"}, {desc, "(now pid ↓)"}} {
		term.keys("p")
		term.waitScreen(10*time.Second, "rows in pid order "+c.says, func(screen string) error {
			var order []int
			for _, r := range topRows(screen) {
				order = append(order, r.pid)
			}
			if !slices.Equal(order, c.want) || !strings.Contains(screen, c.says) {
				return fmt.Errorf("rows in order %v, want %v and %q", order, c.want, c.says)
			}
			return nil
		})
	}
}

// TestUWSGITopReadsUWSGIStats: top reads uWSGI's own stats server too: a
// row per worker, and "-" for what uWSGI does not count (5xx, p99); it
// redraws to fit when the terminal narrows, and Ctrl-C quits.
func TestUWSGITopReadsUWSGIStats(t *testing.T) {
	requireTmux(t)
	p := startUWSGI(t, uwsgiOptions{processes: 2})
	pids := workerPIDs(t, p.stats)
	steadyLoad(t, p.addr)
	term := startTerminal(t, 160, 40, binPath+" top "+p.stats)
	term.waitScreen(30*time.Second, "a row per uWSGI worker", func(screen string) error {
		rows, err := rowsOf(screen, pids)
		if err != nil {
			return err
		}
		_, sum := rates(rows)
		for _, r := range rows {
			if len(r.fields) < 8 || r.fields[5] != "-" || r.fields[6] != "-" {
				return fmt.Errorf("row %q: want p99 and 5xx -", r.fields)
			}
		}
		if sum <= 0 || !strings.Contains(screen, "workerstats top · "+p.stats) || !strings.Contains(screen, p.addr+" queue ") {
			return errors.New("no requests per second, title or socket line yet")
		}
		return nil
	})
	checkResize(t, term, pids)
	term.keys("C-c")
	if status := term.waitExit(10 * time.Second); status != 0 {
		t.Errorf("top exited %d on Ctrl-C, want 0", status)
	}
}

// checkResize narrows the terminal to 70 columns: top redraws to fit,
// leaving out the p99 and 5xx columns but keeping every worker's row.
func checkResize(t *testing.T, term *terminal, pids []int) {
	t.Helper()
	term.run("resize-window", "-t", "t", "-x", "70", "-y", "12")
	term.waitScreen(10*time.Second, "top to fit 70 columns", func(screen string) error {
		if _, err := rowsOf(screen, pids); err != nil {
			return err
		}
		for _, l := range strings.Split(screen, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == "SLOT" && (slices.Contains(f, "P99") || slices.Contains(f, "5XX") || !slices.Contains(f, "REQ/S")) {
				return fmt.Errorf("header %q: want p99 and 5xx left out, req/s kept", l)
			}
			if len([]rune(l)) > 70 {
				return fmt.Errorf("line %q is wider than 70", l)
			}
		}
		return nil
	})
}

// TestTopSaysWhenTheSocketCannotBeRead: with nothing at the address, top
// says so in one line, and what to check.
func TestTopSaysWhenTheSocketCannotBeRead(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	term := startTerminal(t, 120, 20, binPath+" top "+addr)
	want := "cannot read " + addr + ": connection refused — is the daemon running?"
	term.waitScreen(30*time.Second, "the error line", func(screen string) error {
		if !strings.Contains(screen, want) || !strings.Contains(screen, "q quit") {
			return fmt.Errorf("no %q", want)
		}
		return nil
	})
	term.keys("q")
	term.waitExit(10 * time.Second)
}

// TestTopWithoutATerminal: without a terminal top says in one line what to
// use instead; --once prints one frame of uWSGI's dump, a row per worker.
func TestTopWithoutATerminal(t *testing.T) {
	dump, err := os.ReadFile(sharedFixture(t, "uwsgi-2.0.21-http-socket-4-workers.json"))
	if err != nil {
		t.Fatal(err)
	}
	addr := fakeStatsServer(t, string(dump))
	stdout, stderr, err := run(t, "top", addr)
	if err == nil || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "workerstats read "+addr) {
		t.Errorf("top without a terminal: %v, stdout %q, stderr %q; want one line pointing to workerstats read", err, stdout, stderr)
	}
	stdout, stderr, err = run(t, "top", "--once", "--interval", "200ms", "--width", "100", addr)
	if err != nil {
		t.Fatalf("top --once: %v\n%s", err, stderr)
	}
	if _, err := rowsOf(stdout, []int{3636, 3637, 3638, 3639}); err != nil || !strings.Contains(stdout, "version 2.0.21-debian") {
		t.Errorf("top --once: %v\n%s", err, stdout)
	}
	for _, l := range strings.Split(stdout, "\n") {
		if len([]rune(l)) > 100 {
			t.Errorf("line wider than --width 100: %q", l)
		}
	}
}

// sharedFixture is the path of one of the project's shared fixtures:
// beside the repository (../shared, as CI lays it) or in /work/shared.
func sharedFixture(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range []string{"../../../shared/fixtures", "/work/shared/fixtures"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	t.Fatalf("fixture %s is in neither ../shared/fixtures (beside the repository) nor /work/shared/fixtures", name)
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }
