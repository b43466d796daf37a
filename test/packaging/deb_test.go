package packaging

import (
	"compress/gzip"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
)

// debEnv names a .deb built already, checked instead of one make deb
// builds.
const debEnv = "WORKERSTATS_TEST_DEB"

const (
	binary   = "/usr/bin/workerstats"
	unit     = "/lib/systemd/system/workerstats.service"
	confDir  = "/etc/workerstats"
	conffile = confDir + "/workerstats.toml"
	pinRoot  = "/sys/fs/bpf/workerstats"
)

// installed is every file the package must put in place.
var installed = []string{
	binary, unit, conffile,
	"/usr/share/man/man1/workerstats.1.gz",
	"/usr/share/man/man1/workerstats-serve.1.gz",
	"/usr/share/man/man1/workerstats-cleanup.1.gz",
	"/usr/share/bash-completion/completions/workerstats",
	"/usr/share/zsh/vendor-completions/_workerstats",
	"/usr/share/fish/vendor_completions.d/workerstats.fish",
	"/usr/share/doc/workerstats/copyright",
	"/usr/share/doc/workerstats/changelog.gz",
}

// The package a user installs: lintian finds no error or warning in it;
// dpkg -i puts the binary, the unit (ExecStart in /usr/bin), the config
// (a conffile), the man pages and the completions in place, and neither
// enables nor starts the service; dpkg --remove keeps the config and
// takes a stopped daemon's pins, but not those of a daemon still running;
// dpkg --purge leaves nothing; the machine's own pins are never touched.
func TestDebInstallAndPurge(t *testing.T) {
	testutil.RequireRoot(t, "install and purge the Debian package with dpkg")
	for cmd, pkg := range map[string]string{"dpkg": "dpkg", "lintian": "lintian", "unshare": "util-linux", "systemctl": "systemd"} {
		testutil.RequireCommand(t, cmd, pkg)
	}
	requireNotInstalled(t)
	deb := builtOrEnv(t, debEnv, func() string { return makeDeb(t) })

	requireLintianClean(t, deb)
	t.Cleanup(func() { purgeQuietly(t) })
	run(t, "/", "dpkg", "-i", deb)
	checkInstalled(t)
	checkNotEnabledNorStarted(t)

	// The operator edits the config: removing the package keeps it,
	// purging it does not. Both run in a bpffs of their own, never on
	// the machine's pins.
	if err := os.WriteFile(conffile, []byte("# edited\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostPins := listPins(t)
	inPrivateBPFFS(t, removeWithPins(t))
	for _, p := range installed {
		if _, err := os.Stat(p); (p == conffile) != (err == nil) {
			t.Errorf("after dpkg --remove: %s: %v (the config alone stays)", p, err)
		}
	}
	inPrivateBPFFS(t, "dpkg --purge workerstats\n")
	checkPurged(t)
	if after := listPins(t); !slices.Equal(after, hostPins) {
		t.Errorf("the machine's pins under %s changed: %q before, %q after", pinRoot, hostPins, after)
	}
}

// listPins lists the machine's pins under pinRoot.
func listPins(t *testing.T) []string {
	t.Helper()
	var pins []string
	filepath.WalkDir(pinRoot, func(path string, _ fs.DirEntry, err error) error {
		if err == nil {
			pins = append(pins, path)
		}
		return nil
	})
	return pins
}

// requireNotInstalled stops the test before it would replace and purge a
// workerstats the machine has already: the package, or files at its paths.
func requireNotInstalled(t *testing.T) {
	t.Helper()
	if out, err := runErr("/", "dpkg-query", "-W", "-f=${db:Status-Status}", "workerstats"); err == nil && out != "not-installed" {
		testutil.SkipOrFail(t, "the workerstats package is on this machine (%s): the test would purge it; dpkg --purge workerstats first", out)
	}
	for _, p := range []string{binary, unit, confDir} {
		if _, err := os.Stat(p); err == nil {
			testutil.SkipOrFail(t, "%s exists (make install?): the test's package would replace it, and its purge remove it; remove it first", p)
		}
	}
}

// makeDeb builds the package with make deb into the test's directory and
// returns its path.
func makeDeb(t *testing.T) string {
	t.Helper()
	testutil.RequireCommand(t, "dpkg-buildpackage", "dpkg-dev")
	testutil.RequireCommand(t, "dh", "debhelper")
	dir := t.TempDir()
	run(t, repoRoot(t), "make", "--no-print-directory", "deb", "DEB_DIR="+dir)
	debs, err := filepath.Glob(filepath.Join(dir, "workerstats_*.deb"))
	if err != nil || len(debs) != 1 {
		t.Fatalf("make deb built %v in %s, want one workerstats_*.deb (%v)", debs, dir, err)
	}
	return debs[0]
}

// requireLintianClean fails t on every lintian error or warning, and logs
// its informational tags. (The package's overrides are not shown: lintian
// exits 2 when asked to show them.)
func requireLintianClean(t *testing.T, deb string) {
	t.Helper()
	out, err := runErr("/", "lintian", "--fail-on", "error,warning", "--display-info", deb)
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		switch {
		case strings.HasPrefix(line, "E: "), strings.HasPrefix(line, "W: "):
			t.Errorf("lintian: %s", line)
		case len(line) > 2 && line[1] == ':':
			t.Logf("lintian: %s", line)
		}
	}
	if err != nil && !t.Failed() {
		t.Errorf("lintian %s: %v\n%s", deb, err, out)
	}
	if t.Failed() {
		t.FailNow()
	}
}

func checkInstalled(t *testing.T) {
	t.Helper()
	for _, p := range installed {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("after dpkg -i: %v", err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if out := run(t, "/", binary, "--version"); !strings.HasPrefix(out, "workerstats version ") {
		t.Errorf("%s --version printed %q", binary, out)
	}
	if u := readText(t, unit); !strings.Contains(u, "\nExecStart="+binary+" serve --config "+conffile+"\n") {
		t.Errorf("%s does not start %s serve --config %s", unit, binary, conffile)
	}
	if c := run(t, "/", "dpkg-query", "-W", "-f=${Conffiles}", "workerstats"); !strings.Contains(c, conffile+" ") {
		t.Errorf("%s is not a conffile: the package's conffiles are %q", conffile, c)
	}
	if page := gunzipText(t, "/usr/share/man/man1/workerstats-serve.1.gz"); !strings.Contains(page, `\fB--pidfile\fP`) {
		t.Error("the serve man page does not document --pidfile")
	}
}

// checkNotEnabledNorStarted: the operator edits the config, then enables
// the service; installing the package does neither for them.
func checkNotEnabledNorStarted(t *testing.T) {
	t.Helper()
	if out, _ := runErr("/", "systemctl", "is-enabled", "workerstats.service"); strings.TrimSpace(out) != "disabled" {
		t.Errorf("systemctl is-enabled workerstats.service: %q after dpkg -i, want disabled", out)
	}
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		if out, _ := runErr("/", "systemctl", "is-active", "workerstats.service"); strings.TrimSpace(out) != "inactive" {
			t.Errorf("systemctl is-active workerstats.service: %q after dpkg -i, want inactive", out)
		}
	}
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, exe := range exes {
		if target, err := os.Readlink(exe); err == nil && target == binary {
			t.Errorf("%s runs (%s) after dpkg -i: nothing should start it", binary, exe)
		}
	}
}

// removeWithPins returns the shell lines that run dpkg --remove where two
// daemons pinned: one stopped, whose pins the removal takes, and one still
// running (under a name cleanup meets first), whose pins it leaves, going
// on. The daemons are the installed binary, where the kernel can load its
// programs; elsewhere the removal meets an empty pin directory alone.
func removeWithPins(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Logf("no BTF (%v): the package's removal is checked on an empty pin directory, not a daemon's pins", err)
		return "mkdir -p " + pinRoot + "/default\ndpkg --remove workerstats\n! test -e " + pinRoot + "\n"
	}
	log := filepath.Join(t.TempDir(), "daemon.log")
	return `serve() { ` + binary + ` serve --pid $$ --stats 127.0.0.1:0 --mode ebpf --pin-path "$1" >>` + log + ` 2>&1 & }
pinned() {
	for i in $(seq 120); do ls "$1" 2>/dev/null | grep -q '^link_' && return; sleep 0.5; done
	echo "the daemon pinned no link in $1 in 60 s:"; cat ` + log + `; exit 1
}
serve ` + pinRoot + `/default; stopped=$!; pinned ` + pinRoot + `/default
kill $stopped; wait $stopped || true
serve ` + pinRoot + `/a-running; running=$!; pinned ` + pinRoot + `/a-running
dpkg --remove workerstats
kill $running; wait $running || true
test ! -e ` + pinRoot + `/default || { echo "dpkg --remove left the stopped daemon's pins"; exit 1; }
ls ` + pinRoot + `/a-running | grep -q '^link_' || { echo "dpkg --remove took the pins of a daemon still running"; exit 1; }
`
}

// inPrivateBPFFS runs script in a mount namespace of its own, on a bpf
// filesystem of its own at /sys/fs/bpf, so that what the package's
// scripts do to pins never touches the machine's.
func inPrivateBPFFS(t *testing.T, script string) {
	t.Helper()
	out := run(t, "/", "unshare", "--mount", "--propagation", "private", "sh", "-ec",
		"mount -t bpf bpf /sys/fs/bpf\n"+script)
	t.Logf("in a bpffs of its own:\n%s", out)
}

func checkPurged(t *testing.T) {
	t.Helper()
	for _, p := range append(installed, confDir, "/usr/share/doc/workerstats",
		"/var/lib/systemd/deb-systemd-helper-enabled/workerstats.service.dsh-also") {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("after dpkg --purge, %s is still there", p)
		}
	}
	if out, err := runErr("/", "dpkg-query", "-W", "-f=${db:Status-Status}", "workerstats"); err == nil && out != "not-installed" {
		t.Errorf("after dpkg --purge, dpkg knows workerstats as %q", out)
	}
}

// purgeQuietly purges the package when a failed test left it installed.
func purgeQuietly(t *testing.T) {
	if out, err := runErr("/", "dpkg-query", "-W", "-f=${db:Status-Status}", "workerstats"); err == nil && out != "not-installed" {
		inPrivateBPFFS(t, "dpkg --purge workerstats")
	}
}

func readText(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func gunzipText(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return string(b)
}
