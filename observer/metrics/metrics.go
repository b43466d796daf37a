// Package metrics exposes pools' dumps as Prometheus metrics: the one
// part of observer that needs the Prometheus client.
package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/container"
)

// Pool is one pool as the collector reads it: its dump, and who it is.
type Pool struct {
	// ID and Server name a discovered pool (serve --discover); "" for a
	// pool on a stats socket of its own.
	ID, Server string
	// Container is who the pool is as the daemon found it; nil takes
	// the dump's (none while the pool waits for its master).
	Container *container.Identity
	Snapshot  func(ctx context.Context) (*observer.Stats, error)
}

// Label is a label every series of a pool carries: its name, and its
// value for a pool and its dump (st is nil when the dump could not be
// built).
type Label struct {
	Name  string
	Value func(p Pool, st *observer.Stats) string
}

// Labels are every label a pool's series may carry, by name: pool and
// server (a discovered pool's ID and server); namespace, pod and
// container (the container's name in its pod) on a Kubernetes node, and
// owner_kind and owner_name (what made the pod: a Deployment, a
// StatefulSet...); container_runtime, container_id and pod_uid from the
// cgroup. Each is "" where it does not apply. Never a pid: a label that
// changes with every respawn would make series without end.
var Labels = []Label{
	{"pool", func(p Pool, _ *observer.Stats) string { return p.ID }},
	{"server", func(p Pool, _ *observer.Stats) string { return p.Server }},
	{"namespace", func(_ Pool, st *observer.Stats) string { return pod(st).Namespace }},
	{"pod", func(_ Pool, st *observer.Stats) string { return pod(st).Name }},
	{"container", func(_ Pool, st *observer.Stats) string { return pod(st).Container }},
	{"owner_kind", func(_ Pool, st *observer.Stats) string { return owner(st).Kind }},
	{"owner_name", func(_ Pool, st *observer.Stats) string { return owner(st).Name }},
	{"container_runtime", func(p Pool, st *observer.Stats) string { return identity(p, st).Runtime }},
	{"container_id", func(p Pool, st *observer.Stats) string { return identity(p, st).ID }},
	{"pod_uid", func(p Pool, st *observer.Stats) string { return identity(p, st).PodUID }},
}

// DefaultLabels name the labels of a collector unless told otherwise: who
// a pool is, by the names an operator knows it by.
var DefaultLabels = []string{"pool", "server", "namespace", "pod", "container"}

// PoolLabels are the DefaultLabels.
var PoolLabels = mustSelect(DefaultLabels)

// Select returns the Labels of names, in Labels' order; an unknown name
// is an error that lists them.
func Select(names []string) ([]Label, error) {
	var out []Label
	for _, n := range names {
		if !slices.ContainsFunc(Labels, func(l Label) bool { return l.Name == n }) {
			return nil, fmt.Errorf("%q is not a label of workerstats' series: choose among %s", n, strings.Join(LabelNames(), ", "))
		}
	}
	for _, l := range Labels {
		if slices.Contains(names, l.Name) {
			out = append(out, l)
		}
	}
	return out, nil
}

// LabelNames are the names of Labels.
func LabelNames() []string {
	names := make([]string, len(Labels))
	for i, l := range Labels {
		names[i] = l.Name
	}
	return names
}

func mustSelect(names []string) []Label {
	l, err := Select(names)
	if err != nil {
		panic(err)
	}
	return l
}

// pod is the pod a dump names, or none.
func pod(st *observer.Stats) observer.Pod {
	if st == nil || st.Pod == nil {
		return observer.Pod{}
	}
	return *st.Pod
}

// owner is what made the pod a dump names, or none.
func owner(st *observer.Stats) observer.Owner {
	if p := pod(st); p.Owner != nil {
		return *p.Owner
	}
	return observer.Owner{}
}

// identity is who pool p is: as the daemon found it, else as its dump says.
func identity(p Pool, st *observer.Stats) container.Identity {
	switch {
	case p.Container != nil:
		return *p.Container
	case st != nil && st.Container != nil:
		return *st.Container
	}
	return container.Identity{}
}

// Collector exposes the dumps of every pool Pools returns, on one
// /metrics: each series carries the pool's labels, so pools sharing a
// name never collide. Counters are cumulative per worker slot (they
// survive respawns, as uWSGI's do), so a slot is labelled by its id, and
// its process's pids are the values of workerstats_worker_pid and
// workerstats_worker_host_pid, keeping series stable across respawns.
type Collector struct {
	pools  func() []Pool
	labels []Label
	log    *slog.Logger
	d      descs
}

// New returns a collector of the pools pools returns (called at every
// scrape), their series labelled by labels (PoolLabels, or more).
func New(labels []Label, pools func() []Pool, log *slog.Logger) *Collector {
	names := make([]string, len(labels))
	for i, l := range labels {
		names[i] = l.Name
	}
	if log == nil {
		log = slog.Default()
	}
	return &Collector{pools: pools, labels: labels, log: log, d: newDescs(names)}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.d.all() {
		ch <- d
	}
}

// Collect implements prometheus.Collector. What the kernel side dropped
// is the daemon's, not a pool's: it is sent once, from the first dump.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	dropped := false
	for _, p := range c.pools() {
		st, err := p.Snapshot(context.Background())
		if err != nil {
			c.log.Error("cannot build stats for metrics", "pool", p.ID, "error", err)
			st = nil
		}
		e := emitter{ch: ch, pool: c.values(p, st)}
		if st == nil {
			e.gauge(c.d.up, 0)
			continue
		}
		c.collectPool(e, st)
		c.collectWorkers(e, st.Workers)
		c.requestSeries(e, st.Workers)
		if !dropped {
			for kind, n := range st.Observer.Dropped {
				ch <- prometheus.MustNewConstMetric(c.d.dropped, prometheus.CounterValue, float64(n), kind)
			}
			dropped = true
		}
	}
}

