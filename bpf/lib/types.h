/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The records the programs keep and hand to userspace, their enums, and
 * the sizes both sides share. Userspace reads them through the Go that
 * bpf2go generates from them (gen.go's -type list, and every map's key and
 * value): a constant it needs is an enum value here, never a #define, and
 * `struct exported` at the end names what no map refers to.
 */
#ifndef WORKERSTATS_TYPES_H
#define WORKERSTATS_TYPES_H

#include "kernel.h"

/* ---- workers ---- */

enum role {
	ROLE_MASTER = 1,
	ROLE_WORKER = 2,
};

/* Per-process entry, keyed by tgid: a threaded worker is one worker. */
/* How a request ended: its response's status class, read from the
 * response's first bytes (an HTTP status line, or FastCGI's Status
 * header), CLASS_OTHER when they say none, or never answered. */
enum status_class {
	CLASS_2XX = 0,
	CLASS_3XX = 1,
	CLASS_4XX = 2,
	CLASS_5XX = 3,
	CLASS_OTHER = 4,
	CLASS_ANSWERED = 5, /* how many classes an answered request has */
};

/* The buckets of a worker's durations: 12 bounds, 5 ms to 30 s
 * (requests.Bounds in Go), and the rest. */
enum rt_bucket { RT_BUCKETS = 13 };

struct worker {
	enum role role;     /* 4 bytes, as a __u32 */
	__u32 master;       /* tgid of the master, for workers */
	__u64 start_ns;     /* task start_boottime, ns: (pid, start) identifies a process */
	__u64 exit_ns;      /* 0 while alive; bpf_ktime_get_ns() at exit */
	__u64 accepts;      /* connections accepted */
	__u64 requests;     /* requests answered (whose response started); see unanswered */
	__u64 closes;       /* accepted connections closed */
	__u64 rx;           /* bytes received on accepted connections */
	__u64 tx;           /* bytes sent on accepted connections */
	__u64 rt_ns;        /* sum of finished requests' durations */
	__u64 avg_rt_ns;    /* uWSGI's running average: avg = (avg + rt) / 2 */
	__u64 finished;     /* requests whose duration is in rt_ns */
	__s64 in_progress;  /* requests started and not yet finished */
	__s64 awaiting;     /* of those, requests received and not answered yet */
	__u64 last_tx_ns;   /* when a response byte was last sent */
	/* Written by userspace only: an exited worker's entry is kept as its
	 * slot's history, its counters the slot's sums and spawns the
	 * processes the slot has had, so a restarted daemon finds them. */
	__u64 spawns;
	/* Requests received and never answered: the connection closed (or
	 * the worker exited) with inbound data after its last response and
	 * no response byte sent. uWSGI counts such a request, and an
	 * exception. */
	__u64 unanswered;
	/* How it ended, for its slot's last_exit: its wait status (exit code
	 * << 8, or the signal that killed it), the last fatal signal sent to
	 * it, by whom (a tgid; 0 for the kernel, KILLER_OOM for its OOM
	 * killer) and when, and whether it was in a request when it exited
	 * and when any fatal signal came (enum in_request_at bits). */
	__u32 exit_status;
	__u32 kill_sig;
	__u32 killer;
	__u32 in_request_at;
	__u64 kill_ns;
	/* Its pid in its own (innermost) PID namespace, the one the server
	 * itself reports: set by on_fork, or by userspace for the workers it
	 * adds; 0 when unknown. Fields are only ever appended: a pinned
	 * table whose values only grew is carried over. */
	__u32 ns_pid;
	__u32 pad;
	/* With count_status (lib/maps.h): the requests answered, by their
	 * response's status class (enum status_class, but unanswered, which
	 * is `unanswered`), and their durations (rt_ns's), by bucket: at most
	 * rt_bounds_ns[i], the last above them all. */
	__u64 answered[CLASS_ANSWERED];
	__u64 rt_counts[RT_BUCKETS];
};

/* Bits of a worker's in_request_at. */
enum in_request_at { IN_REQUEST_AT_EXIT = 1, IN_REQUEST_AT_SIGNAL = 2 };

/* A worker's killer when the kernel's OOM killer chose it: no tgid. */
enum killer { KILLER_OOM = 0xffffffff };

/* A worker is in a request while one it received is not answered, or
 * while it sends a response: a byte within RESPONSE_IDLE_NS, as
 * userspace's busy (the kernel cannot see where a response ends). */
