package harness

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Poll calls f every 50 ms until it returns nil, and returns nil; once d has
// passed it returns f's last error instead.
func Poll(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitFor polls f until it returns nil, failing t if d passes first. A
// wait of a second or more is logged with its length, which says where a
// slow test (under emulation, say) spends its time.
func WaitFor(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	start := time.Now()
	if err := Poll(d, f); err != nil {
		msg := fmt.Sprintf("timed out after %v waiting for %s: %v", d, what, err)
		noteFailure(t, msg)
		t.Fatal(msg)
	}
	if took := time.Since(start); took >= time.Second {
		t.Logf("waited %.1f s for %s", took.Seconds(), what)
	}
}

// Parallel runs job(0) .. job(n-1) from conc goroutines, each taking the
// next index, and fails t with the first error (no new jobs start after it).
func Parallel(t testing.TB, n, conc int, job func(i int) error) {
	t.Helper()
	var (
		next   atomic.Int64
		failed atomic.Bool
		wg     sync.WaitGroup
		errs   = make(chan error, conc)
	)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				if err := job(int(i)); err != nil {
					failed.Store(true)
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// ProcState describes where pid is, for a wait on it that timed out: its
// state, the kernel function it sleeps in and the syscall it is in, as
// /proc shows them ("?" for what cannot be read).
func ProcState(pid int) string {
	read := func(name string) string {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	state := "?"
	if stat := read("stat"); stat != "?" {
		// The state follows the command's closing parenthesis.
		if i := strings.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
			state = stat[i+2 : i+3]
		}
	}
	return fmt.Sprintf("pid %d: state %s, wchan %s, syscall %s", pid, state, read("wchan"), read("syscall"))
}
