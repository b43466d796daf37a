package userspace

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
	"github.com/workerstats/workerstats/test/harness"
)

// The tests in this file look at `workerstats top` as a person does: in a
// terminal under tmux (harness.Terminal), reading the screen.

// rates is the req/s column of every row, by pid, and their sum.
func rates(rows map[int]harness.TopRow) (map[int]string, float64) {
	m, sum := map[int]string{}, 0.0
	for pid, r := range rows {
		m[pid] = r.Fields[3]
		if v, err := strconv.ParseFloat(r.Fields[3], 64); err == nil {
			sum += v
		}
	}
	return m, sum
}

// workerPIDs returns the sorted worker pids of the stats at addr.
func workerPIDs(t *testing.T, addr string) []int {
	t.Helper()
	st, err := harness.ReadStats(addr)
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
			harness.GetOnce(addr, fmt.Sprintf("/%d", harness.ResponseSize(i)))
		}
	}()
	t.Cleanup(func() { close(stop); wg.Wait() })
}

// running is a RUNNING cell of a second or more: "3s", "1m05s".
var running = regexp.MustCompile(`^([1-9][0-9]*s|[0-9]+m[0-9]{2}s)$`)

// TestUWSGITopShowsWorkersLive: top on our daemon's socket, watching a
// real uWSGI (request detail on, by default), shows a row per worker with its pid,
// requests per second that move as traffic comes, and on the row of the
// worker serving a slow request that request and how long it has run; p
// sorts by pid (again: the other way) and q quits.
func TestUWSGITopShowsWorkersLive(t *testing.T) {
	testutil.RequireEBPF(t)
	harness.RequireTmux(t)
	p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 3})
	d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t))
	pids := workerPIDs(t, p.Stats)
	steadyLoad(t, p.Addr)
	term := harness.StartTerminal(t, 160, 40, harness.Binary()+" top "+d.Addr)

	var first map[int]string
	term.WaitScreen(30*time.Second, "a row per worker, requests per second above 0", func(screen string) error {
		rows, err := harness.TopRowsOf(screen, pids)
		if err != nil {
			return err
		}
		var sum float64
		if first, sum = rates(rows); sum <= 0 {
			return fmt.Errorf("req/s %v", first)
		}
		return nil
	})
	term.WaitScreen(30*time.Second, "requests per second to move", func(screen string) error {
		rows, err := harness.TopRowsOf(screen, pids)
		if err != nil {
			return err
		}
		if now, sum := rates(rows); sum <= 0 || fmt.Sprint(now) == fmt.Sprint(first) {
			return fmt.Errorf("req/s %v, as before", now)
		}
		return nil
	})

	slow := slowRequest(t, p, "/7?sleep=8000")
	screen := term.WaitScreen(30*time.Second, fmt.Sprintf("pid %d's row to show GET /7?sleep=8000 running a second or more", slow), func(screen string) error {
		rows, err := harness.TopRowsOf(screen, pids)
		if err != nil {
			return err
		}
		f := rows[slow].Fields
		if len(f) < 11 || f[2] != "busy" || !running.MatchString(f[8]) || f[9] != "GET" || !strings.HasPrefix(f[10], "/7?sleep=8000") {
			return fmt.Errorf("pid %d's row is %q", slow, f)
		}
		return nil
	})
	t.Logf("what top showed, in a 160x40 terminal:\n%s", screen)

	checkSortByPID(t, term, pids)
	term.Keys("q")
	if status := term.WaitExit(10 * time.Second); status != 0 {
		t.Errorf("top exited %d on q, want 0", status)
	}
}

// slowRequest sends GET path (a query in the uWSGI app's terms, to which
// it adds tell=) to p on a connection left open, and returns the pid of
// the worker that took it.
func slowRequest(t *testing.T, p *harness.UWSGIPool, path string) int {
	t.Helper()
	tell := filepath.Join(t.TempDir(), "pid")
	c, err := p.Dial()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprintf(c, "GET %s&tell=%s HTTP/1.0\r\nHost: test\r\n\r\n", path, tell); err != nil {
		t.Fatal(err)
	}
	var pid int
	harness.WaitFor(t, 10*time.Second, "a worker to take the slow request", func() error {
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
func checkSortByPID(t *testing.T, term *harness.Terminal, pids []int) {
	t.Helper()
	desc := slices.Clone(pids)
	slices.Reverse(desc)
	for _, c := range []struct {
		want []int
		says string
	}{{pids, "(now pid ↑)"}, {desc, "(now pid ↓)"}} {
		term.Keys("p")
		term.WaitScreen(10*time.Second, "rows in pid order "+c.says, func(screen string) error {
			var order []int
			for _, r := range harness.TopRows(screen) {
				order = append(order, r.PID)
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
	testutil.RequireRoot(t, "run uWSGI and top in a terminal, as the black-box tests do")
	harness.RequireTmux(t)
	p := harness.StartUWSGI(t, harness.UWSGIOptions{Processes: 2})
	pids := workerPIDs(t, p.Stats)
	steadyLoad(t, p.Addr)
	term := harness.StartTerminal(t, 160, 40, harness.Binary()+" top "+p.Stats)
	term.WaitScreen(30*time.Second, "a row per uWSGI worker", func(screen string) error {
		rows, err := harness.TopRowsOf(screen, pids)
		if err != nil {
			return err
		}
		_, sum := rates(rows)
		for _, r := range rows {
			if len(r.Fields) < 8 || r.Fields[5] != "-" || r.Fields[6] != "-" {
				return fmt.Errorf("row %q: want p99 and 5xx -", r.Fields)
			}
		}
		if sum <= 0 || !strings.Contains(screen, "workerstats top · "+p.Stats) || !strings.Contains(screen, p.Addr+" queue ") {
			return errors.New("no requests per second, title or socket line yet")
		}
		return nil
	})
	checkResize(t, term, pids)
	term.Keys("C-c")
	if status := term.WaitExit(10 * time.Second); status != 0 {
		t.Errorf("top exited %d on Ctrl-C, want 0", status)
	}
}

// checkResize narrows the terminal to 70 columns: top redraws to fit,
// leaving out the p99 and 5xx columns but keeping every worker's row.
func checkResize(t *testing.T, term *harness.Terminal, pids []int) {
	t.Helper()
	term.Run("resize-window", "-t", "t", "-x", "70", "-y", "12")
	term.WaitScreen(10*time.Second, "top to fit 70 columns", func(screen string) error {
		if _, err := harness.TopRowsOf(screen, pids); err != nil {
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
	testutil.RequireRoot(t, "run top in a terminal, as the black-box tests do")
	addr := harness.FreeAddr(t)
	term := harness.StartTerminal(t, 120, 20, harness.Binary()+" top "+addr)
	want := "cannot read " + addr + ": connection refused — is the daemon running?"
	term.WaitScreen(30*time.Second, "the error line", func(screen string) error {
		if !strings.Contains(screen, want) || !strings.Contains(screen, "q quit") {
			return fmt.Errorf("no %q", want)
		}
		return nil
	})
	term.Keys("q")
	term.WaitExit(10 * time.Second)
}
