package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// repoRoot is the source tree the tests build from.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "Makefile")); err != nil {
		t.Fatalf("no Makefile at %s: run the test from its package directory (go test ./test/packaging/)", root)
	}
	return root
}

// run runs name with args in dir and returns its combined output; a
// non-zero exit fails t with that output.
func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	out, err := runErr(dir, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// builtOrEnv returns the file env names when it is set, else the one
// build makes.
func builtOrEnv(t *testing.T, env string, build func() string) string {
	t.Helper()
	if p := os.Getenv(env); p != "" {
		t.Logf("checking %s (%s)", p, env)
		return p
	}
	return build()
}