enum response_idle { RESPONSE_IDLE_NS = 100000000 };

/* ---- connections ---- */

enum conn_state {
	CONN_IDLE = 0,      /* no request yet, or the last one was finished */
	CONN_RECEIVING = 1, /* inbound data seen, no response yet */
	CONN_RESPONDING = 2 /* response bytes sent */
};

struct conn {
	__u32 owner; /* tgid of the worker that accepted it */
	__u32 state;
	__u64 req_start_ns;
	__u64 last_tx_ns;
	__u32 captured; /* request capture: bytes of the request's head kept so far */
	__u32 status;   /* the status class of the response being sent (count_status) */
};

/* Global per-CPU counters, indexed by enum counter: what was tracked, and what could not be. */
enum counter {
	CNT_CONN_TRACKED = 0,  /* accepted connections added to conns */
	CNT_CONN_CLOSED = 1,   /* tracked connections closed */
	CNT_CONN_FULL = 2,     /* accepted connections not tracked: conns or fds full */
	CNT_CONN_STALE = 3,    /* a socket address reused while still in conns (close missed) */
	CNT_WORKER_FULL = 4,   /* new worker not tracked: workers insert failed */
	CNT_WORKER_REUSED = 5, /* a dead worker's unread entry overwritten by a reused pid */
	CNT_INFLIGHT_FULL = 6, /* syscall path: a send/recv not tracked */
	CNT_HEAD_LOST = 7,     /* a request's head not kept: req_heads would take no entry */
	CNT_MAX = 8,
};

/* The sizes of the tables userspace may size otherwise at load
 * (--max-workers, --max-transfers, --max-connections): these are its
 * defaults. */
enum table_size {
	WORKERS_MAX = 4096,    /* workers, and slots */
	INFLIGHT_MAX = 16384,  /* inflight */
	CONN_MAX = 131072,     /* conns and fds */
};

/* PID_MAX_LIMIT on 64-bit: no tgid reaches it. */
enum pid_limit { PID_LIMIT = 4 * 1024 * 1024 };

/* How keys are laid out that userspace builds or takes apart too: the
 * `watched` bitmap's words (bit tgid % WATCHED_WORD_BITS of the words at
 * tgid / WATCHED_WORD_BITS * WATCHED_HALVES, userspace's half then the
 * kernel's), and the `fds` keys (tgid << FD_KEY_FD_BITS | fd). */
enum key_layout {
	WATCHED_WORD_BITS = 64,
	WATCHED_HALVES = 2,
	FD_KEY_FD_BITS = 32,
};

/* Syscall path: socket of a send/recv between its enter and exit, by thread. */
struct inflight {
	__u64 sk;
	__u32 dir;  /* DIR_RECV or DIR_SEND */
	__u32 nr;   /* the syscall */
	__u64 arg1; /* its second argument: the buffer, iovec or msghdr */
};

enum { DIR_RECV = 0, DIR_SEND = 1 };

/* ---- the listen queue ---- */

/* A port's waits: counts[i] are the waits of at most QWAIT_FIRST_US << i
 * µs (and above the bound before); the last, the rest. */
enum queue_wait_bucket { QWAIT_FIRST_US = 16, QWAIT_BUCKETS = 22 };

struct queue_wait {
	__u64 count;
	__u64 sum_ns;
	__u64 counts[QWAIT_BUCKETS];
	/* Connection attempts the listener's full accept queue refused, a
	 * SYN or a handshake's last ACK each once (refused.c: the fentry
	 * set). */
	__u64 refused;
	/* Packets the kernel dropped on the listener, and counted in its
	 * sk_drops, that were no such refusal (refused.c: other sets, where
	 * kfree_skb names the socket): its sk_drops less these are its
	 * refusals. */
	__u64 strays;
};

/* A TCP listener as queue_waits and listen_ports know it: its network
 * namespace (the inode number /proc/PID/ns/net shows) and its port (host
 * order), so that pools on one port in two namespaces stay apart. */
struct listen_key {
	__u32 netns;
	__u32 port;
};

/* The slots of the connections waiting in a watched port's accept queue
 * (the queued map). */
#define QUEUED_SLOTS 65536

struct queued {
	__u64 sk; /* struct sock *; 0 for none */
	__u64 at_ns;
	struct listen_key key; /* its listener's */
};

/* ---- slots and listeners ---- */

struct slot_of {
	__u64 start_ticks; /* the process's start, in procfs's clock ticks */
	__u32 slot;
	__u32 pad;
};

