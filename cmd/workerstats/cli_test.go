package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/test/harness"
)

// Every mistake a user can make on the command line ends in one line on
// stderr that says what is wrong and what to do, and a non-zero exit.
func TestCommandLineMistakesAreOneClearLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no target", []string{"serve"}, "no target: give the pool's master with --pid PID, --pidfile FILE or --name NAME"},
		{"missing pid", []string{"serve", "--pid", "999999999"}, "no process with pid 999999999: start the pool first, or check --pid"},
		{"two targets", []string{"serve", "--pid", "1", "--name", "uwsgi"}, "give exactly one of pid, pidfile or name"},
		{"bad pid", []string{"serve", "--pid", "abc"}, `invalid argument "abc" for "--pid"`},
		{"unknown flag", []string{"serve", "--pdi", "1"}, "unknown flag: --pdi"},
		{"bad mode", []string{"serve", "--pid", "1", "--mode", "kernel"}, `--mode "kernel" is not one of auto, ebpf, procfs`},
		{"bad hooks", []string{"serve", "--pid", "1", "--hooks", "kprobe"}, `--hooks "kprobe" is not one of auto, fentry, sock, syscall, raw`},
		{"bad max connections", []string{"serve", "--pid", "1", "--max-connections", "0"}, "--max-connections 0: give 1 to 16777216"},
		{"bad max transfers", []string{"serve", "--pid", "1", "--max-transfers", "0"}, "--max-transfers 0: give 1 to 4194304"},
		{"requests without eBPF", []string{"serve", "--pid", "1", "--mode", "procfs", "--requests"}, "--requests needs eBPF: procfs mode sees no request; drop --mode procfs or --requests"},
		{"bad request vars", []string{"serve", "--pid", "1", "--requests", "--request-vars", "some"}, `--request-vars "some" is not one of all, no-query, none`},
		{"request vars in procfs mode", []string{"serve", "--pid", "1", "--mode", "procfs", "--request-vars", "none"}, "--request-vars says which vars request detail shows, and procfs mode sees no request: drop --mode procfs or --request-vars"},
		{"request vars without requests", []string{"serve", "--pid", "1", "--requests=false", "--request-vars", "none"}, "--request-vars says which vars --requests shows: drop --requests=false"},
		{"bad metrics label", []string{"serve", "--pid", "1", "--metrics-labels", "pool,pid"}, `--metrics-labels: "pid" is not a label of workerstats' series: choose among pool, server, namespace, pod, container`},
		{"missing kubeconfig", []string{"serve", "--pid", "1", "--kubeconfig", "/nonexistent/kubeconfig"}, "--kubeconfig: stat /nonexistent/kubeconfig: no such file or directory"},
		{"bad stats address", []string{"serve", "--pid", "1", "--stats", "localhost"}, "neither host:port nor a socket path"},
		{"address in use", []string{"serve", "--pid", "1", "--stats", busy.Addr().String()}, "already in use"},
		{"read nothing there", []string{"read", deadAddr}, "connect to stats socket " + deadAddr},
		{"read no address", []string{"read"}, "accepts 1 arg(s), received 0"},
		{"read bad timeout", []string{"read", "--timeout", "0s", deadAddr}, "--timeout 0s must be positive"},
		{"bad log format", []string{"read", "--log-format", "xml", deadAddr}, `--log-format "xml" is not one of text, json`},
		{"bad log level", []string{"--log-level", "loud", "read", deadAddr}, `--log-level "loud": want debug, info, warn or error`},
		{"connect-and-read nothing there", []string{"--connect-and-read", deadAddr}, "connect to stats socket " + deadAddr},
		{"connect-and-read no address", []string{"--connect-and-read"}, "flag needs an argument: --connect-and-read"},
		{"pretty without connect-and-read", []string{"--pretty"}, "--timeout and --pretty go with --connect-and-read ADDR"},
		{"unknown command", []string{"stats"}, `unknown command "stats" for "workerstats"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := harness.RunCommand(c.args...)
			if err == nil {
				t.Fatalf("exit 0, want an error; output %q", out)
			}
			if lines := strings.Count(out, "\n") + 1; lines != 1 {
				t.Errorf("%d lines, want one:\n%s", lines, out)
			}
			if !strings.HasPrefix(out, "workerstats: ") || !strings.Contains(out, c.want) {
				t.Errorf("got %q, want a line containing %q", out, c.want)
			}
		})
	}
}

// buildBinary builds workerstats with extra go build flags into the test's
// temporary directory.
func buildBinary(t *testing.T, flags ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "workerstats")
	args := append(append([]string{"build"}, flags...), "-o", p, ".")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return p
}

// versionLine runs bin --version (or -v) and returns its one line of
// output after checking its shape.
func versionLine(t *testing.T, bin, flag string) string {
	t.Helper()
	out, err := exec.Command(bin, flag).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, flag, err, out)
	}
	line := string(out)
	want := fmt.Sprintf(" (%s %s/%s)\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if !strings.HasPrefix(line, "workerstats version ") || !strings.HasSuffix(line, want) || strings.Count(line, "\n") != 1 {
		t.Fatalf("%s printed %q, want one line \"workerstats version V%s\"", flag, line, strings.TrimSuffix(want, "\n"))
	}
	return strings.TrimSuffix(strings.TrimPrefix(line, "workerstats version "), want)
}

// --version names the build: the Makefile's version when it set one, else
// the commit the Go toolchain stamped, never a bare "dev" when the source
// was a git checkout.
func TestVersion(t *testing.T) {
	t.Run("ldflags", func(t *testing.T) {
		bin := buildBinary(t, "-ldflags", "-X main.version=1.2.3-test")
		for _, flag := range []string{"--version", "-v"} {
			if v := versionLine(t, bin, flag); v != "1.2.3-test" {
				t.Errorf("%s: version %q, want the -ldflags one, 1.2.3-test", flag, v)
			}
		}
	})
	t.Run("vcs", func(t *testing.T) {
		head, err := exec.Command("git", "rev-parse", "HEAD").Output()
		if err != nil {
			t.Skipf("not a git checkout (or no git), so no VCS stamp to find: %v", err)
		}
		bin := buildBinary(t, "-buildvcs=true")
		v := versionLine(t, bin, "--version")
		if rev := strings.TrimSpace(string(head))[:12]; !strings.Contains(v, rev) {
			t.Errorf("go build in a checkout at %s reports version %q, want one naming the commit", rev, v)
		}
	})
	t.Run("test binary", func(t *testing.T) {
		if v := versionLine(t, harness.Binary(), "--version"); v == "" {
			t.Error("empty version")
		}
	})
}

// The fallback order when no -ldflags version was set.
func TestBuildVersion(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	const rev = "25dc83afd62310623ecd63797ed2e1a5145ef3c2"
	for _, c := range []struct {
		name    string
		ldflags string
		bi      *debug.BuildInfo
		want    string
	}{
		{"ldflags win", "v1.0.0", &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}}, "v1.0.0"},
		{"go install at a tag", "dev", &debug.BuildInfo{Main: debug.Module{Version: "v0.9.0"}, Settings: vcs(rev, "false")}, "v0.9.0"},
		{"devel with a clean checkout", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "false")}, "dev-25dc83afd623"},
		{"devel with changes", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "true")}, "dev-25dc83afd623+dirty"},
		{"no vcs stamp", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "dev"},
		{"no build info", "dev", nil, "dev"},
	} {
		if got := buildVersion(c.ldflags, c.bi); got != c.want {
			t.Errorf("%s: buildVersion = %q, want %q", c.name, got, c.want)
		}
	}
}

// fakeStatsServer answers every connection with dump and closes it, like
// uWSGI's raw stats socket, and returns its address.
func fakeStatsServer(t *testing.T, dump string) string {
	t.Helper()
	return testutil.TCPServer(t, func(c net.Conn) { c.Write([]byte(dump)) })
}

// uWSGI hands type `--connect-and-read ADDR`: it prints on stdout exactly
// what `read ADDR` prints, with read's --pretty and --timeout.
func TestConnectAndRead(t *testing.T) {
	const dump = "{\n\t\"version\":\"2.0.21\",\n\t\"workers\":[{\"id\":1,\"pid\":42}]\n}"
	addr := fakeStatsServer(t, dump)
	for _, c := range []struct {
		name  string
		alias []string
		read  []string
		want  string
	}{
		{"plain", []string{"--connect-and-read", addr}, []string{"read", addr}, dump + "\n"},
		{"equals form", []string{"--connect-and-read=" + addr}, []string{"read", addr}, dump + "\n"},
		{"pretty after", []string{"--connect-and-read", addr, "--pretty"}, []string{"read", "--pretty", addr},
			"{\n  \"version\": \"2.0.21\",\n  \"workers\": [\n    {\n      \"id\": 1,\n      \"pid\": 42\n    }\n  ]\n}\n"},
		{"timeout and pretty before", []string{"--timeout", "3s", "--pretty", "--connect-and-read", addr}, []string{"read", "--timeout", "3s", "--pretty", addr},
			"{\n  \"version\": \"2.0.21\",\n  \"workers\": [\n    {\n      \"id\": 1,\n      \"pid\": 42\n    }\n  ]\n}\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, err := harness.Run(t, c.alias...)
			if err != nil || errOut != "" {
				t.Fatalf("%v: exit %v, stderr %q", c.alias, err, errOut)
			}
			if out != c.want {
				t.Errorf("%v printed on stdout:\n%q\nwant:\n%q", c.alias, out, c.want)
			}
			readOut, _, err := harness.Run(t, c.read...)
			if err != nil || readOut != out {
				t.Errorf("%v printed %q (exit %v), want the same as %v", c.read, readOut, err, c.alias)
			}
		})
	}

	// --timeout applies: a server that accepts and never writes or closes is
	// given up on, in one line naming the address.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	out, errOut, err := harness.Run(t, "--connect-and-read", silent.Addr().String(), "--timeout", "300ms")
	if err == nil || out != "" || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(errOut, silent.Addr().String()) {
		t.Errorf("silent server with --timeout 300ms: exit %v, stdout %q, stderr %q; want a one-line error naming the address", err, out, errOut)
	}
}

// Logs go to stderr, as key=value text by default and as one JSON object a
// line with --log-format json; --log-level still filters them. stdout stays
// empty.
func TestLogFormat(t *testing.T) {
	master := exec.Command("sleep", "300")
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { master.Process.Kill(); master.Wait() }()

	serve := func(t *testing.T, extra ...string) (stdout, stderr string) {
		t.Helper()
		addr := harness.FreeAddr(t)
		args := append([]string{"serve", "--mode", "procfs", "--pid", strconv.Itoa(master.Process.Pid), "--stats", addr}, extra...)
		var o, e bytes.Buffer
		cmd := exec.Command(harness.Binary(), args...)
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		harness.WaitFor(t, 30*time.Second, "workerstats to serve stats", func() error {
			select {
			case err := <-exited:
				t.Fatalf("workerstats %v exited early (%v):\n%s", args, err, e.String())
			default:
			}
			_, err := harness.ReadStats(addr)
			return err
		})
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("workerstats %v: exit %v on SIGTERM, want 0:\n%s", args, err, e.String())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Fatalf("workerstats %v did not stop within 10 s of SIGTERM", args)
		}
		return o.String(), e.String()
	}
	lines := func(s string) []string { return strings.Split(strings.TrimSpace(s), "\n") }

	t.Run("text", func(t *testing.T) {
		out, logs := serve(t)
		if out != "" {
			t.Errorf("stdout %q, want logs on stderr only", out)
		}
		found := false
		for _, l := range lines(logs) {
			if json.Valid([]byte(l)) || !strings.HasPrefix(l, "time=") || !strings.Contains(l, " level=") {
				t.Errorf("log line %q is not slog text (time=... level=... msg=...)", l)
			}
			found = found || strings.Contains(l, `level=INFO msg="serving stats"`)
		}
		if !found {
			t.Errorf("no text line with level=INFO msg=\"serving stats\" in:\n%s", logs)
		}
	})
	t.Run("json", func(t *testing.T) {
		out, logs := serve(t, "--log-format", "json")
		if out != "" {
			t.Errorf("stdout %q, want logs on stderr only", out)
		}
		var msgs []string
		for _, l := range lines(logs) {
			var rec struct{ Time, Level, Msg string }
			if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.Time == "" || rec.Level == "" || rec.Msg == "" {
				t.Errorf("log line %q is not a JSON object with time, level and msg (%v)", l, err)
				continue
			}
			msgs = append(msgs, rec.Level+" "+rec.Msg)
		}
		if !slices.Contains(msgs, "INFO serving stats") || !slices.Contains(msgs, "INFO stopped") {
			t.Errorf("JSON records %q, want INFO \"serving stats\" and \"stopped\"", msgs)
		}
	})
	t.Run("json above info", func(t *testing.T) {
		_, logs := serve(t, "--log-format", "json", "--log-level", "warn")
		if strings.Contains(logs, "serving stats") {
			t.Errorf("--log-level warn still logs info records:\n%s", logs)
		}
	})
}
