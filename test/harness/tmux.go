package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
)

// Terminal is a tmux pane of a fixed size running one command, on a tmux
// server of the test's own: a command seen as a person would see it, keys
// sent with send-keys and the screen read with capture-pane.
type Terminal struct {
	t      testing.TB
	server string // tmux -L: a server of the test's own
	status string // the file the command's exit status goes to
}

var tmuxServers atomic.Int64

// StartTerminal runs the command line cmd (run by the shell) in a
// detached w by h tmux pane, which stays when the command exits so its
// last screen can be read; its exit status goes to a file (tmux's own
// pane_dead_status can lag the pane's end). The server is killed when t
// ends; if t failed, the last screen is logged.
func StartTerminal(t testing.TB, w, h int, cmd string) *Terminal {
	t.Helper()
	RequireTmux(t)
	term := &Terminal{t: t, server: fmt.Sprintf("workerstats-test-%d-%d", os.Getpid(), tmuxServers.Add(1)),
		status: filepath.Join(t.TempDir(), "status")}
	// remain-on-exit is set in the same tmux command that makes the
	// session, before the command could exit.
	term.Run("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", strconv.Itoa(w), "-y", strconv.Itoa(h),
		cmd+"; echo $? >"+term.status, ";", "set-option", "-t", "t", "remain-on-exit", "on")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the terminal's last screen:\n%s", term.ScreenNow())
		}
		exec.Command("tmux", "-L", term.server, "kill-server").Run()
	})
	return term
}

// RequireTmux fails t without tmux as root (.ci/install-deps installs it),
// and skips it (or fails, in CI) otherwise.
func RequireTmux(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil && os.Geteuid() == 0 {
		t.Fatal("tmux is not installed: apt-get install tmux (sudo make deps installs it)")
	}
	testutil.RequireCommand(t, "tmux", "tmux")
}

// Run runs a tmux command on the terminal's server, failing t if it fails.
func (term *Terminal) Run(args ...string) string {
	term.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", term.server}, args...)...).CombinedOutput()
	if err != nil {
		term.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ScreenNow is what the pane shows now, "" if it cannot be read.
func (term *Terminal) ScreenNow() string {
	out, _ := exec.Command("tmux", "-L", term.server, "capture-pane", "-p", "-t", "t").Output()
	return string(out)
}

// WaitScreen polls the pane until ok accepts what it shows, and returns
// that screen; it fails t with the last screen and ok's last word after d.
func (term *Terminal) WaitScreen(d time.Duration, what string, ok func(screen string) error) string {
	term.t.Helper()
	var screen string
	WaitFor(term.t, d, what, func() error {
		screen = term.ScreenNow()
		if err := ok(screen); err != nil {
			return fmt.Errorf("%w; the screen:\n%s", err, screen)
		}
		return nil
	})
	return screen
}

// Keys types keys (tmux key names: q, C-c, Enter) into the pane.
func (term *Terminal) Keys(keys ...string) {
	term.t.Helper()
	term.Run(append([]string{"send-keys", "-t", "t"}, keys...)...)
}

// WaitExit waits until the pane's command has exited and returns its exit
// status.
func (term *Terminal) WaitExit(d time.Duration) int {
	term.t.Helper()
	status := -1
	WaitFor(term.t, d, "the command in the terminal to exit", func() error {
		b, err := os.ReadFile(term.status)
		if err == nil {
			status, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return err
	})
	return status
}
