package harness

import (
	"bytes"
	"strings"
	"testing"
)

// TestRecapRepeatsWhatFailed: a failed package's output ends with what each
// failed wait was waiting for and the last lines of its daemon's log, so
// the tail CI shows says why; a package with no failure adds nothing.
func TestRecapRepeatsWhatFailed(t *testing.T) {
	recap.Lock()
	saved := recap.notes
	recap.notes = nil
	recap.Unlock()
	t.Cleanup(func() {
		recap.Lock()
		recap.notes = saved
		recap.Unlock()
	})

	var empty bytes.Buffer
	writeRecap(&empty)
	if empty.Len() != 0 {
		t.Errorf("nothing failed, yet the recap says %q", empty.String())
	}

	var log strings.Builder
	for i := range 40 {
		log.WriteString("line " + string(rune('a'+i%26)) + "\n")
	}
	noteFailure(t, "timed out after 20s waiting for an empty pool: pid 4000, 3 workers")
	noteFailure(t, "the daemon's log ends:\n"+lastLines(log.String(), 3))
	var out bytes.Buffer
	writeRecap(&out)
	want := "=== harness recap: what the failed tests waited for, and their daemons' last words\n" +
		"    TestRecapRepeatsWhatFailed: timed out after 20s waiting for an empty pool: pid 4000, 3 workers\n" +
		"    TestRecapRepeatsWhatFailed: the daemon's log ends:\n" +
		"        line l\n        line m\n        line n\n"
	if out.String() != want {
		t.Errorf("recap:\n%s\nwant:\n%s", out.String(), want)
	}
}
