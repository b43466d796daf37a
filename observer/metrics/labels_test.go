package metrics

import (
	"context"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/container"
)

// One collector over several pools: every series labelled by its pool
// (pool, server, and on Kubernetes its pod), never by a pid; what the
// kernel dropped once; labels chosen among those a pool has.

const testCID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// threePools are discovered pools of 4 workers and one socket each: a
// uWSGI on the host, a gunicorn in a Kubernetes pod, and a second uWSGI
// of the same command (its ID with -2).
func threePools() []Pool {
	pool := func(id, server string, c *container.Identity, pid0 int) Pool {
		st := &observer.Stats{
			PID: 1, HostPID: pid0, Container: c, Pod: shopPod(c),
			Sockets:  []observer.Socket{{Name: "127.0.0.1:8000", Proto: "tcp", Queue: 1, MaxQueue: 100}},
			Observer: observer.ObserverInfo{Dropped: map[string]uint64{"connections_untracked": 2, "workers_untracked": 0}},
		}
		for i := 1; i <= 4; i++ {
			st.Workers = append(st.Workers, observer.Worker{ID: i, PID: 1 + i, HostPID: pid0 + i, Requests: uint64(10 * i), Status: "idle"})
		}
		return Pool{ID: id, Server: server, Container: c, Snapshot: func(context.Context) (*observer.Stats, error) { return st, nil }}
	}
	return []Pool{
		pool("uwsgi-0a1b2c3d", "uwsgi", &container.Identity{Cgroup: "/system.slice/uwsgi.service"}, 1000),
		pool("gunicorn-4e5f6a7b", "gunicorn", &container.Identity{Cgroup: "/kubepods/burstable/podp/" + testCID, ID: testCID, PodUID: "p", QoS: "burstable"}, 2000),
		pool("uwsgi-0a1b2c3d-2", "uwsgi", &container.Identity{Cgroup: "/system.slice/uwsgi.service"}, 3000),
	}
}

// shopPod is the pod of c, a container of a pod: web's, a Deployment's.
func shopPod(c *container.Identity) *observer.Pod {
	if c.PodUID == "" {
		return nil
	}
	return &observer.Pod{Namespace: "shop", Name: "web-7d9f8b6c5-x2x4z", Container: "app",
		Owner: &observer.Owner{Kind: "Deployment", Name: "web"}}
}

// scrapeText is /metrics as Prometheus reads it, in the text format.
func scrapeText(t *testing.T, c *Collector) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

// samples are the lines of a scrape that are samples.
func samples(text string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func TestPoolLabelsOnEverySeries(t *testing.T) {
	pools := threePools()
	c := New(PoolLabels, func() []Pool { return pools }, testutil.NewLog(t).Logger)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather() // fails on two series of one name and labels
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var names []string
			for _, l := range m.GetLabel() {
				names = append(names, l.GetName())
			}
			if slices.ContainsFunc(names, func(n string) bool { return strings.Contains(n, "pid") }) {
				t.Errorf("%s has a pid label: %v", mf.GetName(), names)
			}
			if mf.GetName() == "workerstats_dropped_total" {
				if !slices.Equal(names, []string{"kind"}) {
					t.Errorf("dropped_total labelled %v, want kind alone: the kernel's, not a pool's", names)
				}
				continue
			}
			for _, want := range DefaultLabels {
				if !slices.Contains(names, want) {
					t.Errorf("%s lacks the label %s: %v", mf.GetName(), want, names)
				}
			}
		}
	}
	text := scrapeText(t, c)
	for _, want := range []string{
		`workerstats_worker_requests_total{container="",namespace="",pod="",pool="uwsgi-0a1b2c3d",server="uwsgi",worker="4"} 40`,
		`workerstats_worker_host_pid{container="",namespace="",pod="",pool="uwsgi-0a1b2c3d-2",server="uwsgi",worker="1"} 3001`,
		`workerstats_worker_pid{container="app",namespace="shop",pod="web-7d9f8b6c5-x2x4z",pool="gunicorn-4e5f6a7b",server="gunicorn",worker="2"} 3`,
		`workerstats_up{container="app",namespace="shop",pod="web-7d9f8b6c5-x2x4z",pool="gunicorn-4e5f6a7b",server="gunicorn"} 1`,
		`workerstats_dropped_total{kind="connections_untracked"} 2`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// The series budget: per pool up, listen_queue, load,
	// listen_queue_errors_total and its socket's queue and backlog (6),
	// and per worker slot 15; what was dropped once, by kind.
	n := len(samples(text))
	if want := 3*(6+4*15) + 2; n != want {
		t.Errorf("%d samples for 3 pools of 4 workers, want %d:\n%s", n, want, text)
	}
	t.Logf("3 pools of 4 workers, one socket each: %d samples", n)
}

// A pool of its own socket: no pool or server, its container from its
// dump; none while it waits (nor a dump).
func TestSinglePoolLabels(t *testing.T) {
	st := &observer.Stats{Container: &container.Identity{Cgroup: "/docker/" + testCID, Runtime: "docker", ID: testCID}}
	var err error
	containers, _ := Select([]string{"pool", "server", "container_runtime", "container_id", "pod_uid"})
	c := New(containers, func() []Pool {
		return []Pool{{Snapshot: func(context.Context) (*observer.Stats, error) { return st, err }}}
	}, testutil.NewLog(t).Logger)
	want := `workerstats_up{container_id="` + testCID + `",container_runtime="docker",pod_uid="",pool="",server=""} 1`
	if text := scrapeText(t, c); !strings.Contains(text, want+"\n") {
		t.Errorf("/metrics lacks %s:\n%s", want, text)
	}
	st, err = nil, fmt.Errorf("procfs gone")
	want = `workerstats_up{container_id="",container_runtime="",pod_uid="",pool="",server=""} 0`
	if text := scrapeText(t, c); !strings.Contains(text, want+"\n") || len(samples(text)) != 1 {
		t.Errorf("a dump that failed: want %s alone:\n%s", want, text)
	}
}

// The labels are chosen: the owner of a pod (opt-in) comes as two, and
// a name no series has is one clear error.
func TestChosenLabels(t *testing.T) {
	labels, err := Select([]string{"owner_name", "pool", "owner_kind", "namespace"})
	if err != nil {
		t.Fatal(err)
	}
	pools := threePools()
	text := scrapeText(t, New(labels, func() []Pool { return pools }, testutil.NewLog(t).Logger))
	for _, want := range []string{
		`workerstats_load{namespace="shop",owner_kind="Deployment",owner_name="web",pool="gunicorn-4e5f6a7b"} 0`,
		`workerstats_load{namespace="",owner_kind="",owner_name="",pool="uwsgi-0a1b2c3d"} 0`,
	} {
		if !strings.Contains(text, want+"\n") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if _, err := Select([]string{"pool", "pid"}); err == nil || !strings.Contains(err.Error(), `"pid" is not a label`) {
		t.Errorf("Select(pid): %v, want an error naming it", err)
	}
}

// No pool: nothing but the help, and no error.
func TestNoPools(t *testing.T) {
	text := scrapeText(t, New(PoolLabels, func() []Pool { return nil }, nil))
	if s := samples(text); len(s) != 0 {
		t.Errorf("samples with no pool: %v", s)
	}
}
