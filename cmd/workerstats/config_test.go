package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/test/harness"
)

// TestConfigMistakesAreOneClearLine: a config file's mistakes end the
// daemon in one line naming the file and what to fix.
func TestConfigMistakesAreOneClearLine(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, conf string
		args       []string
		want       string
	}{
		{"no pools", "mode = \"auto\"\n", nil, "has no [[pool]]"},
		{"unknown key", "[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\nstat-http = true\n", nil, "unknown key pool.stat-http"},
		{"syntax", "[[pool]\npid = 1\n", nil, "end of table array name"},
		{"two targets", "[[pool]]\npid = 1\nname = \"uwsgi\"\nstats = \"127.0.0.1:1\"\n", nil, "[[pool]] 1: give exactly one of pid, pidfile or name"},
		{"no stats", "[[pool]]\npid = 1\n", nil, "[[pool]] 1: stats is required"},
		{"same stats", "[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n[[pool]]\nname = \"x\"\nstats = \"127.0.0.1:1\"\n", nil, "[[pool]] 2: stats 127.0.0.1:1 is already pool 1's"},
		{"bad chmod", "[[pool]]\npid = 1\nstats = \"/tmp/x.sock\"\nstats-chmod = \"rw\"\n", nil, `stats-chmod "rw" is not an octal file mode`},
		{"bad connection limit", "max-connections = -1\n[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n", nil, "--max-connections -1: give 1 to"},
		{"bad duration", "stats-timeout = \"5\"\n[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n", nil, `"5" is not a duration`},
		{"flag and config", "[[pool]]\npid = 1\nstats = \"127.0.0.1:1\"\n", []string{"--pid", "1"}, "--pid and --config exclude each other"},
	} {
		t.Run(c.name, func(t *testing.T) {
			conf := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".toml")
			harness.WriteFile(t, conf, c.conf)
			out, err := harness.RunCommand(append([]string{"serve", "--config", conf}, c.args...)...)
			if err == nil || strings.Contains(out, "\n") || !strings.HasPrefix(out, "workerstats: ") || !strings.Contains(out, c.want) {
				t.Errorf("err %v, output:\n%s\nwant one line with %q", err, out, c.want)
			}
		})
	}
	out, err := harness.RunCommand("serve", "--config", filepath.Join(dir, "missing.toml"))
	if err == nil || !strings.Contains(out, "missing.toml") || strings.Contains(out, "\n") {
		t.Errorf("missing config: %v %s", err, out)
	}
	out, err = harness.RunCommand("serve", "--pid", "1", "--name", "uwsgi")
	if err == nil || !strings.Contains(out, "give exactly one of pid, pidfile or name") {
		t.Errorf("--pid with --name: %v %s", err, out)
	}
}

// An unknown key names every key the file takes, from the structs that
// read it: none is left out of the message when one is added.
func TestConfigUnknownKeyListsEveryKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "workerstats.toml")
	if err := os.WriteFile(path, []byte("max-tranfsers = 3\n[[pool]]\npid = 1\nstats = \"127.0.0.1:1717\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadConfig(path)
	if err == nil {
		t.Fatal("an unknown key was accepted")
	}
	msg := err.Error()
	if !strings.Contains(msg, "unknown key max-tranfsers") {
		t.Errorf("the message %q does not name the unknown key", msg)
	}
	for _, typ := range []reflect.Type{reflect.TypeOf(configFile{}), reflect.TypeOf(poolOptions{})} {
		for i := range typ.NumField() {
			key, _, _ := strings.Cut(typ.Field(i).Tag.Get("toml"), ",")
			if key == "pool" {
				continue
			}
			if !strings.Contains(msg, " "+key+",") && !strings.Contains(msg, " "+key+")") {
				t.Errorf("the message leaves out the key %q: %s", key, msg)
			}
		}
	}
	if !strings.Contains(msg, "max-transfers") || !strings.Contains(msg, "capture-ring") {
		t.Errorf("the message leaves out max-transfers or capture-ring: %s", msg)
	}
}

// TestRequestDetailDefault: request detail is on unless the command line
// or the config turns it off, and off in procfs mode unless asked for (an
// error there); the config's capture-ring of earlier releases is taken,
// and said to be ignored.
func TestRequestDetailDefault(t *testing.T) {
	const pool = "[[pool]]\npid = 1\nstats = \"127.0.0.1:1717\"\n"
	for _, c := range []struct {
		name    string
		args    []string
		want    bool
		ignored int
	}{
		{"default", []string{"--pid", "1"}, true, 0},
		{"flag off", []string{"--pid", "1", "--requests=false"}, false, 0},
		{"procfs", []string{"--pid", "1", "--mode", "procfs"}, false, 0},
		{"config off", []string{"--config", writeConfig(t, "requests = false\n"+pool)}, false, 0},
		{"config off, flag on", []string{"--config", writeConfig(t, "requests = false\n"+pool), "--requests"}, true, 0},
		{"config's capture-ring", []string{"--config", writeConfig(t, "capture-ring = 1048576\n"+pool)}, true, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := resolveServe(c.args...)
			if err != nil {
				t.Fatal(err)
			}
			if d.requests != c.want || len(d.ignored) != c.ignored {
				t.Errorf("requests %v, ignored %q; want %v and %d ignored", d.requests, d.ignored, c.want, c.ignored)
			}
		})
	}
}
