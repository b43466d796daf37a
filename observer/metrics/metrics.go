// Package metrics exposes a pool's dump as Prometheus metrics: the one
// part of observer that needs the Prometheus client.
package metrics

import (
	"context"
	"log/slog"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/workerstats/workerstats/observer"
)

// Collector exposes a pool's dump as Prometheus metrics. Counters are
// cumulative per worker slot (they survive respawns, as uWSGI's do), so a
// slot is labelled by its id; its current pid is a label of
// workerstats_worker_info only, keeping series stable across respawns.
type Collector struct {
	Snapshot func(ctx context.Context) (*observer.Stats, error)
	Log      *slog.Logger
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("workerstats_"+name, help, labels, nil)
}

var (
	descUp           = desc("up", "1 when the pool's master is watched and its stats could be read; 0 while it is missing (see the JSON's observer.waiting).")
	descListenQueue  = desc("listen_queue", "Largest accept queue among the pool's listening sockets.")
	descLoad         = desc("load", "Requests in progress across the pool.")
	descSocketQueue  = desc("socket_queue", "Connections waiting in a listening socket's accept queue.", "socket")
	descSocketMax    = desc("socket_max_queue", "Backlog of a listening socket.", "socket")
	descDropped      = desc("dropped_total", "Events the kernel side could not record, by kind.", "kind")
	descWorkerInfo   = desc("worker_info", "The process currently in a worker slot.", "worker", "pid")
	descRequests     = desc("worker_requests_total", "Requests served by the worker slot.", "worker")
	descTx           = desc("worker_transmitted_bytes_total", "Bytes the worker sent on connections it accepted.", "worker")
	descRx           = desc("worker_received_bytes_total", "Bytes the worker received on connections it accepted.", "worker")
	descAccepted     = desc("worker_accepted_connections_total", "Connections the worker accepted.", "worker")
	descRunning      = desc("worker_request_seconds_total", "Time the worker spent in requests.", "worker")
	descAvgRT        = desc("worker_average_response_seconds", "uWSGI's running average of the worker's response time.", "worker")
	descBusy         = desc("worker_busy", "1 while the worker has a request in progress.", "worker")
	descRSS          = desc("worker_resident_memory_bytes", "Resident memory of the worker process.", "worker")
	descVSZ          = desc("worker_virtual_memory_bytes", "Virtual memory of the worker process.", "worker")
	descRespawns     = desc("worker_respawns_total", "Processes that have held the worker slot.", "worker")
	descLastSpawn    = desc("worker_last_spawn_timestamp_seconds", "Start time of the slot's current process.", "worker")
	descQueueErrors  = desc("listen_queue_errors_total", "Connection attempts the pool's TCP listening sockets refused with their accept queue full, as the kernel counts them per socket: a SYN once, a handshake's last ACK twice (uWSGI's listen_queue_errors).")
	descExits        = desc("worker_exits_total", "Worker processes of the pool that ended, by cause: exited, exited_error, killed_by_master, _kernel, _itself, _other or _unknown (since the daemon started).", "cause")
	descExceptions   = desc("worker_exceptions_total", "Requests the worker slot answered with a 5xx (seen with serve --requests) or never answered.", "worker")
	descByStatus     = desc("requests_total", "Requests across the pool by how they ended: the status class of their answer, other (none to read), or unanswered (serve --requests; since the daemon started).", "class")
	descDuration     = desc("request_duration_seconds", "Answered requests across the pool, first request byte to last response byte (serve --requests; since the daemon started).")
	descQueueWait    = desc("queue_wait_seconds", "Time the connections the pool's workers accepted waited in a TCP listening socket's accept queue, from the end of the handshake to the accept.", "socket")
	descAllDescribed = []*prometheus.Desc{descUp, descListenQueue, descLoad, descSocketQueue, descSocketMax, descDropped,
		descWorkerInfo, descRequests, descTx, descRx, descAccepted, descRunning, descAvgRT, descBusy, descRSS, descVSZ,
		descRespawns, descLastSpawn, descExceptions, descByStatus, descDuration, descQueueWait, descQueueErrors, descExits}
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range descAllDescribed {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.Snapshot(context.Background())
	if err != nil {
		if c.Log != nil {
			c.Log.Error("cannot build stats for metrics", "error", err)
		}
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	up := 1.0
	if st.Observer.Waiting != "" {
		up = 0
	}
	gauge(descUp, up)
	gauge(descListenQueue, float64(st.ListenQueue))
	gauge(descLoad, float64(st.Load))
	counter(descQueueErrors, float64(st.ListenQueueErrors))
	for _, s := range st.Sockets {
		gauge(descSocketQueue, float64(s.Queue), s.Name)
		gauge(descSocketMax, float64(s.MaxQueue), s.Name)
		if s.QueueWait != nil {
			ch <- histogram(descQueueWait, s.QueueWait, s.Name)
		}
	}
	for kind, n := range st.Observer.Dropped {
		counter(descDropped, float64(n), kind)
	}
	for _, w := range st.Workers {
		id := strconv.Itoa(w.ID)
		gauge(descWorkerInfo, 1, id, strconv.Itoa(w.PID))
		counter(descRequests, float64(w.Requests), id)
		counter(descTx, float64(w.TX), id)
		counter(descRx, float64(w.RX), id)
		counter(descAccepted, float64(w.Accepted), id)
		counter(descRunning, float64(w.RunningTime)/1e6, id)
		gauge(descAvgRT, float64(w.AvgRT)/1e6, id)
		busy := 0.0
		if w.Status == "busy" {
			busy = 1
		}
		gauge(descBusy, busy, id)
		gauge(descRSS, float64(w.RSS), id)
		gauge(descVSZ, float64(w.VSZ), id)
		counter(descRespawns, float64(w.RespawnCount), id)
		gauge(descLastSpawn, float64(w.LastSpawn), id)
		counter(descExceptions, float64(w.Exceptions), id)
	}
	requestSeries(ch, st.Workers)
	exits := map[string]uint64{}
	for _, w := range st.Workers {
		for cause, n := range w.Exits {
			exits[cause] += n
		}
	}
	for cause, n := range exits {
		counter(descExits, float64(n), cause)
	}
}

// requestSeries sends the pool's requests by status class and their
// durations, from what request capture saw; nothing without it. They are
// per pool: per-worker histograms would multiply the series by the slots.
func requestSeries(ch chan<- prometheus.Metric, workers []observer.Worker) {
	var by observer.Statuses
	var count, sumUs uint64
	var buckets []uint64
	var bounds []uint64
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
		count, sumUs, bounds = count+d.Count, sumUs+d.SumUs, d.BoundsUs
		if buckets == nil {
			buckets = make([]uint64, len(d.Counts))
		}
		for i := range min(len(buckets), len(d.Counts)) {
			buckets[i] += d.Counts[i]
		}
	}
	if !seen {
		return
	}
	for class, n := range map[string]uint64{"2xx": by.S2xx, "3xx": by.S3xx, "4xx": by.S4xx, "5xx": by.S5xx, "other": by.Other, "unanswered": by.Unanswered} {
		ch <- prometheus.MustNewConstMetric(descByStatus, prometheus.CounterValue, float64(n), class)
	}
	ch <- histogram(descDuration, &observer.Durations{Count: count, SumUs: sumUs, BoundsUs: bounds, Counts: buckets})
}

// histogram is d as a Prometheus histogram, whose buckets are cumulative,
// by upper bound in seconds.
func histogram(desc *prometheus.Desc, d *observer.Durations, labels ...string) prometheus.Metric {
	cumulative := make(map[float64]uint64, len(d.BoundsUs))
	var below uint64
	for i, b := range d.BoundsUs {
		if i < len(d.Counts) {
			below += d.Counts[i]
		}
		cumulative[float64(b)/1e6] = below
	}
	return prometheus.MustNewConstHistogram(desc, d.Count, float64(d.SumUs)/1e6, cumulative, labels...)
}
