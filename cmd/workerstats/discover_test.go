package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
)

// serve --discover's flags and config keys, each mistake one line; the
// message when --max-pools is reached; and the daemon's steps serving
// every pool found on one socket, in procfs mode (the eBPF side's own
// test is test/integration's).

// resolveServe parses serve's args as cobra would and resolves them.
func resolveServe(args ...string) (daemonOptions, error) {
	var o serveFlags
	f := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f.SetOutput(io.Discard)
	o.addFlags(f)
	if err := f.Parse(args); err != nil {
		return daemonOptions{}, err
	}
	return o.resolve(f.Changed)
}

// writeConfig writes a config file and returns its path.
func writeConfig(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "workerstats.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDiscoverMistakesAreOneLine(t *testing.T) {
	const pool = "[[pool]]\npid = 1\nstats = \"127.0.0.1:1717\"\n"
	withPool := writeConfig(t, "discover = true\n"+pool)
	plain := writeConfig(t, pool)
	discover := writeConfig(t, "discover = true\n")
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"with pid", []string{"--discover", "--pid", "1"}, "--discover and --pid exclude each other: pick one"},
		{"with name", []string{"--discover", "--name", "uwsgi"}, "--discover and --name exclude each other: pick one"},
		{"with pidfile", []string{"--discover", "--pidfile", "/run/x.pid"}, "--discover and --pidfile exclude each other: pick one"},
		{"short interval", []string{"--discover", "--discover-interval", "10ms"}, "--discover-interval 10ms: give at least 100ms, such as 2s"},
		{"no pools", []string{"--discover", "--max-pools", "0"}, "--max-pools 0: give 1 to 4096"},
		{"too many pools", []string{"--discover", "--max-pools", "5000"}, "--max-pools 5000: give 1 to 4096"},
		{"max pools alone", []string{"--pid", "1", "--max-pools", "3"}, "--discover-interval and --max-pools go with --discover: add --discover"},
		{"interval alone", []string{"--pid", "1", "--discover-interval", "1s"}, "--discover-interval and --max-pools go with --discover: add --discover"},
		{"bad stats", []string{"--discover", "--stats", "localhost"}, "serve --discover: "},
		{"config discover and pools", []string{"--config", withPool}, "discover and [[pool]] exclude each other: pick one"},
		{"flag discover and config pools", []string{"--discover", "--config", plain}, "discover and [[pool]] exclude each other: pick one"},
		{"config discover and pid", []string{"--config", discover, "--pid", "1"}, "discover = true in " + discover + " and --pid exclude each other"},
		{"config without pools", []string{"--config", writeConfig(t, "mode = \"procfs\"\n")}, "has no [[pool]]: add one with a pid, pidfile or name and a stats address, or set discover = true"},
		{"config stats at the top", []string{"--config", writeConfig(t, "stats = \"127.0.0.1:1\"\n"+pool)}, "stats keys at the top are discover's one socket"},
		{"config max pools alone", []string{"--config", writeConfig(t, "max-pools = 3\n"+pool)}, "discover-interval and max-pools go with discover = true"},
		{"config bad max pools", []string{"--config", writeConfig(t, "discover = true\nmax-pools = -1\n")}, "--max-pools -1: give 1 to 4096"},
		{"config bad interval", []string{"--config", writeConfig(t, "discover = true\ndiscover-interval = \"2\"\n")}, `"2" is not a duration such as 100ms or 5s`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := resolveServe(c.args...)
			if err == nil {
				t.Fatal("accepted")
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, c.want) {
				t.Errorf("said %q, want one line containing %q", msg, c.want)
			}
		})
	}
}

// --discover (or discover = true) serves one HTTP socket, flags winning
// over the config's keys.
func TestDiscoverResolves(t *testing.T) {
	d, err := resolveServe("--discover", "--stats-http=false")
	if err != nil {
		t.Fatal(err)
	}
	if d.discover == nil || *d.discover != (discoverOptions{every: 2 * time.Second, maxPools: 256}) {
		t.Errorf("discover %+v, want every 2s and 256 pools", d.discover)
	}
	if len(d.pools) != 1 || !d.pools[0].opts.StatsHTTP || d.pools[0].addr.Address != "127.0.0.1:1717" || d.pools[0].target != (observer.Target{}) {
		t.Errorf("pools %+v, want one HTTP socket on 127.0.0.1:1717 and no target", d.pools)
	}
	cfg := writeConfig(t, "discover = true\ndiscover-interval = \"5s\"\nmax-pools = 10\nstats = \"127.0.0.1:1818\"\nstats-minified = true\n")
	d, err = resolveServe("--config", cfg, "--max-pools", "20")
	if err != nil {
		t.Fatal(err)
	}
	if *d.discover != (discoverOptions{every: 5 * time.Second, maxPools: 20}) || d.pools[0].addr.Address != "127.0.0.1:1818" || !d.pools[0].opts.StatsMinified {
		t.Errorf("from the config: discover %+v, socket %+v; want 5s, the flag's 20, 127.0.0.1:1818 minified", d.discover, d.pools[0])
	}
	d, err = resolveServe("--config", writeConfig(t, "mode = \"procfs\"\n"), "--discover", "--stats", "127.0.0.1:1919")
	if err != nil || d.discover == nil || d.mode != modeProcfs || d.pools[0].addr.Address != "127.0.0.1:1919" {
		t.Errorf("--discover and --stats with a config of daemon-wide keys: %+v, %v", d, err)
	}
}

