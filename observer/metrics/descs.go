package metrics

import "github.com/prometheus/client_golang/prometheus"

// descs are the collector's metric descriptors, every one of a pool's
// labelled by the pool's label names first.
type descs struct {
	up, listenQueue, load, socketQueue, socketMax, queueErrors, queueWait, exits *prometheus.Desc
	workerInfo, workerPID, workerHostPID                                         *prometheus.Desc
	requests, tx, rx, accepted, running, avgRT, busy, rss, vsz                   *prometheus.Desc
	respawns, lastSpawn, exceptions, byStatus, duration                          *prometheus.Desc
	dropped                                                                      *prometheus.Desc
}

// newDescs builds the descriptors, pool labelled by pool.
func newDescs(pool []string) descs {
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		all := append(append([]string{}, pool...), labels...)
		return prometheus.NewDesc("workerstats_"+name, help, all, nil)
	}
	return descs{
		up:            desc("up", "1 when the pool's master is watched and its stats could be read; 0 while it is missing (see the JSON's observer.waiting)."),
		listenQueue:   desc("listen_queue", "Largest accept queue among the pool's listening sockets."),
		load:          desc("load", "Requests in progress across the pool."),
		socketQueue:   desc("socket_queue", "Connections waiting in a listening socket's accept queue.", "socket"),
		socketMax:     desc("socket_max_queue", "Backlog of a listening socket.", "socket"),
		queueErrors:   desc("listen_queue_errors_total", "Connection attempts the pool's TCP listening sockets refused because their accept queue was full, each once, as the host's ListenOverflows counts them (uWSGI's listen_queue_errors; see docs/limits.md for kernels where stray segments count too)."),
		queueWait:     desc("queue_wait_seconds", "Time the connections the pool's workers accepted waited in a TCP listening socket's accept queue, from the end of the handshake to the accept.", "socket"),
		exits:         desc("worker_exits_total", "Worker processes of the pool that ended, by cause: exited, exited_error, killed_by_master, _kernel, _itself, _other or _unknown (since the daemon started).", "cause"),
		workerInfo:    desc("worker_info", "1 for each worker slot of the pool; its process's pids are workerstats_worker_pid and workerstats_worker_host_pid.", "worker"),
		workerPID:     desc("worker_pid", "The pid of the process in a worker slot, as the server reports it (its PID namespace's); 0 while the slot is empty.", "worker"),
		workerHostPID: desc("worker_host_pid", "The pid of the process in a worker slot on the host; 0 while the slot is empty.", "worker"),
		requests:      desc("worker_requests_total", "Requests served by the worker slot.", "worker"),
		tx:            desc("worker_transmitted_bytes_total", "Bytes the worker sent on connections it accepted.", "worker"),
		rx:            desc("worker_received_bytes_total", "Bytes the worker received on connections it accepted.", "worker"),
		accepted:      desc("worker_accepted_connections_total", "Connections the worker accepted.", "worker"),
		running:       desc("worker_request_seconds_total", "Time the worker spent in requests.", "worker"),
		avgRT:         desc("worker_average_response_seconds", "uWSGI's running average of the worker's response time.", "worker"),
		busy:          desc("worker_busy", "1 while the worker has a request in progress.", "worker"),
		rss:           desc("worker_resident_memory_bytes", "Resident memory of the worker process.", "worker"),
		vsz:           desc("worker_virtual_memory_bytes", "Virtual memory of the worker process.", "worker"),
		respawns:      desc("worker_respawns_total", "Processes that have held the worker slot.", "worker"),
		lastSpawn:     desc("worker_last_spawn_timestamp_seconds", "Start time of the slot's current process.", "worker"),
		exceptions:    desc("worker_exceptions_total", "Requests the worker slot answered with a 5xx (eBPF mode) or never answered.", "worker"),
		byStatus:      desc("requests_total", "Requests across the pool by how they ended: the status class of their answer, other (none to read), or unanswered (eBPF mode; since the daemon started).", "class"),
		duration:      desc("request_duration_seconds", "Answered requests across the pool, first request byte to last response byte (eBPF mode; since the daemon started)."),
		// The kernel side's, shared by every pool: no pool labels.
		dropped: prometheus.NewDesc("workerstats_dropped_total", "Events the kernel side could not record, by kind, every pool together.", []string{"kind"}, nil),
	}
}

// all lists every descriptor.
func (d descs) all() []*prometheus.Desc {
	return []*prometheus.Desc{d.up, d.listenQueue, d.load, d.socketQueue, d.socketMax, d.queueErrors, d.queueWait, d.exits,
		d.workerInfo, d.workerPID, d.workerHostPID, d.requests, d.tx, d.rx, d.accepted, d.running, d.avgRT, d.busy, d.rss, d.vsz,
		d.respawns, d.lastSpawn, d.exceptions, d.byStatus, d.duration, d.dropped}
}
