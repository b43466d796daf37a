package observer

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// hostProcs is a host as discovery sees it: init, a shell, a uWSGI pool, a
// PHP-FPM pool (versioned command name, master title), an nginx pool
// (workers retitled), gunicorn run by python3, a lone uwsgi command (a
// `uwsgi --connect-and-read`) and the daemon itself with a forked child.
func hostProcs() []fakeProc {
	return []fakeProc{
		{pid: 1, ppid: 0, comm: "systemd", startTicks: 1, cmdline: []string{"/sbin/init"}, tasks: map[int][]int{1: {300, 400, 500, 600, 700, 900}}},
		{pid: 50, ppid: 1, comm: "bash", startTicks: 5, cmdline: []string{"-bash"}, tasks: map[int][]int{50: {800}}},
		{pid: 300, ppid: 1, comm: "uwsgi", startTicks: 30, cmdline: []string{"uwsgi", "--ini", "app.ini"}, tasks: map[int][]int{300: {301, 302}}},
		{pid: 301, ppid: 300, comm: "uwsgi", startTicks: 31, cmdline: []string{"uwsgi", "--ini", "app.ini"}},
		{pid: 302, ppid: 300, comm: "uwsgi", startTicks: 32, cmdline: []string{"uwsgi", "--ini", "app.ini"}},
		{pid: 400, ppid: 1, comm: "php-fpm8.2", startTicks: 40, cmdline: []string{"php-fpm: master process (/etc/php/8.2/fpm/php-fpm.conf)"}, tasks: map[int][]int{400: {401, 402, 403}}},
		{pid: 401, ppid: 400, comm: "php-fpm8.2", startTicks: 41, cmdline: []string{"php-fpm: pool www"}},
		{pid: 402, ppid: 400, comm: "php-fpm8.2", startTicks: 42, cmdline: []string{"php-fpm: pool www"}},
		{pid: 403, ppid: 400, comm: "php-fpm8.2", startTicks: 43, cmdline: []string{"php-fpm: pool www"}},
		{pid: 500, ppid: 1, comm: "nginx", startTicks: 50, cmdline: []string{"nginx: master process /usr/sbin/nginx -g daemon on;"}, tasks: map[int][]int{500: {501}}},
		{pid: 501, ppid: 500, comm: "nginx", startTicks: 51, cmdline: []string{"nginx: worker process"}},
		{pid: 600, ppid: 1, comm: "gunicorn", startTicks: 60, cmdline: []string{"/usr/bin/python3", "/usr/bin/gunicorn", "app:app"}, tasks: map[int][]int{600: {601, 602}}},
		{pid: 601, ppid: 600, comm: "gunicorn", startTicks: 61, cmdline: []string{"/usr/bin/python3", "/usr/bin/gunicorn", "app:app"}},
		{pid: 602, ppid: 600, comm: "gunicorn", startTicks: 62, cmdline: []string{"/usr/bin/python3", "/usr/bin/gunicorn", "app:app"}},
		{pid: 800, ppid: 50, comm: "uwsgi", startTicks: 80, cmdline: []string{"uwsgi", "--connect-and-read", "127.0.0.1:1717"}},
		{pid: 900, ppid: 1, comm: "workerstats", startTicks: 90, cmdline: []string{"workerstats", "serve"}, tasks: map[int][]int{900: {901}}},
		{pid: 901, ppid: 900, comm: "workerstats", startTicks: 91, cmdline: []string{"workerstats", "serve"}},
	}
}

func TestTargetFindByName(t *testing.T) {
	fs := newProcfs(t, hostProcs()...)
	for _, tc := range []struct {
		name string
		want int
	}{
		{"uwsgi", 300},      // not the lone `uwsgi --connect-and-read` (800): it has no workers
		{"php-fpm", 400},    // comm php-fpm8.2, title "php-fpm: master process"
		{"php-fpm8.2", 400}, // the command name as ps shows it
		{"nginx", 500},      // the master, not its worker
		{"gunicorn", 600},   // the script python3 runs
	} {
		got, err := Target{Name: tc.name}.Find(fs)
		if err != nil || got.PID != tc.want {
			t.Errorf("--name %s: %+v, %v; want pid %d", tc.name, got, err, tc.want)
		}
	}
	if _, err := (Target{Name: "postgres"}).Find(fs); !errors.Is(err, ErrNoTarget) || !strings.Contains(err.Error(), "no process named postgres") {
		t.Errorf("--name postgres: err = %v, want ErrNoTarget naming it", err)
	}
}

