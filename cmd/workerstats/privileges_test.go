package main

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/test/harness"
)

// TestUserMistakesAreOneLine: an unknown --user, or a Unix stats socket
// --user could not remove at shutdown, is refused before anything is bound
// or loaded, in one line saying what to do. The second needs root: not
// root, the daemon refuses --user itself (it cannot drop to a user).
func TestUserMistakesAreOneLine(t *testing.T) {
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	master := exec.Command("sleep", "300")
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { master.Process.Kill(); master.Wait() }()
	pid := strconv.Itoa(master.Process.Pid)
	rootDir := t.TempDir() // root's, 0700
	for _, c := range []struct {
		name string
		root bool
		args []string
		want string
	}{
		{"unknown user", false, []string{"--user", "no-such-user-here"}, `--user "no-such-user-here": no such user`},
		{"socket directory not the user's", true, []string{"--user", "nobody", "--stats", filepath.Join(rootDir, "s.sock")},
			"the stats socket " + filepath.Join(rootDir, "s.sock") + " could not be removed at shutdown: its directory " + rootDir + " is not writable by nobody"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.root {
				testutil.RequireRoot(t, "own a directory user nobody cannot write, and drop to nobody")
			}
			out, err := harness.RunCommand(append([]string{"serve", "--pid", pid, "--no-pin"}, c.args...)...)
			if err == nil || strings.Count(out, "\n") != 0 || !strings.Contains(out, c.want) {
				t.Errorf("%v: exit %v, output %q; want one line containing %q", c.args, err, out, c.want)
			}
		})
	}
	if ents, _ := os.ReadDir(rootDir); len(ents) != 0 {
		t.Errorf("a refused start left %v behind", ents)
	}
}