// values are pool p's label values, in the collector's order.
func (c *Collector) values(p Pool, st *observer.Stats) []string {
	v := make([]string, len(c.labels))
	for i, l := range c.labels {
		v[i] = l.Value(p, st)
	}
	return v
}

// emitter sends one pool's series, its label values first.
type emitter struct {
	ch   chan<- prometheus.Metric
	pool []string
}

func (e emitter) send(d *prometheus.Desc, t prometheus.ValueType, v float64, l ...string) {
	e.ch <- prometheus.MustNewConstMetric(d, t, v, append(e.pool[:len(e.pool):len(e.pool)], l...)...)
}

func (e emitter) gauge(d *prometheus.Desc, v float64, l ...string) {
	e.send(d, prometheus.GaugeValue, v, l...)
}

func (e emitter) counter(d *prometheus.Desc, v float64, l ...string) {
	e.send(d, prometheus.CounterValue, v, l...)
}

// histogram sends du as a Prometheus histogram, whose buckets are
// cumulative, by upper bound in seconds.
func (e emitter) histogram(d *prometheus.Desc, du *observer.Durations, l ...string) {
	cumulative := make(map[float64]uint64, len(du.BoundsUs))
	var below uint64
	for i, b := range du.BoundsUs {
		if i < len(du.Counts) {
			below += du.Counts[i]
		}
		cumulative[float64(b)/1e6] = below
	}
	e.ch <- prometheus.MustNewConstHistogram(d, du.Count, float64(du.SumUs)/1e6, cumulative, append(e.pool[:len(e.pool):len(e.pool)], l...)...)
}

// collectPool sends the pool-wide series: up, load, listen queues, exits.
func (c *Collector) collectPool(e emitter, st *observer.Stats) {
	up := 1.0
	if st.Observer.Waiting != "" {
		up = 0
	}
	e.gauge(c.d.up, up)
	e.gauge(c.d.listenQueue, float64(st.ListenQueue))
	e.gauge(c.d.load, float64(st.Load))
	e.counter(c.d.queueErrors, float64(st.ListenQueueErrors))
	for _, s := range st.Sockets {
		e.gauge(c.d.socketQueue, float64(s.Queue), s.Name)
		e.gauge(c.d.socketMax, float64(s.MaxQueue), s.Name)
		if s.QueueWait != nil {
			e.histogram(c.d.queueWait, s.QueueWait, s.Name)
		}
	}
	exits := map[string]uint64{}
	for _, w := range st.Workers {
		for cause, n := range w.Exits {
			exits[cause] += n
		}
	}
	for cause, n := range exits {
		e.counter(c.d.exits, float64(n), cause)
	}
}

// collectWorkers sends each slot's series, labelled by the slot's id.
func (c *Collector) collectWorkers(e emitter, workers []observer.Worker) {
	for _, w := range workers {
		id := strconv.Itoa(w.ID)
		e.gauge(c.d.workerInfo, 1, id)
		e.gauge(c.d.workerPID, float64(w.PID), id)
		e.gauge(c.d.workerHostPID, float64(w.HostPID), id)
		e.counter(c.d.requests, float64(w.Requests), id)
		e.counter(c.d.tx, float64(w.TX), id)
		e.counter(c.d.rx, float64(w.RX), id)
		e.counter(c.d.accepted, float64(w.Accepted), id)
		e.counter(c.d.running, float64(w.RunningTime)/1e6, id)
		e.gauge(c.d.avgRT, float64(w.AvgRT)/1e6, id)
		busy := 0.0
		if w.Status == "busy" {
			busy = 1
		}
		e.gauge(c.d.busy, busy, id)
		e.gauge(c.d.rss, float64(w.RSS), id)
		e.gauge(c.d.vsz, float64(w.VSZ), id)
		e.counter(c.d.respawns, float64(w.RespawnCount), id)
		e.gauge(c.d.lastSpawn, float64(w.LastSpawn), id)
		e.counter(c.d.exceptions, float64(w.Exceptions), id)
	}
}

// requestSeries sends the pool's requests by status class and their
// durations, from what request capture saw; nothing without it. They are
// per pool: per-worker histograms would multiply the series by the slots.
func (c *Collector) requestSeries(e emitter, workers []observer.Worker) {
	var by observer.Statuses
	sum := observer.Durations{}
	seen := false
	for _, w := range workers {
		if w.Statuses == nil || w.Durations == nil {
			continue
		}
		seen = true
		s := w.Statuses
		by.S2xx, by.S3xx, by.S4xx, by.S5xx = by.S2xx+s.S2xx, by.S3xx+s.S3xx, by.S4xx+s.S4xx, by.S5xx+s.S5xx
		by.Other, by.Unanswered = by.Other+s.Other, by.Unanswered+s.Unanswered
		d := w.Durations
		sum.Count, sum.SumUs, sum.BoundsUs = sum.Count+d.Count, sum.SumUs+d.SumUs, d.BoundsUs
		if sum.Counts == nil {
			sum.Counts = make([]uint64, len(d.Counts))
		}
		for i := range min(len(sum.Counts), len(d.Counts)) {
			sum.Counts[i] += d.Counts[i]
		}
	}
	if !seen {
		return
	}
	for class, n := range map[string]uint64{"2xx": by.S2xx, "3xx": by.S3xx, "4xx": by.S4xx, "5xx": by.S5xx, "other": by.Other, "unanswered": by.Unanswered} {
		e.counter(c.d.byStatus, float64(n), class)
	}
	e.histogram(c.d.duration, &sum)
}
