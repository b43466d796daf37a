package main

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

// The helpers in this file run a command in a terminal as a person would
// see it: under tmux, on a tmux server of the test's own, keys sent with
// send-keys and the screen read with capture-pane.

// terminal is a tmux pane of a fixed size running one command.
type terminal struct {
	t      testing.TB
	server string // tmux -L: a server of the test's own
	status string // the file the command's exit status goes to
}

var tmuxServers atomic.Int64

// startTerminal runs the command line cmd (run by the shell) in a
// detached w by h tmux pane, which stays when the command exits so its
// last screen can be read; its exit status goes to a file (tmux's own
// pane_dead_status can lag the pane's end). The server is killed when t
// ends; if t failed, the last screen is logged.
func startTerminal(t testing.TB, w, h int, cmd string) *terminal {
	t.Helper()
	requireTmux(t)
	term := &terminal{t: t, server: fmt.Sprintf("workerstats-test-%d-%d", os.Getpid(), tmuxServers.Add(1)),
		status: filepath.Join(t.TempDir(), "status")}
	// remain-on-exit is set in the same tmux command that makes the
	// session, before the command could exit.
	term.run("-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", strconv.Itoa(w), "-y", strconv.Itoa(h),
		cmd+"; echo $? >"+term.status, ";", "set-option", "-t", "t", "remain-on-exit", "on")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the terminal's last screen:\n%s", term.screenNow())
		}
		exec.Command("tmux", "-L", term.server, "kill-server").Run()
	})
	return term
}

// requireTmux fails t without tmux as root (.ci/install-deps installs it),
// and skips it (or fails, in CI) otherwise.
func requireTmux(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil && os.Geteuid() == 0 {
		t.Fatal("tmux is not installed: apt-get install tmux (sudo make deps installs it)")
	}
	testutil.RequireCommand(t, "tmux", "tmux")
}

// run runs a tmux command on the terminal's server, failing t if it fails.
func (term *terminal) run(args ...string) string {
	term.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-L", term.server}, args...)...).CombinedOutput()
	if err != nil {
		term.t.Fatalf("tmux %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// screenNow is what the pane shows now, "" if it cannot be read.
func (term *terminal) screenNow() string {
	out, _ := exec.Command("tmux", "-L", term.server, "capture-pane", "-p", "-t", "t").Output()
	return string(out)
}

// waitScreen polls the pane until ok accepts what it shows, and returns
// that screen; it fails t with the last screen and ok's last word after d.
func (term *terminal) waitScreen(d time.Duration, what string, ok func(screen string) error) string {
	term.t.Helper()
	var screen string
	waitFor(term.t, d, what, func() error {
		screen = term.screenNow()
		if err := ok(screen); err != nil {
			return fmt.Errorf("%w; the screen:\n%s", err, screen)
		}
		return nil
	})
	return screen
}

// keys types keys (tmux key names: q, C-c, Enter) into the pane.
func (term *terminal) keys(keys ...string) {
	term.t.Helper()
	term.run(append([]string{"send-keys", "-t", "t"}, keys...)...)
}

// waitExit waits until the pane's command has exited and returns its exit
// status.
func (term *terminal) waitExit(d time.Duration) int {
	term.t.Helper()
	status := -1
	waitFor(term.t, d, "the command in the terminal to exit", func() error {
		b, err := os.ReadFile(term.status)
		if err == nil {
			status, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
		return err
	})
	return status
}
