package harness

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
)

// A failed package's output is long (servers' and daemons' logs, then every
// test that ran after the failure), and CI shows only its tail. So Main ends
// a failed run with a recap: each wait that timed out, and the last lines
// of the daemon's log in each failed test.
var recap struct {
	sync.Mutex
	notes []string
}

// recapLines is how much of a failed test's daemon log the recap repeats.
const recapLines = 15

// noteFailure keeps msg, said of t, for the recap.
func noteFailure(t testing.TB, msg string) {
	recap.Lock()
	defer recap.Unlock()
	recap.notes = append(recap.notes, t.Name()+": "+msg)
}

// writeRecap writes the recap, if anything failed, to w.
func writeRecap(w io.Writer) {
	recap.Lock()
	defer recap.Unlock()
	if len(recap.notes) == 0 {
		return
	}
	fmt.Fprintln(w, "=== harness recap: what the failed tests waited for, and their daemons' last words")
	for _, n := range recap.notes {
		fmt.Fprintln(w, "    "+strings.ReplaceAll(n, "\n", "\n        "))
	}
}

// lastLines returns s's last n lines.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
