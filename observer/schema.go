package observer

import "github.com/workerstats/workerstats/observer/container"

// The types below mirror the JSON of uWSGI's stats server (core/master_utils.c,
// uwsgi_master_generate_stats), field for field and in uWSGI's key order, so
// tools written for uWSGI read our dump unchanged. Units are uWSGI's: bytes
// for rss, vsz and tx; microseconds for running_time and avg_rt; unix seconds
// for last_spawn. Keys uWSGI does not have are marked "workerstats" below;
// readers written for uWSGI ignore them.

// Stats is one whole dump.
type Stats struct {
	Version           string `json:"version"`
	ListenQueue       uint64 `json:"listen_queue"`
	ListenQueueErrors uint64 `json:"listen_queue_errors"`
	SignalQueue       uint64 `json:"signal_queue"`
	Load              uint64 `json:"load"`
	PID               int    `json:"pid"`
	// workerstats: the master's pid on the host, where pid is the one the
	// server itself reports (in a container, its PID namespace's).
	HostPID int      `json:"host_pid"`
	UID     int      `json:"uid"`
	GID     int      `json:"gid"`
	CWD     string   `json:"cwd"`
	Locks   []Lock   `json:"locks"`
	Sockets []Socket `json:"sockets"`
	Workers []Worker `json:"workers"`
	// workerstats: the container and Kubernetes pod the master runs in,
	// from its cgroup (see observer/container); nil when unreadable.
	Container *container.Identity `json:"container,omitempty"`
	// workerstats: the pod, by name, that container is of, as the API
	// server says (serve on a Kubernetes node); nil elsewhere.
	Pod *Pod `json:"pod,omitempty"`
	// workerstats: how this dump was produced.
	Observer ObserverInfo `json:"observer"`
}

// Lock is one of uWSGI's named locks, {"name": pid of the holder, or 0}.
// workerstats cannot see the server's locks from outside; it lists its own
// snapshot lock, which a reader never sees held.
type Lock map[string]int

// Socket is one listening socket of the pool.
type Socket struct {
	Name       string `json:"name"`
	Proto      string `json:"proto"`
	Queue      uint64 `json:"queue"`
	MaxQueue   uint64 `json:"max_queue"`
	Shared     int    `json:"shared"`
	CanOffload int    `json:"can_offload"`
	// Drops are the packets a TCP listener dropped since it was created
	// (the kernel's sk_drops): the connection attempts its full accept
	// queue refused (a SYN once, a handshake's last ACK twice), and stray
	// segments of connections already gone. Where the kernel side counts
	// the refusals alone, those are the pool's listen_queue_errors, else
	// these; not shown per socket (uWSGI shows none).
	Drops uint64 `json:"-"`
	// NetNS is the network namespace the socket is in, as the inode
	// number of /proc/PID/ns/net; 0 for the daemon's own. Not shown.
	NetNS uint32 `json:"-"`
	// QueueWait is added by workerstats: how long the connections its
	// workers took waited in its accept queue (TCP only).
	QueueWait *Durations `json:"queue_wait,omitempty"`
}

// Worker is one worker slot.
type Worker struct {
	ID            int    `json:"id"`
	PID           int    `json:"pid"`
	HostPID       int    `json:"host_pid"` // workerstats: pid on the host
	Accepting     int    `json:"accepting"`
	Requests      uint64 `json:"requests"`
	DeltaRequests uint64 `json:"delta_requests"`
	Exceptions    uint64 `json:"exceptions"`
	HarakiriCount uint64 `json:"harakiri_count"`
	Signals       uint64 `json:"signals"`
	SignalQueue   uint64 `json:"signal_queue"`
	Status        string `json:"status"`
	RSS           uint64 `json:"rss"`
	VSZ           uint64 `json:"vsz"`
	RunningTime   uint64 `json:"running_time"`
	LastSpawn     int64  `json:"last_spawn"`
	RespawnCount  uint64 `json:"respawn_count"`
	TX            uint64 `json:"tx"`
	AvgRT         uint64 `json:"avg_rt"`
	Apps          []App  `json:"apps"`
	Cores         []Core `json:"cores"`
	// workerstats: bytes received, connections accepted and closed.
	RX       uint64 `json:"rx"`
	Accepted uint64 `json:"accepted"`
	Closed   uint64 `json:"closed"`
	// workerstats, with request capture (serve --requests): how the slot's
	// requests ended, and how long the answered ones took, since the
	// daemon started.
	Statuses  *Statuses  `json:"statuses,omitempty"`
	Durations *Durations `json:"request_durations,omitempty"`
	// workerstats: how the slot's last exited process ended, and how many
	// of its processes ended each way (see LastExit; since the daemon
	// started).
	LastExit *LastExit         `json:"last_exit,omitempty"`
	Exits    map[string]uint64 `json:"exits,omitempty"`
}

