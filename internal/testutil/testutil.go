// Package testutil holds what the tests of several packages need: skipping
// (or, in CI, failing) when a prerequisite is missing, pin directories of a
// test's own, the hook sets to run under, and log capture. It imports
// nothing of workerstats, so every package's tests can use it.
package testutil

import (
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RequirePrivilegedEnv is the environment variable that turns a missing
// prerequisite from a skip into a failure. CI sets it, so a privileged test
// can never pass there as a skip.
const RequirePrivilegedEnv = "WORKERSTATS_REQUIRE_PRIVILEGED"

// BinaryEnv names a workerstats binary already built for the tests that run
// one (make vm-test sets it), instead of building it from the source.
const BinaryEnv = "WORKERSTATS_TEST_BINARY"

// NeedsPrivilege starts the reason of every skip for a missing privilege
// (root, capabilities, BTF): .ci/test-unprivileged accepts only skips that
// say it when it runs the tests as a user with none.
const NeedsPrivilege = "needs privilege: "

// SkipOrFail skips t with the reason, or fails it where
// RequirePrivilegedEnv is set.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequirePrivilegedEnv) != "" {
		t.Fatalf(RequirePrivilegedEnv+" is set but: "+format, args...)
	}
	t.Skipf(format, args...)
}

// RequireRoot skips (or fails) t unless it runs as root.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, NeedsPrivilege+"root, to %s (run: sudo make test)", why)
	}
}

// RequireEBPF skips (or fails) t unless this process can load and attach
// eBPF programs: root, and a kernel with BTF.
func RequireEBPF(t testing.TB) {
	t.Helper()
	RequireRoot(t, "load and attach eBPF programs")
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		SkipOrFail(t, NeedsPrivilege+"a kernel with BTF (/sys/kernel/btf/vmlinux): %v", err)
	}
}

// RequireCommand skips (or fails) t unless name is on PATH, and returns its
// path; pkg is the Debian package that has it.
func RequireCommand(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		SkipOrFail(t, "%s is not installed (apt-get install %s, or run .ci/run)", name, pkg)
	}
	return p
}

// BPFFSDir is where the tests' pin directories go: the bpf filesystem's
// usual mount point, as ebpfkernel.BPFFSDir (a test there checks they are
// the same).
const BPFFSDir = "/sys/fs/bpf"

// PinPath returns a pin directory of t's own under BPFFSDir, so daemons
// and observers run at once never share pins; remove, called when t ends,
// removes whatever is pinned there.
func PinPath(t testing.TB, remove func(dir string) error) string {
	t.Helper()
	dir := fmt.Sprintf("%s/workerstats-test-%d-%d", BPFFSDir, os.Getpid(), rand.Uint32())
	t.Cleanup(func() {
		if err := remove(dir); err != nil {
			t.Errorf("remove test pins %s: %v", dir, err)
		}
	})
	return dir
}

// HookSets returns the hook sets a test runs under: every one that
// available (ebpfkernel.AvailableHooks) says the kernel carries, so CI runs
// each. Under software emulation (ScaleEnv below 1), where a VM leg cannot
// afford every set for every test, it is the set auto picks (the first)
// for every test, and for every other test, by a hash of its name, one of
// the others in turn: every set still runs on every kernel, and what auto
// picks runs everything.
func HookSets(t testing.TB, available func() ([]string, error)) []string {
	t.Helper()
	sets := allHookSets(t, available)
	if !emulated() || len(sets) < 2 {
		return sets
	}
	h := fnv.New32a()
	h.Write([]byte(t.Name()))
	n := h.Sum32()
	if n%2 == 0 {
		t.Logf("under emulation, the %s hooks only (of %v): other tests take the others in turn", sets[0], sets)
		return sets[:1]
	}
	other := sets[1+int(n/2)%(len(sets)-1)]
	t.Logf("under emulation, the %s and %s hooks (of %v): other tests take the others in turn", sets[0], other, sets)
	return []string{sets[0], other}
}

// Patience is d for a wait on a server's own start-up, stretched (three
// times) under software emulation, where a loaded guest has been seen to
// take more than 30 s to bring PHP-FPM up. Waits on what workerstats
// counts are not stretched: their bounds are what a user would wait.
func Patience(d time.Duration) time.Duration {
	if emulated() {
		return 3 * d
	}
	return d
}

// SkipEmulated skips t under software emulation (make vm-test), saying
// why: for a test of what does not depend on the kernel, proven on the
// host, whose servers an emulated guest runs too slowly to be worth it.
func SkipEmulated(t testing.TB, why string) {
	t.Helper()
	if emulated() {
		t.Skip("under emulation: " + why)
	}
}

// emulated says whether the tests run under software emulation, their
// request counts scaled down (ScaleEnv below 1).
func emulated() bool {
	f, err := strconv.ParseFloat(os.Getenv(ScaleEnv), 64)
	return err == nil && f < 1
}

// HooksEnv, a comma-separated list of hook sets, narrows a developer's
// run (make bench-vm BENCH_HOOKS=fentry, say) to those of them the kernel
// carries.
const HooksEnv = "WORKERSTATS_HOOKS"

func allHookSets(t testing.TB, available func() ([]string, error)) []string {
	t.Helper()
	sets, err := available()
	if err != nil {
		t.Fatal(err)
	}
	if only := os.Getenv(HooksEnv); only != "" {
		want := strings.Split(only, ",")
		sets = slices.DeleteFunc(sets, func(s string) bool { return !slices.Contains(want, s) })
		if len(sets) == 0 {
			t.Skipf("%s=%s: this kernel carries none of them", HooksEnv, only)
		}
	}
	if len(sets) == 1 {
		t.Logf("this kernel carries only the %s hooks", sets[0])
	}
	return sets
}

// HookSetsInTurn is HookSets for the tests whose subject is not the hook
// sets themselves (pools in containers: their pids, listeners, cgroups),
// of which a VM leg under software emulation (ScaleEnv below 1) cannot
// afford every set: there it returns one, the turn-th (wrapping), so that
// tests given turns 0, 1, 2... share the sets out between them and every
// set still runs some of them on every kernel. Elsewhere, every set.
func HookSetsInTurn(t testing.TB, available func() ([]string, error), turn int) []string {
	t.Helper()
	sets := allHookSets(t, available)
	if !emulated() || len(sets) < 2 {
		return sets
	}
	one := sets[turn%len(sets)]
	t.Logf("under emulation, the %s hooks only (of %v): the other tests of its kind take the others", one, sets)
	return []string{one}
}

// ScaleEnv is a factor (0.1, say) for the request counts of the load
// tests, which make vm-test sets under software emulation, where every
// request costs several times what it does here. Comparisons stay exact:
// only how much traffic they compare shrinks.
const ScaleEnv = "WORKERSTATS_TEST_SCALE"

// Scale returns n requests scaled by ScaleEnv (1 when unset), at least 1
// for n > 0.
func Scale(n int) int {
	f, err := strconv.ParseFloat(os.Getenv(ScaleEnv), 64)
	if err != nil || f <= 0 || n <= 0 {
		return n
	}
	return max(1, int(float64(n)*f+0.5))
}
