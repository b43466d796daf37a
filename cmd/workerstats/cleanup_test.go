package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// cleanup --all goes on past a directory it cannot clean: one daemon's
// pins it may not take keep no other directory from being cleaned, in
// whichever order they come, and the error names the one it left.
func TestCleanupGoesOnPastADirectoryItCannotClean(t *testing.T) {
	notPins := t.TempDir() // not on bpffs: RemovePins refuses it, as it refuses a running daemon's
	if err := os.WriteFile(filepath.Join(notPins, "counters"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(t.TempDir(), "gone")
	for _, dirs := range [][]string{{notPins, gone}, {gone, notPins}} {
		var out strings.Builder
		err := cleanup(&out, dirs)
		if err == nil || !strings.Contains(err.Error(), notPins) || strings.Contains(err.Error(), "\n") {
			t.Errorf("cleanup %v: %v, want one line naming %s", dirs, err, notPins)
		}
		if !strings.Contains(out.String(), "nothing is pinned in "+gone) {
			t.Errorf("cleanup %v stopped before %s: %q", dirs, gone, out.String())
		}
	}
}
