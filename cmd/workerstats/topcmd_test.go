package main

import (
	"os"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/test/harness"
)

// TestTopWithoutATerminal: without a terminal top says in one line what to
// use instead; --once prints one frame of uWSGI's dump, a row per worker.
func TestTopWithoutATerminal(t *testing.T) {
	dump, err := os.ReadFile("testdata/uwsgi-2.0.21-http-socket-4-workers.json")
	if err != nil {
		t.Fatal(err)
	}
	addr := fakeStatsServer(t, string(dump))
	stdout, stderr, err := harness.Run(t, "top", addr)
	if err == nil || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "workerstats read "+addr) {
		t.Errorf("top without a terminal: %v, stdout %q, stderr %q; want one line pointing to workerstats read", err, stdout, stderr)
	}
	stdout, stderr, err = harness.Run(t, "top", "--once", "--interval", "200ms", "--width", "100", addr)
	if err != nil {
		t.Fatalf("top --once: %v\n%s", err, stderr)
	}
	if _, err := harness.TopRowsOf(stdout, []int{3636, 3637, 3638, 3639}); err != nil || !strings.Contains(stdout, "version 2.0.21-debian") {
		t.Errorf("top --once: %v\n%s", err, stdout)
	}
	for _, l := range strings.Split(stdout, "\n") {
		if len([]rune(l)) > 100 {
			t.Errorf("line wider than --width 100: %q", l)
		}
	}
}
