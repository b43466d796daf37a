package metrics

import (
	"context"
	"errors"
	"maps"
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
	reg.MustRegister(New(PoolLabels, func() []Pool { return []Pool{{Snapshot: snap}} }, testutil.NewLog(t).Logger))
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
// keeps its series; the slot's pids are values, never labels.
func TestWorkerSeriesBySlot(t *testing.T) {
	st := &observer.Stats{
		Workers:  []observer.Worker{{ID: 1, PID: 4001, HostPID: 9001, Requests: 7, TX: 700, RunningTime: 1_500_000, Status: "busy"}, {ID: 2, PID: 4002, HostPID: 9002, Status: "idle"}},
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
	if info := got["workerstats_worker_info"]; len(info) != 2 || label(info[1], "worker") != "2" || info[1].GetGauge().GetValue() != 1 {
		t.Errorf("worker_info: %v, want 1 for each slot", info)
	}
	if p := got["workerstats_worker_pid"]; len(p) != 2 || label(p[1], "worker") != "2" || p[1].GetGauge().GetValue() != 4002 {
		t.Errorf("worker_pid: %v, want slot 2's 4002", p)
	}
	if p := got["workerstats_worker_host_pid"]; len(p) != 2 || p[1].GetGauge().GetValue() != 9002 {
		t.Errorf("worker_host_pid: %v, want slot 2's 9002", p)
	}
	if d := got["workerstats_dropped_total"]; len(d) != 1 || label(d[0], "kind") != "connections_untracked" || d[0].GetCounter().GetValue() != 3 {
		t.Errorf("dropped: %v", d)
	}
}

// TestRequestSeriesPerPool: with request capture, the pool's requests by
// status class and one duration histogram across its workers, in seconds
// and cumulative as Prometheus has them; without it, neither.
func TestRequestSeriesPerPool(t *testing.T) {
	bounds := []uint64{5000, 100_000, 1_000_000} // µs
	st := &observer.Stats{Workers: []observer.Worker{
		{ID: 1, Exceptions: 3,
			Statuses:  &observer.Statuses{S2xx: 5, S5xx: 1, Unanswered: 2},
			Durations: &observer.Durations{Count: 6, SumUs: 250_000, BoundsUs: bounds, Counts: []uint64{4, 1, 1, 0}}},
		{ID: 2, Exceptions: 0,
			Statuses:  &observer.Statuses{S2xx: 2, S4xx: 1},
			Durations: &observer.Durations{Count: 3, SumUs: 2_010_000, BoundsUs: bounds, Counts: []uint64{1, 0, 1, 1}}},
	}}
	got := scrape(t, func(context.Context) (*observer.Stats, error) { return st, nil })
	want := map[string]float64{"2xx": 7, "3xx": 0, "4xx": 1, "5xx": 1, "other": 0, "unanswered": 2}
	by := map[string]float64{}
	for _, m := range got["workerstats_requests_total"] {
		by[label(m, "class")] = m.GetCounter().GetValue()
	}
	if len(by) != len(want) {
		t.Errorf("requests by class %v, want %v", by, want)
	}
	for class, n := range want {
		if by[class] != n {
			t.Errorf("requests of class %s: %v, want %v", class, by[class], n)
		}
	}
	if e := got["workerstats_worker_exits_total"]; len(e) != 0 {
		t.Errorf("exits %v with none", e)
	}
	if e := got["workerstats_worker_exceptions_total"]; len(e) != 2 || e[0].GetCounter().GetValue() != 3 {
		t.Errorf("exceptions: %v, want slot 1's 3", e)
	}
	hs := got["workerstats_request_duration_seconds"]
	if len(hs) != 1 {
		t.Fatalf("%d duration histograms, want one for the pool", len(hs))
	}
	h := hs[0].GetHistogram()
	if h.GetSampleCount() != 9 || h.GetSampleSum() != 2.26 {
		t.Errorf("histogram count %d sum %v, want 9 and 2.26 s", h.GetSampleCount(), h.GetSampleSum())
	}
	wantCum := map[float64]uint64{0.005: 5, 0.1: 6, 1: 8}
	for _, b := range h.GetBucket() {
		if wantCum[b.GetUpperBound()] != b.GetCumulativeCount() {
			t.Errorf("bucket le=%v: %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), wantCum[b.GetUpperBound()])
		}
	}
	if len(h.GetBucket()) != len(wantCum) {
		t.Errorf("buckets %v, want %v", h.GetBucket(), wantCum)
	}

	st.Workers[0].Statuses, st.Workers[0].Durations, st.Workers[1].Statuses, st.Workers[1].Durations = nil, nil, nil, nil
	got = scrape(t, func(context.Context) (*observer.Stats, error) { return st, nil })
	if got["workerstats_requests_total"] != nil || got["workerstats_request_duration_seconds"] != nil {
		t.Error("request series where the dump has no statuses (procfs mode)")
	}
}

// TestExitsPerPool: the workers' exits by cause, summed over the pool.
func TestExitsPerPool(t *testing.T) {
	st := &observer.Stats{Workers: []observer.Worker{
		{ID: 1, Exits: map[string]uint64{"killed_by_master": 2, "exited": 1}},
		{ID: 2, Exits: map[string]uint64{"killed_by_master": 1}},
		{ID: 3},
	}}
	got := map[string]float64{}
	for _, m := range scrape(t, func(context.Context) (*observer.Stats, error) { return st, nil })["workerstats_worker_exits_total"] {
		got[label(m, "cause")] = m.GetCounter().GetValue()
	}
	if want := map[string]float64{"killed_by_master": 3, "exited": 1}; !maps.Equal(got, want) {
		t.Errorf("exits %v, want %v", got, want)
	}
}