func TestTargetFindByNameAmbiguous(t *testing.T) {
	procs := append(hostProcs(),
		fakeProc{pid: 700, ppid: 1, comm: "uwsgi", startTicks: 70, cmdline: []string{"uwsgi", "--ini", "other.ini"}, tasks: map[int][]int{700: {701}}},
		fakeProc{pid: 701, ppid: 700, comm: "uwsgi", startTicks: 71, cmdline: []string{"uwsgi", "--ini", "other.ini"}},
	)
	fs := newProcfs(t, procs...)
	_, err := Target{Name: "uwsgi"}.Find(fs)
	if !errors.Is(err, ErrSeveralMasters) || !strings.Contains(err.Error(), "pids 300, 700") {
		t.Errorf("two uwsgi masters: err = %v, want ErrSeveralMasters naming both pids (the command adds how to choose)", err)
	}
}

func TestTargetFindByPIDFile(t *testing.T) {
	fs := newProcfs(t, hostProcs()...)
	dir := t.TempDir()
	write := func(name, content string, mtime time.Time) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// The fixture booted at fixtureBtime; pid 300 started 0.3 s later.
	fresh := time.Unix(fixtureBtime+10, 0)
	good := write("good.pid", "300\n", fresh)
	if got, err := (Target{PIDFile: good}).Find(fs); err != nil || got != (Proc{PID: 300, StartTicks: 30}) {
		t.Errorf("pidfile naming 300: %+v, %v", got, err)
	}
	for _, tc := range []struct {
		file     string
		noTarget bool // the master may still come: wait for it
		want     string
	}{
		{filepath.Join(dir, "missing.pid"), true, "does not exist"},
		{write("empty.pid", "", fresh), true, "is empty"},
		{write("gone.pid", "4321\n", fresh), true, "names pid 4321, which is not running"},
		// Written before pid 500 started: left by a master that died, its
		// pid since reused.
		{write("stale.pid", "500\n", time.Unix(fixtureBtime-100, 0)), true, "is stale"},
		{write("junk.pid", "uwsgi\n", fresh), false, `holds "uwsgi", not a pid`},
	} {
		_, err := Target{PIDFile: tc.file}.Find(fs)
		if err == nil || errors.Is(err, ErrNoTarget) != tc.noTarget || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("pidfile %s: err = %v, want %q (waiting: %v)", filepath.Base(tc.file), err, tc.want, tc.noTarget)
		}
	}
}

func TestTargetValid(t *testing.T) {
	for _, tc := range []struct {
		t  Target
		ok bool
	}{
		{Target{PID: 1}, true},
		{Target{PIDFile: "/run/x.pid"}, true},
		{Target{Name: "uwsgi"}, true},
		{Target{}, false},
		{Target{PID: -3}, false},
		{Target{PID: 1, Name: "uwsgi"}, false},
	} {
		if err := tc.t.Valid(); (err == nil) != tc.ok {
			t.Errorf("%+v: Valid() = %v, want ok %v", tc.t, err, tc.ok)
		}
	}
}

func TestCandidatesListPreforkMasters(t *testing.T) {
	fs := newProcfs(t, hostProcs()...)
	got, err := Candidates(fs, 900)
	if err != nil {
		t.Fatal(err)
	}
	want := []Candidate{
		{PID: 400, Name: "php-fpm8.2", Workers: 3},
		{PID: 300, Name: "uwsgi", Workers: 2},
		{PID: 600, Name: "gunicorn", Workers: 2},
		{PID: 500, Name: "nginx", Workers: 1},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("candidates = %+v\nwant %+v (the daemon itself left out)", got, want)
	}
}
