// Package harness is what the black-box tests share: the workerstats binary
// they run, the daemon started and stopped around a test, its stats read
// and waited for, free ports, process groups, parallel clients, an HTTP
// reply reader, a terminal under tmux, and for each real server the tests
// run (uwsgi.go, gunicorn.go, nginx.go, phpfpm.go) what starts it, loads it
// and reads its own accounts.
//
// It is imported only by tests: a test package's TestMain calls Main, and
// its tests use the rest. What skips a test for a missing privilege or
// command is internal/testutil's.
package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
)

// binPath is the workerstats binary the tests run, set by Main.
var binPath string

// Main is a test package's TestMain: it builds ./cmd/workerstats once into
// a temporary directory, or takes the binary testutil.BinaryEnv names
// (make vm-test hands its guests one built on the host, where a build
// inside an emulated guest would take minutes), runs the tests and exits.
func Main(m *testing.M) {
	// The process's main thread stays the main goroutine's: a test that
	// moves a thread of its own into a container's network namespace
	// (Container.Dial) must never get that one, whose namespace is the
	// one /proc/self/net, /proc/net, shows the whole process.
	runtime.LockOSThread()
	if bin := os.Getenv(testutil.BinaryEnv); bin != "" {
		binPath = bin
		code := m.Run()
		writeRecap(os.Stdout)
		os.Exit(code)
	}
	dir, err := os.MkdirTemp("", "workerstats-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "workerstats")
	if err := build(binPath); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	writeRecap(os.Stdout)
	os.RemoveAll(dir)
	os.Exit(code)
}

// build builds ./cmd/workerstats of the repository the tests run in to out.
func build(out string) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", out, "./cmd/workerstats")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build ./cmd/workerstats for the tests: %w (or name a built one in %s)\n%s", err, testutil.BinaryEnv, b)
	}
	return nil
}

// Binary is the path of the workerstats binary Main built or was given.
func Binary() string { return binPath }

// repoRoot is the directory of the go.mod above the working directory: a
// test binary runs from its package's folder in the repository.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", fmt.Errorf("no go.mod above %s: run the tests from their package's folder in the repository", dir)
		}
	}
}

// RepoPath is the path of rel, a path from the repository's root (such as
// deploy/systemd/workerstats.service); it fails t if the
// repository cannot be found.
func RepoPath(t testing.TB, rel string) string {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, filepath.FromSlash(rel))
}

// RunCommand runs the workerstats binary to completion and returns its
// output, stdout and stderr together, trimmed.
func RunCommand(args ...string) (string, error) {
	cmd := exec.Command(binPath, args...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// Run runs the workerstats binary and returns its stdout and stderr apart.
func Run(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(binPath, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// AsNobody returns the command line that runs the workerstats binary as
// user nobody: a copy of it that nobody can run, under setpriv. Not root,
// the binary is run as it is (already unprivileged).
func AsNobody(t testing.TB) []string {
	t.Helper()
	if os.Geteuid() != 0 {
		return []string{binPath}
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skipf("no user nobody: %v", err)
	}
	setpriv := testutil.RequireCommand(t, "setpriv", "util-linux")
	dir, err := os.MkdirTemp("", "workerstats-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	b, err := os.ReadFile(binPath)
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "workerstats"), b, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	return []string{setpriv, "--reuid=" + u.Uid, "--regid=" + u.Gid, "--clear-groups", filepath.Join(dir, "workerstats")}
}
