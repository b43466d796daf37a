package metrics

import (
	"context"
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// scrape gathers what Prometheus would read from a Collector over snap.
func scrape(t *testing.T, snap func(context.Context) (*observer.Stats, error)) map[string][]*dto.Metric {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(&Collector{Snapshot: snap, Log: testutil.NewLog(t).Logger})
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]*dto.Metric{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf.GetMetric()
	}
	return out
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// TestUpFollowsTheMaster: workerstats_up is 1 while the master is watched,
// 0 while the pool waits for it and when the dump cannot be built.
func TestUpFollowsTheMaster(t *testing.T) {
	for _, c := range []struct {
		name string
		snap func(context.Context) (*observer.Stats, error)
		want float64
	}{
		{"watched", func(context.Context) (*observer.Stats, error) { return &observer.Stats{}, nil }, 1},
		{"waiting", func(context.Context) (*observer.Stats, error) {
			return &observer.Stats{Observer: observer.ObserverInfo{Waiting: "master pid 4000 exited"}}, nil
		}, 0},
		{"failing", func(context.Context) (*observer.Stats, error) { return nil, errors.New("procfs gone") }, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := scrape(t, c.snap)["workerstats_up"]
			if len(up) != 1 || up[0].GetGauge().GetValue() != c.want {
				t.Errorf("workerstats_up = %v, want %v", up, c.want)
			}
		})
	}
}

// TestWorkerSeriesBySlot: counters are labelled by slot id, so a respawn
// keeps its series; the slot's pid is only on workerstats_worker_info.
func TestWorkerSeriesBySlot(t *testing.T) {
	st := &observer.Stats{
		Workers:  []observer.Worker{{ID: 1, PID: 4001, Requests: 7, TX: 700, RunningTime: 1_500_000, Status: "busy"}, {ID: 2, PID: 4002, Status: "idle"}},
		Observer: observer.ObserverInfo{Dropped: map[string]uint64{"connections_untracked": 3}},
	}
	got := scrape(t, func(context.Context) (*observer.Stats, error) { return st, nil })
	req := got["workerstats_worker_requests_total"]
	if len(req) != 2 || label(req[0], "worker") != "1" || req[0].GetCounter().GetValue() != 7 || label(req[0], "pid") != "" {
		t.Errorf("requests: %v, want slot 1 with 7, no pid label", req)
	}
	if s := got["workerstats_worker_request_seconds_total"]; s[0].GetCounter().GetValue() != 1.5 {
		t.Errorf("request seconds of slot 1: %v, want 1.5 (running_time is in us)", s[0])
	}
	if b := got["workerstats_worker_busy"]; b[0].GetGauge().GetValue() != 1 || b[1].GetGauge().GetValue() != 0 {
		t.Errorf("busy: %v, want slot 1 busy and slot 2 idle", b)
	}
	if info := got["workerstats_worker_info"]; label(info[1], "pid") != "4002" {
		t.Errorf("worker_info: %v, want slot 2's pid 4002", info)
	}
	if d := got["workerstats_dropped_total"]; len(d) != 1 || label(d[0], "kind") != "connections_untracked" || d[0].GetCounter().GetValue() != 3 {
		t.Errorf("dropped: %v", d)
	}
}