// LastExit is how a process ended: exited with a code, or killed by a
// signal; the last fatal signal it was sent and by whom ("master", "kernel"
// for the kernel itself, the OOM killer say, "itself" for a fault or a
// raise, else "pid N"); and the request it was in, if any.
type LastExit struct {
	PID       int    `json:"pid"`
	HostPID   int    `json:"host_pid"` // on the host, where pid is its own
	At        int64  `json:"at"`       // unix s
	Status    string `json:"status"`   // "exited" or "killed"
	Code      int    `json:"code"`     // the exit code, when it exited
	Signal    string `json:"signal,omitempty"`
	By        string `json:"by,omitempty"`
	ByPID     int    `json:"by_pid,omitempty"`
	InRequest int    `json:"in_request"`
	Request   string `json:"request,omitempty"` // "METHOD URI", with request capture
}

// Statuses counts requests by how they ended: the class of the status
// they were answered with, "other" for an answer with none to read (a
// protocol workerstats does not parse), or never answered.
type Statuses struct {
	S2xx       uint64 `json:"2xx"`
	S3xx       uint64 `json:"3xx"`
	S4xx       uint64 `json:"4xx"`
	S5xx       uint64 `json:"5xx"`
	Other      uint64 `json:"other"`
	Unanswered uint64 `json:"unanswered"`
}

// Durations is a histogram of answered requests' durations, first request
// byte to last response byte, in µs as uWSGI's times are: Counts[i] are
// those of at most BoundsUs[i] (and above the bound before), the last
// count those above every bound.
type Durations struct {
	Count    uint64   `json:"count"`
	SumUs    uint64   `json:"sum_us"`
	BoundsUs []uint64 `json:"bounds_us"`
	Counts   []uint64 `json:"counts"`
}

// App is one application loaded in a worker. An observer from outside cannot
// see the apps, so each worker shows the one app that serves its requests.
type App struct {
	ID          int    `json:"id"`
	Modifier1   int    `json:"modifier1"`
	Mountpoint  string `json:"mountpoint"`
	StartupTime uint64 `json:"startup_time"`
	Requests    uint64 `json:"requests"`
	Exceptions  uint64 `json:"exceptions"`
	Chdir       string `json:"chdir"`
}

// Core is one request-handling core (thread or async slot) of a worker.
type Core struct {
	ID                int            `json:"id"`
	Requests          uint64         `json:"requests"`
	StaticRequests    uint64         `json:"static_requests"`
	RoutedRequests    uint64         `json:"routed_requests"`
	OffloadedRequests uint64         `json:"offloaded_requests"`
	WriteErrors       uint64         `json:"write_errors"`
	ReadErrors        uint64         `json:"read_errors"`
	InRequest         int            `json:"in_request"`
	Vars              []string       `json:"vars"`
	ReqInfo           map[string]any `json:"req_info"`
}

// ObserverInfo says which observer produced the dump and what it lost.
type ObserverInfo struct {
	Mode   string `json:"mode"`             // "ebpf" or "procfs"
	Reason string `json:"reason,omitempty"` // why procfs mode
	// Target is how the master is found ("pidfile /run/app.pid"); Waiting
	// says why the pool is empty: the master is not found (yet).
	Target   string            `json:"target,omitempty"`
	Waiting  string            `json:"waiting,omitempty"`
	Hooks    string            `json:"hooks,omitempty"` // "sock" or "syscall"
	Dropped  map[string]uint64 `json:"dropped"`
	Programs []ProgramStats    `json:"programs,omitempty"`
	// Unknown names the master's figures the dump leaves out ("cwd",
	// "sockets") and says why.
	Unknown map[string]string `json:"unknown,omitempty"`
}

// ProgramStats is the kernel's own accounting of one eBPF program, filled when
// kernel.bpf_stats_enabled is on (serve --bpf-stats).
type ProgramStats struct {
	Name      string `json:"name"`
	RunCount  uint64 `json:"run_count"`
	RunTimeNs uint64 `json:"run_time_ns"`
	AvgNs     uint64 `json:"avg_ns"`
}
