package main

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/test/harness"
)

// TestDemoMistakesAreOneLine: without root the demo stops at once, saying
// in one line that counting needs root and how to run it; --stats with
// port 0 is refused in one line too. Neither starts a pool.
func TestDemoMistakesAreOneLine(t *testing.T) {
	nobody := harness.AsNobody(t)
	for _, c := range []struct {
		name string
		cmd  []string
		want string
	}{
		{"without root", append(nobody, "demo", "--stats", harness.FreeAddr(t)),
			"workerstats: demo: counting needs root (eBPF): run sudo workerstats demo, or sudo make demo"},
		{"without root, --mode ebpf", append(nobody, "demo", "--mode", "ebpf"), "counting needs root (eBPF)"},
		{"port 0", []string{harness.Binary(), "demo", "--exit", "--mode", "procfs", "--stats", "127.0.0.1:0"},
			"demo --stats 127.0.0.1:0: port 0 cannot be read back; give a free port, such as 127.0.0.1:1717"},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			out, err := exec.Command(c.cmd[0], c.cmd[1:]...).CombinedOutput()
			if err == nil || strings.Count(string(out), "\n") != 1 || !strings.Contains(string(out), c.want) {
				t.Errorf("%v: exit %v, output %q; want one line containing %q", c.cmd, err, out, c.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v to refuse: it started something first", d)
			}
		})
	}
}