// The limit is said in one line naming --max-pools, again only when more
// masters are left unwatched than at the sweep before.
func TestMaxPoolsSaidWhenItGrows(t *testing.T) {
	log := testutil.NewLog(t)
	n := 0
	for _, now := range []int{0, 2, 2, 1, 3, 3} {
		n = warnUnwatched(now, n, 4, log.Logger)
	}
	got := log.String()
	if strings.Count(got, "level=WARN") != 2 || strings.Count(got, "raise --max-pools") != 2 || !strings.Contains(got, "unwatched=2") || !strings.Contains(got, "unwatched=3") {
		t.Errorf("want two warnings (2, then 3 unwatched) naming --max-pools, got:\n%s", got)
	}
}

// forkingMaster starts a python3 process that forks two children of its
// own name, a pre-fork master as discovery finds one; marker sets its
// command line apart. Stopping it stops its children too.
func forkingMaster(t *testing.T, marker string) (pid int, stop func()) {
	t.Helper()
	python := "/usr/bin/python3" // not a wrapper script, which may fork shells
	if _, err := os.Stat(python); err != nil {
		python = testutil.RequireCommand(t, "python3", "python3")
	}
	const prog = "import os, time\nfor _ in range(2):\n    if os.fork() == 0:\n        time.sleep(600)\n        os._exit(0)\ntime.sleep(600)\n"
	cmd := exec.Command(python, "-c", prog, marker)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop = func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}
	t.Cleanup(stop)
	return cmd.Process.Pid, stop
}

// discoverWait polls f every 50 ms until it returns nil, and fails t with
// its last error if it has not within d.
func discoverWait(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("timed out after %v waiting for %s: %v", d, what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// listed reads the pools listed at the root of the stats socket at addr.
func listed(ctx context.Context, addr string) ([]observer.ListedPool, error) {
	b, err := statsock.Read(ctx, "http://"+addr+"/")
	if err != nil {
		return nil, err
	}
	var out []observer.ListedPool
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%w: %s", err, b)
	}
	return out, nil
}

// poolOf is the pool listed with master pid, with 2 workers.
func poolOf(ctx context.Context, addr string, pid int) (observer.ListedPool, error) {
	ps, err := listed(ctx, addr)
	if err != nil {
		return observer.ListedPool{}, err
	}
	for _, p := range ps {
		if p.HostPID == pid && p.Workers == 2 {
			return p, nil
		}
	}
	return observer.ListedPool{}, fmt.Errorf("no pool of master %d with 2 workers in %+v", pid, ps)
}

// The daemon's steps with --discover: a master started is listed at /,
// its JSON at its path and its series on /metrics; stopped, it goes;
// started again, it comes back under the same ID.
func TestDiscoverServesEveryPool(t *testing.T) {
	marker := fmt.Sprintf("workerstats-discover-test-%d", os.Getpid())
	first, stop := forkingMaster(t, marker)
	log := testutil.NewLog(t)
	d, err := resolveServe("--discover", "--stats", "127.0.0.1:0", "--mode", "procfs", "--discover-interval", "100ms")
	if err != nil {
		t.Fatal(err)
	}
	pools, err := bindSockets(d.pools, log.Logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeListeners(pools) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := startPools(ctx, pools, nil, nil, "test", d, log.Logger); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- serveAndMaintain(ctx, pools, nil, maintenance{refresh: 50 * time.Millisecond, sweep: time.Second, discover: 100 * time.Millisecond}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	addr := pools[0].ln.Addr().String()

	var p observer.ListedPool
	discoverWait(t, 10*time.Second, "the master listed with its 2 workers", func() (err error) {
		p, err = poolOf(ctx, addr, first)
		return err
	})
	if p.Server != "python3" || p.Path != "/pools/"+p.ID || !strings.HasPrefix(p.ID, "python3-") || p.PID != first {
		t.Errorf("listed %+v, want server python3, its path, its pid", p)
	}
	b, err := statsock.Read(ctx, "http://"+addr+p.Path)
	var st observer.Stats
	if err != nil || json.Unmarshal(b, &st) != nil || st.HostPID != first || len(st.Workers) != 2 {
		t.Fatalf("GET %s: %v, %.200s", p.Path, err, b)
	}
	b, err = statsock.Read(ctx, "http://"+addr+"/metrics")
	if want := `workerstats_up{container="",namespace="",pod="",pool="` + p.ID + `",server="python3"} 1`; err != nil || !strings.Contains(string(b), want) {
		t.Errorf("/metrics lacks %s: %v", want, err)
	}

	stop()
	discoverWait(t, 10*time.Second, "the stopped master's pool gone", func() error {
		if _, err := statsock.Read(ctx, "http://"+addr+p.Path); err == nil || !strings.Contains(err.Error(), "404") {
			return fmt.Errorf("GET %s: %v, want a 404", p.Path, err)
		}
		return nil
	})
	again, _ := forkingMaster(t, marker)
	var q observer.ListedPool
	discoverWait(t, 10*time.Second, "the restarted master listed", func() (err error) {
		q, err = poolOf(ctx, addr, again)
		return err
	})
	if q.ID != p.ID {
		t.Errorf("restarted, the pool is %s, want its ID %s again", q.ID, p.ID)
	}
	for _, want := range []string{"pool found", "pool dropped: its master exited", "pool=" + p.ID} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("the log lacks %q", want)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("serveAndMaintain: %v", err)
	}
}