#define SCAN_FDS 64 /* fds 0 to 63: listeners are opened early; each fd more costs every load its verification */
#define SCAN_FOUND 16

struct listener_scan {
	__u32 want;     /* userspace sets it, the scan clears it */
	__u32 adopt;    /* sock hooks with accept unhooked: the ports found are adopted */
	__u32 found;    /* entries of inodes, ports, socks and netns filled */
	__u32 answered; /* set by the first answer, kept while asked again */
	__u64 inodes[SCAN_FOUND];
	__u32 ports[SCAN_FOUND]; /* a TCP listener's port, host order; 0 for Unix */
	/* Appended (a pinned table whose values grew is carried over): each
	 * listener's struct sock *, which read_listeners reads, never
	 * dereferences, and its network namespace. */
	__u64 socks[SCAN_FOUND];
	__u32 netns[SCAN_FOUND];
};

/* What read_listeners found of a listener the scan recorded, now. */
enum listener_kind {
	LISTENER_GONE = 0, /* closed, or no longer listening: left out */
	LISTENER_TCP = 1,
	LISTENER_UNIX = 2,
};

/* The bytes of a Unix socket's name (sockaddr_un's sun_path). */
enum { UNIX_PATH_MAX = 108 };

struct listener_read {
	__u64 inode;
	__u32 netns;
	__u32 kind;    /* enum listener_kind */
	__u32 family;  /* AF_INET or AF_INET6 for TCP */
	__u32 port;    /* TCP: host order */
	__u8 addr[16]; /* TCP: the bound address, an IPv4 one in its first 4 bytes */
	__u32 queue;   /* connections in the accept queue */
	__u32 max_queue; /* its backlog */
	__u32 drops;   /* TCP: sk_drops */
	__u32 name_len; /* Unix: bytes of name, the bound name (an abstract one starts with NUL) */
	__u8 name[UNIX_PATH_MAX];
	__u8 pad[4];
};

/* read_listeners' answer: the listeners of master's scan, as found now;
 * count entries of socks filled. */
struct listeners_read {
	__u32 master;
	__u32 count;
	struct listener_read socks[SCAN_FOUND];
};

/* ---- request capture (capture.c) ---- */

/* How many first bytes of a request's head are kept (HEAD_MAX), and for
 * how many connections at most (HEADS_TABLE: the latest connections to
 * begin a request; userspace reads the in-flight ones at dump time). */
enum capture_size {
	HEAD_MAX = 512,
	HEADS_TABLE = 4096,
};

/* The head of the request a connection began last, as capture.c keeps it
 * in req_heads for userspace to read. */
struct req_head {
	__u64 start_ns; /* the request's conn.req_start_ns */
	__u32 tgid;     /* the worker it came to */
	__u32 len;      /* bytes of data kept, at most HEAD_MAX */
	__u32 cut;      /* a read brought more than was kept */
	__u32 pad;
	/* HEAD_MAX bytes are used: the rest lets a later read's copy, at a
	 * variable offset, end past them where a verifier cannot bound both
	 * the offset and the length. */
	__u8 data[2 * HEAD_MAX];
};

enum capture_mode { CAPTURE_OFF = 0, CAPTURE_SYSCALLS = 1, CAPTURE_SOCK = 2 };

/* ---- what the hooks hand over ---- */

/* Tracepoint contexts: layouts of /sys/kernel/tracing/events/.../format. */
struct sys_enter_ctx {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct sys_exit_ctx {
	__u64 common;
	long id;
	long ret;
};

struct user_iovec {
	__u64 base;
	__u64 len;
};

/*
 * What userspace reads by name that no map refers to. bpf2go generates Go
 * for a type it finds in the object's BTF, and clang puts a type there
 * only when something the object keeps refers to it: a map's key or value,
 * a constant's type, and what those refer to. An enum whose values only
 * code uses is referred to by nothing; so this struct refers to each, and
 * the req_heads table's definition to it (lib/maps.h). No instance of it
 * is ever made.
 */
struct exported {
	enum capture_size capture_size;
	enum conn_state conn_state;
	enum in_request_at in_request_at;
	enum killer killer;
	enum response_idle response_idle;
	enum table_size table_size;
	enum pid_limit pid_limit;
	enum key_layout key_layout;
	enum queue_wait_bucket queue_wait_bucket;
	enum listener_kind listener_kind;
	enum status_class status_class;
	enum rt_bucket rt_bucket;
};

#endif
