//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * workerstats kernel side: per-worker request accounting for pre-fork pools.
 *
 * Userspace puts a pool's master into `workers` (role MASTER) with the
 * workers it already has (role WORKER). From then on the kernel follows the
 * pool by itself: a process forked by a master becomes a worker, an exiting
 * worker is marked dead (userspace folds its final counts and deletes it).
 *
 * A connection belongs to the worker that accepted it: accept() adds the
 * socket to `conns`, close() removes it. Only bytes moved on sockets in
 * `conns` are counted, so a worker's own outbound connections never count.
 *
 * A request is inbound data on an accepted connection and the response to it:
 * the first inbound bytes after an idle or answered state start one; the
 * response ends at its last outbound byte, which is known when the next
 * request starts or the connection closes.
 *
 * Bytes come from one of three attachment sets, picked by userspace:
 *  - the sock_recv_length / sock_send_length raw tracepoints (kernel >=
 *    6.3), which hand us the socket directly. There a TCP pool needs no
 *    syscall tracepoint: a connection is adopted at its worker's first
 *    send or receive on a socket whose local port the pool listens on
 *    (`listen_ports`), and ends at the TCP state change its close makes
 *    (inet_sock_set_state). A pool on a Unix socket still needs accept
 *    and close from their syscall tracepoints, which userspace attaches
 *    only while such a pool is watched (and then leaves listen_ports
 *    empty, so nothing is adopted twice);
 *  - syscall enter/exit tracepoints of read/write/send/recv and friends,
 *    finding the socket from the fd recorded at accept (any kernel with BTF);
 *  - the same work from the raw sys_exit tracepoint (and sys_enter for
 *    close) (x86-64), whose links can be pinned before 5.15, where
 *    tracepoint attachments cannot.
 *
 * Every program that runs for the whole host filters on "may the current
 * process be a watched worker" first: one bit of the `watched` bitmap,
 * indexed by tgid (two array loads the verifier inlines), before any other
 * work. Only a process whose bit is set pays the hash lookup in `workers`.
 */
#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

enum role {
	ROLE_MASTER = 1,
	ROLE_WORKER = 2,
};

/* Per-process entry, keyed by tgid: a threaded worker is one worker. */
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
	 * killer) and
	 * when, and whether it was in a request when it exited and when that
	 * signal came (enum in_request_at bits). */
	__u32 exit_status;
	__u32 kill_sig;
	__u32 killer;
	__u32 in_request_at;
	__u64 kill_ns;
};

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
	__u32 captured; /* request capture: bytes of the request's head sent so far */
	__u32 pad;
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
	CNT_HEAD_LOST = 7,     /* a request's or response's first bytes not captured: heads full */
	CNT_MAX = 8,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct worker);
} workers SEC(".maps");

/*
 * The connection tables' size; userspace sets its own (--max-connections)
 * at load. A plain hash, not an LRU: when it is full a new connection is
 * not tracked (and counted as such), where an LRU would silently evict a
 * live one and leave its request open forever. Missed closes cannot fill
 * it: an exited owner's entries are swept by userspace, and an entry whose
 * close was missed in a live worker (dup2 over its fd, close_range) is
 * ended when its fd number or its socket address is accepted again.
 */
#define CONN_MAX 131072

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONN_MAX);
	__type(key, __u64); /* struct sock * */
	__type(value, struct conn);
} conns SEC(".maps");

/*
 * The accepting process's fd of each tracked connection: (tgid << 32 | fd)
 * -> struct sock *. Filled at accept, so close and the syscall path find a
 * connection from an fd with one lookup instead of walking the task's file
 * table. An fd closed behind our back (dup2 over it, close_range, exit) is
 * left for the next accept of its number and for userspace's sweep of
 * exited processes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONN_MAX);
	__type(key, __u64);
	__type(value, __u64);
} fds SEC(".maps");

/* Syscall path: socket of a send/recv between its enter and exit, by thread. */
struct inflight {
	__u64 sk;
	__u32 dir;  /* DIR_RECV or DIR_SEND */
	__u32 nr;   /* the syscall */
	__u64 arg1; /* its second argument: the buffer, iovec or msghdr */
};

enum { DIR_RECV = 0, DIR_SEND = 1 };

/* A plain hash: every entry is removed at the syscall's exit, or at the
 * thread's exit when it dies inside the syscall. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct inflight);
} inflight SEC(".maps");

/* Sock hooks without accept and close syscall tracepoints: the TCP ports
 * (host order) the watched pools listen on, each with its master's tgid.
 * Written by userspace only. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} listen_ports SEC(".maps");

/* Sock hooks without accept: the connections adoption found no room for,
 * so that each is counted untracked once, not at every send. A hint
 * only, hence an LRU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* struct sock * */
	__type(value, __u8);
} untracked SEC(".maps");

/*
 * Time in the listen queue. A TCP connection enters its listener's accept
 * queue when the handshake's last ACK makes its socket (the listener's
 * clone goes from LISTEN to SYN_RECV just before it is queued; a Fast Open
 * one at its SYN), and leaves it when a worker accepts it. queue_waits
 * holds, for each TCP port (host order) a watched pool listens on, the
 * waits of the connections its workers took: userspace adds and removes
 * the entries, the kernel adds to them. Counts[i] are the waits of at
 * most QWAIT_FIRST_US << i µs (and above the bound before); the last, the
 * rest.
 */
#define QWAIT_FIRST_US 16
#define QWAIT_BUCKETS 22

struct queue_wait {
	__u64 count;
	__u64 sum_ns;
	__u64 counts[QWAIT_BUCKETS];
};

/* Per CPU: a CPU's accepts add to its own copy, no atomics, no shared
 * cache line; userspace sums them. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct queue_wait);
} queue_waits SEC(".maps");

/* The connections waiting in a watched port's accept queue: when each
 * entered it, in a table indexed by a hash of the socket's address. An
 * array, so entering and leaving cost no map update or delete (a hash
 * map's update alone cost more than the rest of the program): a
 * connection whose entry a later one took over before its accept (the
 * same hash, or one never accepted left behind) is not timed. Only a
 * watched worker's accept reads one, of a socket that entered since. */
#define QUEUED_SLOTS 65536

struct queued {
	__u64 sk; /* struct sock *; 0 for none */
	__u64 at_ns;
	__u32 port;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, QUEUED_SLOTS);
	__type(key, __u32);
	__type(value, struct queued);
} queued SEC(".maps");

/*
 * Which slot of its pool each worker holds, by pid: written by userspace
 * only, read by none of the programs. Pinned with the rest, so a daemon
 * restarted on the pins puts every live worker and every slot's history
 * back in its own slot. start_ticks tells a reused pid. An LRU: an entry
 * left by a worker whose end was missed goes first; one that is gone is a
 * slot userspace guesses again (the lowest free).
 */
struct slot_of {
	__u64 start_ticks; /* the process's start, in procfs's clock ticks */
	__u32 slot;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct slot_of);
} slots SEC(".maps");

/*
 * Which listening sockets a pool serves on, seen from one of its workers.
 * Once started the daemon may not read other users' fd tables, so for a
 * master whose it cannot read it asks here: an entry under the master's
 * tgid with want set. The next accept (or, sock hooks, adoption) by one of
 * its workers walks that worker's fd table and records the listening
 * stream sockets it holds: their inodes, which userspace finds in the
 * sock_diag dumps, and a TCP one's port. Once per question, never per
 * event: scans_asked[0], set by userspace while any entry wants an
 * answer, is the only thing an accept reads otherwise.
 */
#define SCAN_FDS 64 /* fds 0 to 63: listeners are opened early; each fd more costs every load its verification */
#define SCAN_FOUND 16

struct listener_scan {
	__u32 want;  /* userspace sets it, the scan clears it */
	__u32 adopt; /* sock hooks with accept unhooked: the ports found are adopted */
	__u32 found; /* entries of inodes and ports filled */
	__u32 pad;
	__u64 inodes[SCAN_FOUND];
	__u32 ports[SCAN_FOUND]; /* a TCP listener's port, host order; 0 for Unix */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* the master's tgid */
	__type(value, struct listener_scan);
} listener_scans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scans_asked SEC(".maps");

/* PID_MAX_LIMIT on 64-bit: no tgid reaches it. */
#define PID_LIMIT (4 * 1024 * 1024)

/*
 * The cheap filter: bit (tgid % 64) of word tgid / 64 is set when the
 * process may be a watched worker. Each word has two entries, each with one
 * writer, so neither overwrites the other's bits: entry 2w is written by
 * userspace only (the workers it adds), entry 2w+1 by on_fork and on_exit
 * only (the workers the kernel adds), which set and clear a bit with one
 * atomic add, each bit by its own process's fork and exit. The two share a
 * cache line. A set bit is a hint; the entry in `workers` decides.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PID_LIMIT / 64 * 2);
	__type(key, __u32);
	__type(value, __u64);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, enum counter);
	__type(value, __u64);
} counters SEC(".maps");

/*
 * Request capture: the first HEAD_MAX bytes of each request a watched
 * worker receives and the first RESPONSE_HEAD_MAX of each response it
 * sends (its status is at the start: the status line, or FastCGI's Status
 * header, which PHP writes first), once per request and per response,
 * never more of a body than fits in those bytes. Userspace
 * parses them (observer/proto). capture_heads is set at load: while it
 * is CAPTURE_OFF the verifier drops the capture code (and userspace makes
 * the ring one page); the sock programs capture only with CAPTURE_SOCK,
 * since they need bpf_task_pt_regs (5.15+) and are loaded on every kernel.
 */
#define HEAD_MAX 512
#define RESPONSE_HEAD_MAX 128

/* What a record says of its connection: a request began (and so the
 * previous one on the connection, answered, is over), its response began,
 * or the connection closed with a request on it. */
enum head_kind { HEAD_REQUEST = 0, HEAD_RESPONSE = 1, HEAD_CLOSE = 2, HEAD_MORE = 3 };

struct head {
	__u64 sk;
	__u64 ts_ns;      /* when the request or response began, or the close */
	__u64 last_tx_ns; /* the connection's last response byte before this */
	__u32 tgid;
	__u32 kind;  /* enum head_kind; HEAD_REQUEST is DIR_RECV, HEAD_RESPONSE DIR_SEND;
		      * HEAD_MORE the next bytes of a request whose head came in
		      * several reads (PHP-FPM reads each FastCGI record's header
		      * apart), until HEAD_MAX in all */
	__u32 len;   /* bytes in data; none for HEAD_CLOSE */
	__u32 total; /* bytes the syscall moved (more than len when cut short);
		      * for HEAD_CLOSE the request's state, enum conn_state */
	__u8 data[HEAD_MAX]; /* a response's record ends after RESPONSE_HEAD_MAX */
};

#define HEADS_RING (1 << 20)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, HEADS_RING);
} heads SEC(".maps");

enum capture_mode { CAPTURE_OFF = 0, CAPTURE_SYSCALLS = 1, CAPTURE_SOCK = 2 };

volatile const enum capture_mode capture_heads = CAPTURE_OFF;

/* Set at load when the sock hooks are the ones attached: only then may
 * their programs call bpf_task_pt_regs (5.15+), as they are loaded on
 * every kernel. */
volatile const __u8 sock_hooks = 0;

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

static __always_inline void count(enum counter c)
{
	__u32 idx = c;
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1; /* per-CPU: no atomic needed */
}

/* Whether process tgid's bit is set in `watched`. */
static __always_inline int maybe_watched(__u32 tgid)
{
	__u64 bit = 1ULL << (tgid & 63);
	__u32 i = tgid / 64 * 2;
	__u64 *user = bpf_map_lookup_elem(&watched, &i);
	if (user && (*user & bit))
		return 1;
	i++;
	__u64 *forked = bpf_map_lookup_elem(&watched, &i);
	return forked && (*forked & bit);
}

/* on_fork's and on_exit's bit for tgid in `watched`: set, or cleared. */
static __always_inline __u64 *forked_word(__u32 tgid, __u64 *bit)
{
	*bit = 1ULL << (tgid & 63);
	__u32 i = tgid / 64 * 2 + 1;
	return bpf_map_lookup_elem(&watched, &i);
}

static __always_inline void mark_forked(__u32 tgid)
{
	__u64 bit;
	__u64 *w = forked_word(tgid, &bit);
	if (w && !(*w & bit))
		__sync_fetch_and_add(w, bit);
}

static __always_inline void unmark_forked(__u32 tgid)
{
	__u64 bit;
	__u64 *w = forked_word(tgid, &bit);
	if (w && (*w & bit))
		__sync_fetch_and_add(w, -bit);
}

/* Process tgid's entry if it is a live worker, else NULL. */
static __always_inline struct worker *live_worker(__u32 tgid)
{
	struct worker *w = bpf_map_lookup_elem(&workers, &tgid);
	if (!w || w->role != ROLE_WORKER || w->exit_ns)
		return 0;
	return w;
}

/* The current process's entry if it is a live worker, else NULL: the
 * bitmap first, the hash only for a process whose bit is set. */
static __always_inline struct worker *current_worker(__u32 *tgid)
{
	*tgid = bpf_get_current_pid_tgid() >> 32;
	if (!maybe_watched(*tgid))
		return 0;
	return live_worker(*tgid);
}

/* The struct sock * of a socket fd of the current task, or 0. */
static __always_inline __u64 socket_fd_to_sock(unsigned long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fdt = BPF_CORE_READ(task, files, fdt, fd);
	struct file *file = 0;
	if (!fdt || bpf_probe_read_kernel(&file, sizeof(file), &fdt[fd & 0xffffff]) || !file)
		return 0;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	return (__u64)BPF_CORE_READ(sock, sk);
}

static __always_inline __u64 fd_key(__u32 tgid, unsigned long fd)
{
	return (__u64)tgid << 32 | (__u32)fd;
}

static __always_inline struct worker *owner_of(struct conn *c, __u32 tgid, struct worker *cur)
{
	if (c->owner == tgid)
		return cur;
	return bpf_map_lookup_elem(&workers, &c->owner);
}

/* End the request on c. An answered one adds its time, first inbound byte
 * to last response byte; one never answered counts as such, unless its
 * worker has exited (on_exit counted it then). */
static __always_inline void finish_request(struct worker *w, struct conn *c)
{
	__sync_fetch_and_add(&w->in_progress, -1);
	if (c->state == CONN_RECEIVING) {
		__sync_fetch_and_add(&w->awaiting, -1);
		if (!w->exit_ns)
			__sync_fetch_and_add(&w->unanswered, 1);
	}
	if (c->state == CONN_RESPONDING) {
		__u64 rt = c->last_tx_ns > c->req_start_ns ? c->last_tx_ns - c->req_start_ns : 0;
		__sync_fetch_and_add(&w->rt_ns, rt);
		__sync_fetch_and_add(&w->finished, 1);
		w->avg_rt_ns = (w->avg_rt_ns + rt) / 2;
	}
	c->state = CONN_IDLE;
}

/* Counts n bytes moved on c; when they begin a request (a receive) or its
 * response (a send), the bytes to capture, returns when (else 0). same:
 * the protocol says a receive is more of the request being answered (see
 * same_request). */
static __always_inline __u64 conn_bytes(struct conn *c, __u32 dir, long n, __u32 tgid, struct worker *cur, int same)
{
	struct worker *w = owner_of(c, tgid, cur);
	if (!w)
		return 0;
	if (dir == DIR_SEND) {
		__u64 now = bpf_ktime_get_ns();
		__sync_fetch_and_add(&w->tx, n);
		c->last_tx_ns = now;
		w->last_tx_ns = now;
		if (c->state != CONN_RECEIVING)
			return 0;
		c->state = CONN_RESPONDING;
		__sync_fetch_and_add(&w->requests, 1);
		__sync_fetch_and_add(&w->awaiting, -1);
		return now;
	}
	__sync_fetch_and_add(&w->rx, n);
	if (c->state == CONN_RECEIVING || same)
		return 0; /* more of the same request */
	if (c->state == CONN_RESPONDING)
		finish_request(w, c); /* keep-alive: the previous one is answered */
	__sync_fetch_and_add(&w->in_progress, 1);
	__sync_fetch_and_add(&w->awaiting, 1);
	__u64 now = bpf_ktime_get_ns();
	c->req_start_ns = now;
	c->state = CONN_RECEIVING;
	return now;
}

struct user_iovec {
	__u64 base;
	__u64 len;
};

/* The first user buffer of syscall nr, whose second argument is arg1, and
 * its length in *len: the buffer of a read, write, recvfrom or sendto; the
 * first iovec of a readv, writev, recvmsg or sendmsg (msg_iov is 16 bytes
 * into a msghdr). 0 for anything else: sendfile's bytes come from a file. */
static __always_inline __u64 user_buf(long nr, __u64 arg1, __u64 *len)
{
	struct user_iovec iov;
	__u64 iovp = arg1;
	switch (nr) {
	case NR_read: case NR_write: case NR_recvfrom: case NR_sendto:
		*len = HEAD_MAX;
		return arg1;
	case NR_recvmsg: case NR_sendmsg:
		if (bpf_probe_read_user(&iovp, sizeof(iovp), (void *)(arg1 + 16)))
			return 0;
		/* fallthrough */
	case NR_readv: case NR_writev:
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)iovp))
			return 0;
		*len = iov.len;
		return iov.base;
	}
	return 0;
}

/* Whether a receive of n bytes on c (no request begun by it) brings more
 * of a request head to capture: one still being received whose first
 * bytes came short of HEAD_MAX. */
static __always_inline int head_continues(struct conn *c, __u32 dir)
{
	return capture_heads && dir == DIR_RECV && c->state == CONN_RECEIVING && c->captured < HEAD_MAX;
}

/* Whether a receive of n bytes on c may be more of the request being
 * answered rather than the next one, as far as can be told without its
 * bytes: a lone FastCGI record header (8 bytes; PHP-FPM reads each one on
 * its own) while the request is answered. An HTTP or uwsgi request is
 * longer, so theirs pay nothing more. */
static __always_inline int may_continue(struct conn *c, __u32 dir, long n)
{
	return dir == DIR_RECV && n == 8 && c->state == CONN_RESPONDING;
}

/* Whether those 8 bytes, received by syscall nr (second argument arg1),
 * are more of the request being answered: the protocol says so for a
 * FastCGI record other than BEGIN_REQUEST, such as the empty STDIN record
 * that ends a request's input, which PHP-FPM reads only after answering.
 * Reads the record's first two bytes. (A uwsgi packet of modifier1 1 and
 * a size of 2 to 11 looks the same: no server sends one.) */
static __always_inline int same_request(long nr, __u64 arg1)
{
	__u64 room = 0;
	__u64 buf = user_buf(nr, arg1, &room);
	__u8 rec[2];
	if (!buf || room < sizeof(rec) || bpf_probe_read_user(rec, sizeof(rec), (void *)buf))
		return 0;
	return rec[0] == 1 && rec[1] >= 2 && rec[1] <= 11;
}

/* Counts n bytes syscall nr (second argument arg1) moved on sk if it is a
 * tracked connection, and returns its entry; *at as conn_bytes returns it,
 * *more as head_continues says before them. */
static __always_inline struct conn *on_bytes(__u64 sk, __u32 dir, long n, __u32 tgid, struct worker *cur, long nr, __u64 arg1,
					      __u64 *at, int *more)
{
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (!c) /* not an accepted connection: outbound, pipe, file... */
		return 0;
	*more = head_continues(c, dir);
	*at = conn_bytes(c, dir, n, tgid, cur, may_continue(c, dir, n) && same_request(nr, arg1));
	return c;
}

/* Fills h, a record with room for cap bytes of data (a constant at each
 * call), with at most max of them, from user buffer buf (room bytes long)
 * of a syscall that moved n. */
static __always_inline void fill_head(struct head *h, __u64 cap, __u64 max, __u64 buf, __u64 room, long n)
{
	__u64 len = (__u64)n < room ? (__u64)n : room;
	if (len > max)
		len = max;
	/* max may vary (what a head's earlier reads left): bound len by the
	 * record's constant room where older verifiers see it, after the
	 * barrier that keeps the compiler from folding the test away. */
	barrier_var(len);
	if (len > cap)
		len = cap;
	if (bpf_probe_read_user(h->data, len, (void *)buf))
		len = 0;
	h->len = len;
	h->total = n;
}

/* Hands h to userspace. Waking the reader for each head would cost more
 * than all the rest (an interrupt and a wakeup): it polls, and is woken
 * only when the ring is half full. */
static __always_inline void submit_head(struct head *h)
{
	__u64 pending = bpf_ringbuf_query(&heads, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(h, pending > HEADS_RING / 2 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Sends the first bytes syscall nr (second argument arg1) moved, n in all,
 * on connection sk (entry c) of worker tgid, to userspace: at, when they
 * begin a request or response; 0 for more of a request's head. */
static __always_inline void capture(__u64 sk, struct conn *c, __u32 tgid, __u32 dir, long n, __u64 at, long nr, __u64 arg1)
{
	__u64 room = 0;
	__u64 buf = user_buf(nr, arg1, &room);
	if (!buf)
		return;
	struct head *h;
	if (dir == DIR_SEND) {
		h = bpf_ringbuf_reserve(&heads, sizeof(*h) - HEAD_MAX + RESPONSE_HEAD_MAX, 0);
		if (h)
			fill_head(h, RESPONSE_HEAD_MAX, RESPONSE_HEAD_MAX, buf, room, n);
	} else {
		__u32 had = at ? 0 : c->captured;
		h = bpf_ringbuf_reserve(&heads, sizeof(*h), 0);
		if (h) {
			fill_head(h, HEAD_MAX, had < HEAD_MAX ? HEAD_MAX - had : 0, buf, room, n);
			c->captured = had + h->len;
		}
	}
	if (!h) {
		count(CNT_HEAD_LOST);
		return;
	}
	h->sk = sk;
	h->ts_ns = at ? at : bpf_ktime_get_ns();
	h->last_tx_ns = c->last_tx_ns;
	h->tgid = tgid;
	h->kind = at ? dir : HEAD_MORE;
	submit_head(h);
}

/* Tells userspace that connection sk (entry c, of worker tgid) closes in
 * the middle of a request: answered or not, it is over. Once per
 * connection. */
static __always_inline void capture_close(__u64 sk, struct conn *c, __u32 tgid)
{
	if (capture_heads == CAPTURE_OFF || c->state == CONN_IDLE)
		return;
	struct head *h = bpf_ringbuf_reserve(&heads, sizeof(*h) - HEAD_MAX, 0);
	if (!h) {
		count(CNT_HEAD_LOST);
		return;
	}
	h->sk = sk;
	h->ts_ns = bpf_ktime_get_ns();
	h->last_tx_ns = c->last_tx_ns;
	h->tgid = tgid;
	h->kind = HEAD_CLOSE;
	h->len = 0;
	h->total = c->state;
	submit_head(h);
}

/* ---- process lifecycle ---- */

SEC("raw_tracepoint/sched_process_fork")
int on_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	struct worker *m = bpf_map_lookup_elem(&workers, &ptgid);
	if (!m || m->role != ROLE_MASTER || m->exit_ns)
		return 0;
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 pid = BPF_CORE_READ(child, pid);
	__u32 tgid = BPF_CORE_READ(child, tgid);
	if (pid != tgid)
		return 0; /* a new thread of the master, not a worker */

	struct worker *old = bpf_map_lookup_elem(&workers, &tgid);
	if (old && old->exit_ns)
		count(CNT_WORKER_REUSED);
	struct worker w = {
		.role = ROLE_WORKER,
		.master = ptgid,
		.start_ns = BPF_CORE_READ(child, start_boottime),
	};
	if (bpf_map_update_elem(&workers, &tgid, &w, BPF_ANY))
		count(CNT_WORKER_FULL);
	else
		mark_forked(tgid);
	return 0;
}

enum in_request_at { IN_REQUEST_AT_EXIT = 1, IN_REQUEST_AT_SIGNAL = 2 };

/* A worker's killer when the kernel's OOM killer chose it: no tgid. */
#define KILLER_OOM 0xffffffff

/* Whether worker w is in a request at now: one received and not answered,
 * or a response being sent (a byte within 100 ms, as userspace's busy). */
static __always_inline int in_request(struct worker *w, __u64 now)
{
	return w->awaiting > 0 || (w->in_progress > 0 && now - w->last_tx_ns < 100000000);
}

SEC("raw_tracepoint/sched_process_exit")
int on_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	__u32 pid = BPF_CORE_READ(task, pid);
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct worker *w = bpf_map_lookup_elem(&workers, &tgid);
	if (!w)
		return 0;
	__u64 id = (__u64)tgid << 32 | pid;
	bpf_map_delete_elem(&inflight, &id); /* died inside a send or recv */
	/* The process has exited when its last thread does, whichever that
	 * is: a killed multi-threaded worker's leader may go first while
	 * another thread is still leaving a send, whose bytes count. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (!w->exit_ns) {
		unmark_forked(tgid);
		/* What it received and did not answer, it never will. */
		if (w->awaiting > 0)
			__sync_fetch_and_add(&w->unanswered, w->awaiting);
		__u64 now = bpf_ktime_get_ns();
		w->exit_status = BPF_CORE_READ(task, exit_code);
		if (in_request(w, now))
			w->in_request_at |= IN_REQUEST_AT_EXIT;
		w->exit_ns = now;
		w->in_progress = 0;
		w->awaiting = 0;
	}
	return 0;
}

/* Signals whose default action ends a process: those a worker's death
 * may be told by. (A worker may handle some, SIGTERM above all: then the
 * signal is what it was asked, and its exit status what it did.) */
static __always_inline int fatal_signal(long sig)
{
	switch (sig) {
	case 1: case 2: case 3: case 4: case 6: case 7: case 8: case 9:
	case 11: case 13: case 14: case 15: case 24: case 25: case 31:
		return 1;
	}
	return 0;
}

/* A signal is generated for a task: remember the last fatal one a live
 * worker was sent, and its sender (the current process; none when the
 * kernel sends it, SEND_SIG_PRIV). Runs for every signal of the host:
 * most are not fatal (SIGCHLD, and SIGURG, which the Go runtime sends its
 * threads to preempt them), told from the arguments alone; then the
 * bitmap filters on the target before any lookup. */
SEC("raw_tracepoint/signal_generate")
int on_signal(struct bpf_raw_tracepoint_args *ctx)
{
	long sig = ctx->args[0];
	if (!fatal_signal(sig) || (int)ctx->args[4] != 0) /* not delivered: ignored, pending... */
		return 0;
	struct task_struct *task = (struct task_struct *)ctx->args[2];
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (!maybe_watched(tgid))
		return 0;
	struct worker *w = live_worker(tgid);
	if (!w)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	w->kill_sig = sig;
	w->killer = ctx->args[1] == 1 ? 0 : bpf_get_current_pid_tgid() >> 32;
	w->kill_ns = now;
	w->in_request_at = in_request(w, now) ? IN_REQUEST_AT_SIGNAL : 0;
	return 0;
}

/* Set at load: whether mark_victim's first argument is the victim's task
 * (newer kernels) rather than its pid (5.10). */
volatile const __u8 oom_victim_task = 0;

/* The OOM killer has sent SIGKILL to a process (signal_generate saw it,
 * sent by the kernel) and marks it its victim. Runs once per OOM kill. */
SEC("raw_tracepoint/mark_victim")
int on_oom_victim(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid = (__u32)ctx->args[0];
	if (oom_victim_task)
		tgid = BPF_CORE_READ((struct task_struct *)ctx->args[0], tgid);
	struct worker *w = live_worker(tgid);
	if (w && w->kill_sig == 9 && w->killer == 0)
		w->killer = KILLER_OOM;
	return 0;
}

/* ---- time in the listen queue ---- */

/* How many bits x needs: 0 for 0. */
static __always_inline __u32 bit_length(__u64 x)
{
	__u32 n = 0;
	if (x >> 32) { x >>= 32; n += 32; }
	if (x >> 16) { x >>= 16; n += 16; }
	if (x >> 8) { x >>= 8; n += 8; }
	if (x >> 4) { x >>= 4; n += 4; }
	if (x >> 2) { x >>= 2; n += 2; }
	if (x >> 1) { x >>= 1; n += 1; }
	return n + (__u32)x;
}

/* The bucket of a wait of ns: the first i with ns <= QWAIT_FIRST_US << i
 * µs, in whole µs. */
static __always_inline __u32 wait_bucket(__u64 ns)
{
	__u64 us = ns / 1000;
	__u32 i = bit_length((us ? us - 1 : 0) / QWAIT_FIRST_US);
	return i < QWAIT_BUCKETS - 1 ? i : QWAIT_BUCKETS - 1;
}

/* A connection's socket is made from a listener's: if its port is a
 * watched pool's, it waits in the accept queue from now. Runs at every
 * TCP state change of the host; the states alone tell all but the passive
 * opens, once per connection. */
/* The queued entry of socket sk: its slot (which a colliding socket may
 * hold). */
static __always_inline struct queued *queued_slot(__u64 sk)
{
	__u32 i = (sk * 0x9E3779B97F4A7C15ULL) >> 48; /* 16 bits: QUEUED_SLOTS */
	return bpf_map_lookup_elem(&queued, &i);
}

static __always_inline int tcp_queued(struct bpf_raw_tracepoint_args *ctx, int twin)
{
	if ((int)ctx->args[2] != TCP_SYN_RECV || (int)ctx->args[1] != TCP_LISTEN)
		return 0;
	__u64 sk = ctx->args[0];
	struct queued *q = queued_slot(sk);
	if (!q)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	/* Its twin ran (the usual case) when the entry is this moment's. */
	if (twin && q->sk == sk && now - q->at_ns < 1000000)
		return 0;
	struct sock *s = (struct sock *)sk;
	__u32 port = BPF_CORE_READ(s, __sk_common.skc_num);
	if (!bpf_map_lookup_elem(&queue_waits, &port))
		return 0;
	q->sk = sk;
	q->at_ns = now;
	q->port = port;
	return 0;
}

/* Twins, as on_tcp_done's: a listener's clone made in a softirq that
 * lands inside one's run on a CPU (the listener's backlog processed in
 * process context) is skipped by the kernel for that one, and seen by
 * the other, which otherwise finds the entry made and leaves it. */
SEC("raw_tracepoint/inet_sock_set_state")
int on_tcp_queued(struct bpf_raw_tracepoint_args *ctx)
{
	return tcp_queued(ctx, 0);
}

SEC("raw_tracepoint/inet_sock_set_state")
int on_tcp_queued_twin(struct bpf_raw_tracepoint_args *ctx)
{
	return tcp_queued(ctx, 1);
}

/* A watched worker takes connection sk: if it waited in a watched
 * port's accept queue, count how long. Once per connection. */
static __always_inline void dequeued(__u64 sk)
{
	struct queued *q = queued_slot(sk);
	if (!q || q->sk != sk)
		return;
	__u64 now = bpf_ktime_get_ns();
	struct queue_wait *qw = bpf_map_lookup_elem(&queue_waits, &q->port);
	if (qw && now > q->at_ns) {
		__u64 ns = now - q->at_ns;
		__u32 i = wait_bucket(ns);
		qw->count++; /* this CPU's copy */
		qw->sum_ns += ns;
		/* Checked again in the register that indexes: older verifiers
		 * lose the bound of wait_bucket's clamp. */
		barrier_var(i);
		if (i < QWAIT_BUCKETS)
			qw->counts[i]++;
	}
	q->sk = 0;
}

/* ---- listeners ---- */

/* Records in s the listening stream socket fd (of the current task, in
 * file table fds) is, if it is one; 0 once s is full. */
static __always_inline int scan_fd(struct listener_scan *s, struct file **fds, __u32 fd)
{
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 1;
	struct inode *ino = BPF_CORE_READ(f, f_inode);
	if ((BPF_CORE_READ(ino, i_mode) & S_IFMT) != S_IFSOCK)
		return 1;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (BPF_CORE_READ(sock, type) != SOCK_STREAM || BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN)
		return 1;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u32 port = family == AF_INET || family == AF_INET6 ? BPF_CORE_READ(sk, __sk_common.skc_num) : 0;
	__u64 inode = BPF_CORE_READ(ino, i_ino);
	/* The count is kept in the map, not a register: the verifier's
	 * states of one fd are then alike whatever the fds before held. It
	 * is read after the helper calls, which would spill it, and masked
	 * as well: older verifiers lose a spilled register's bounds. */
	__u32 n = s->found;
	if (n >= SCAN_FOUND)
		return 0;
	n &= SCAN_FOUND - 1;
	s->inodes[n] = inode;
	s->ports[n] = port;
	s->found = n + 1;
	return 1;
}

/* Answers s: the listening sockets the current task holds. */
static __always_inline void scan_listeners(struct listener_scan *s)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	__u32 max = BPF_CORE_READ(fdt, max_fds);
	s->found = 0;
	for (__u32 fd = 0; fd < SCAN_FDS && fd < max; fd++)
		if (!scan_fd(s, fds, fd))
			break;
	s->want = 0;
}

/* A question about master's listeners, if one waits; NULL otherwise. The
 * array first: one load the verifier inlines. */
static __always_inline struct listener_scan *scan_asked(__u32 master)
{
	__u32 zero = 0;
	__u32 *asked = bpf_map_lookup_elem(&scans_asked, &zero);
	if (!asked || !*asked)
		return 0;
	struct listener_scan *s = bpf_map_lookup_elem(&listener_scans, &master);
	return s && s->want ? s : 0;
}

/* A worker of master takes a connection: answer a question about its
 * pool's listeners. */
static __always_inline void answer_scan(__u32 master)
{
	struct listener_scan *s = scan_asked(master);
	if (s)
		scan_listeners(s);
}

/* Sock hooks, accept unhooked: does master (asked since the daemon
 * started, its answer adopted) listen on TCP port, by its answer? The
 * question is answered first if it waits. */
static __always_inline int scanned_port(__u32 master, __u32 port)
{
	struct listener_scan *s = bpf_map_lookup_elem(&listener_scans, &master);
	if (!s || !s->adopt)
		return 0;
	if (s->want)
		scan_listeners(s);
	for (__u32 i = 0; i < SCAN_FOUND; i++)
		if (i < s->found && s->ports[i] == port)
			return 1;
	return 0;
}

/* ---- connections ---- */

/* End tracked connection sk (its entry c), which worker tgid (entry cur)
 * had open. */
static __always_inline void end_conn(__u32 tgid, struct worker *cur, __u64 sk, struct conn *c)
{
	capture_close(sk, c, c->owner);
	struct worker *w = owner_of(c, tgid, cur);
	if (w) {
		if (c->state != CONN_IDLE)
			finish_request(w, c);
		__sync_fetch_and_add(&w->closes, 1);
	}
	bpf_map_delete_elem(&conns, &sk);
	count(CNT_CONN_CLOSED);
}

/* End connection sk if it is tracked. */
static __always_inline void close_conn(__u32 tgid, struct worker *cur, __u64 sk)
{
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (c)
		end_conn(tgid, cur, sk, c);
}

/* A worker's accept returned fd (or an error): track the connection. */
static __always_inline void accepted(__u32 tgid, struct worker *w, long fd)
{
	if (fd < 0)
		return;
	answer_scan(w->master);
	__u64 sk = socket_fd_to_sock(fd);
	if (!sk)
		return;
	dequeued(sk);
	__u64 key = fd_key(tgid, fd);
	/* The fd number held a connection before: the fd was released, so it
	 * is over. Its close was missed, or (raw hooks, another thread) is
	 * still to be seen at the close's exit, which then leaves this one. */
	__u64 *old = bpf_map_lookup_elem(&fds, &key);
	if (old)
		close_conn(tgid, w, *old);
	struct conn *stale = bpf_map_lookup_elem(&conns, &sk);
	if (stale) {
		/* A socket address still in conns under another fd: its close
		 * was missed. End it before it is replaced. */
		count(CNT_CONN_STALE);
		end_conn(tgid, w, sk, stale);
	}
	struct conn c = { .owner = tgid };
	if (bpf_map_update_elem(&conns, &sk, &c, BPF_ANY)) {
		count(CNT_CONN_FULL);
		return;
	}
	if (bpf_map_update_elem(&fds, &key, &sk, BPF_ANY)) {
		/* Without its fd its close would be missed: not tracked. */
		bpf_map_delete_elem(&conns, &sk);
		count(CNT_CONN_FULL);
		return;
	}
	count(CNT_CONN_TRACKED);
	__sync_fetch_and_add(&w->accepts, 1);
}

SEC("tracepoint/syscalls/sys_exit_accept4")
int on_accept_exit(struct sys_exit_ctx *ctx)
{
	__u32 tgid;
	struct worker *w = current_worker(&tgid);
	if (w)
		accepted(tgid, w, ctx->ret);
	return 0;
}

/* A worker closes fd: end the connection if it is one it accepted. */
static __always_inline void closing(__u32 tgid, struct worker *cur, unsigned long fd)
{
	__u64 key = fd_key(tgid, fd);
	__u64 *skp = bpf_map_lookup_elem(&fds, &key);
	if (!skp)
		return; /* not a connection this worker accepted */
	__u64 sk = *skp;
	bpf_map_delete_elem(&fds, &key);
	close_conn(tgid, cur, sk);
}

SEC("tracepoint/syscalls/sys_enter_close")
int on_close_enter(struct sys_enter_ctx *ctx)
{
	__u32 tgid;
	struct worker *cur = current_worker(&tgid);
	if (cur)
		closing(tgid, cur, ctx->args[0]);
	return 0;
}

/* ---- bytes, socket path (kernel >= 6.3) ----
 *
 * Raw tracepoints on sock_recv_length and sock_send_length: their
 * arguments (struct sock *sk, int ret, int flags) come as they are, where
 * the tracepoint interface would first copy them into a trace record. */

/* Worker tgid (entry w) moves bytes on, or closes, socket sk, which is not
 * in conns: a TCP connection on a port its pool listens on is one it
 * accepted (an outbound connection's local port is never a listener's).
 * Tracks it and returns its entry; NULL for anything else, or when conns
 * is full (*full set). Only userspace fills listen_ports, and only while
 * accept is not hooked. */
static __always_inline struct conn *adopt(__u64 sk, __u32 tgid, struct worker *w, int *full)
{
	struct sock *s = (struct sock *)sk;
	__u32 port = BPF_CORE_READ(s, __sk_common.skc_num);
	__u32 *master = bpf_map_lookup_elem(&listen_ports, &port);
	if (!master || *master != w->master) {
		/* A pool's new master, or a pool found once the daemon could
		 * no longer read its listeners: its answer says. */
		if (!scan_asked(w->master) && (!master || !bpf_map_lookup_elem(&listener_scans, &w->master)))
			return 0;
		if (!scanned_port(w->master, port))
			return 0;
		if (master)
			*master = w->master;
		else
			bpf_map_update_elem(&listen_ports, &port, &w->master, BPF_NOEXIST);
	}
	__u16 family = BPF_CORE_READ(s, __sk_common.skc_family);
	if ((family != AF_INET && family != AF_INET6) || BPF_CORE_READ(s, sk_socket, type) != SOCK_STREAM)
		return 0; /* a UDP socket on the same port */
	struct conn c = { .owner = tgid };
	if (bpf_map_update_elem(&conns, &sk, &c, BPF_NOEXIST)) {
		struct conn *raced = bpf_map_lookup_elem(&conns, &sk);
		__u8 one = 1;
		if (!raced && !bpf_map_update_elem(&untracked, &sk, &one, BPF_NOEXIST))
			count(CNT_CONN_FULL); /* full: counted once per connection */
		*full = !raced;
		return raced; /* another thread adopted it first, or full */
	}
	count(CNT_CONN_TRACKED);
	__sync_fetch_and_add(&w->accepts, 1);
	dequeued(sk);
	return bpf_map_lookup_elem(&conns, &sk);
}

static __always_inline int sock_length(struct bpf_raw_tracepoint_args *ctx, __u32 dir)
{
	int ret = (int)ctx->args[1];
	int flags = (int)ctx->args[2];
	if (ret <= 0 || (flags & MSG_PEEK))
		return 0;
	__u32 tgid;
	struct worker *cur = current_worker(&tgid);
	if (!cur)
		return 0;
	__u64 sk = ctx->args[0];
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	int full = 0;
	if (!c)
		c = adopt(sk, tgid, cur, &full);
	if (!c)
		return 0;
	/* No buffer here: the syscall's own saved registers hold it, read
	 * only where a request or response may begin. */
	struct pt_regs *regs = 0;
	int same = 0;
	if (sock_hooks && may_continue(c, dir, ret)) {
		regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
		same = same_request(BPF_CORE_READ(regs, orig_ax), BPF_CORE_READ(regs, si));
	}
	int more = head_continues(c, dir);
	__u64 at = conn_bytes(c, dir, ret, tgid, cur, same);
	if ((at || more) && capture_heads == CAPTURE_SOCK) {
		if (!regs)
			regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
		capture(sk, c, tgid, dir, ret, at, BPF_CORE_READ(regs, orig_ax), BPF_CORE_READ(regs, si));
	}
	return 0;
}

/* A TCP socket's state changes: a close ends its connection. The worker's
 * close makes FIN_WAIT1 (it closed first) or LAST_ACK (after the peer's
 * FIN), always in its own context; a reset or the end of TIME_WAIT makes
 * CLOSE, in any context, softirq included. A half-close by the peer
 * (CLOSE_WAIT) ends nothing: the response may follow. Each runs once or
 * twice per TCP connection of the host, not per send or receive.
 *
 * Two programs on the one tracepoint, because the kernel skips a program
 * that fires again on a CPU where it is already running (a softirq's state
 * change landing inside the worker's close): on_tcp_close, for the
 * worker's own close, has nothing to do in a softirq, so what it misses
 * there costs nothing, and on_tcp_done still runs. */
SEC("raw_tracepoint/inet_sock_set_state")
int on_tcp_close(struct bpf_raw_tracepoint_args *ctx)
{
	int state = (int)ctx->args[2];
	if (state != TCP_FIN_WAIT1 && state != TCP_LAST_ACK)
		return 0;
	__u64 sk = ctx->args[0];
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (c) {
		end_conn(0, 0, sk, c);
		return 0;
	}
	/* A worker closes a connection it never read or wrote: an idle one,
	 * accepted all the same. */
	__u32 tgid;
	struct worker *cur = current_worker(&tgid);
	if (!cur)
		return 0;
	if (bpf_map_lookup_elem(&untracked, &sk)) {
		bpf_map_delete_elem(&untracked, &sk); /* counted untracked, now over */
		return 0;
	}
	int full = 0;
	c = adopt(sk, tgid, cur, &full);
	if (c)
		end_conn(tgid, cur, sk, c);
	else if (full)
		bpf_map_delete_elem(&untracked, &sk);
	return 0;
}

static __always_inline int tcp_done(struct bpf_raw_tracepoint_args *ctx)
{
	if ((int)ctx->args[2] != TCP_CLOSE)
		return 0;
	__u64 sk = ctx->args[0];
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (c)
		end_conn(0, 0, sk, c);
	return 0;
}

/* CLOSE comes in any context, so it may come inside a run of on_tcp_done
 * on the same CPU (a softirq's reset landing in a worker's abortive
 * close), and the kernel skips that nested run. Its twin, the same code
 * attached after it, is then not running and sees it; a CLOSE that both
 * see is ended once, as the first leaves no entry for the second. */
SEC("raw_tracepoint/inet_sock_set_state")
int on_tcp_done(struct bpf_raw_tracepoint_args *ctx)
{
	return tcp_done(ctx);
}

SEC("raw_tracepoint/inet_sock_set_state")
int on_tcp_done_twin(struct bpf_raw_tracepoint_args *ctx)
{
	return tcp_done(ctx);
}

SEC("raw_tracepoint/sock_recv_length")
int on_sock_recv(struct bpf_raw_tracepoint_args *ctx)
{
	return sock_length(ctx, DIR_RECV);
}

SEC("raw_tracepoint/sock_send_length")
int on_sock_send(struct bpf_raw_tracepoint_args *ctx)
{
	return sock_length(ctx, DIR_SEND);
}

/* ---- bytes, syscall path (any kernel) ---- */

/* A worker starts a send or receive on fd: remember the connection for
 * the syscall's exit, by thread. */
static __always_inline void data_enter(__u32 tgid, unsigned long fd, __u32 dir, long nr, __u64 arg1)
{
	__u64 key = fd_key(tgid, fd);
	__u64 *sk = bpf_map_lookup_elem(&fds, &key);
	if (!sk)
		return; /* not an accepted connection: nothing to do at exit */
	__u64 id = bpf_get_current_pid_tgid();
	struct inflight f = { .sk = *sk, .dir = dir, .nr = nr, .arg1 = arg1 };
	if (bpf_map_update_elem(&inflight, &id, &f, BPF_ANY))
		count(CNT_INFLIGHT_FULL);
}

/* A worker starts a receive on fd; one with MSG_PEEK in flags leaves its
 * bytes to be read again, and is not counted. */
static __always_inline int recv_enter(struct sys_enter_ctx *ctx, unsigned long flags)
{
	__u32 tgid;
	if (current_worker(&tgid) && !(flags & MSG_PEEK))
		data_enter(tgid, ctx->args[0], DIR_RECV, ctx->id, ctx->args[1]);
	return 0;
}

/* Attached to sys_enter_{read,readv}: args[0] is the fd. A program reads
 * no further into its context than its shortest tracepoint's arguments,
 * hence one per place of the flags. */
SEC("tracepoint/syscalls/sys_enter_read")
int on_recv_enter(struct sys_enter_ctx *ctx)
{
	return recv_enter(ctx, 0);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int on_recvfrom_enter(struct sys_enter_ctx *ctx)
{
	return recv_enter(ctx, ctx->args[3]);
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int on_recvmsg_enter(struct sys_enter_ctx *ctx)
{
	return recv_enter(ctx, ctx->args[2]);
}

/* Attached to sys_enter_{write,writev,sendto,sendmsg,sendfile64}: args[0] is the (out) fd. */
SEC("tracepoint/syscalls/sys_enter_write")
int on_send_enter(struct sys_enter_ctx *ctx)
{
	__u32 tgid;
	if (current_worker(&tgid))
		data_enter(tgid, ctx->args[0], DIR_SEND, ctx->id, ctx->args[1]);
	return 0;
}

/* A send or receive that data_enter remembered for thread id (a
 * pid_tgid) returned ret: count it. */
static __always_inline void data_exit(__u64 id, long ret)
{
	struct inflight *f = bpf_map_lookup_elem(&inflight, &id);
	if (!f)
		return;
	struct inflight done = *f;
	bpf_map_delete_elem(&inflight, &id);
	if (ret <= 0)
		return;
	__u32 tgid = id >> 32;
	struct worker *cur = bpf_map_lookup_elem(&workers, &tgid);
	if (!cur)
		return;
	__u64 at = 0;
	int more = 0;
	struct conn *c = on_bytes(done.sk, done.dir, ret, tgid, cur, done.nr, done.arg1, &at, &more);
	if (c && (at || more) && capture_heads)
		capture(done.sk, c, tgid, done.dir, ret, at, done.nr, done.arg1);
}

/* Attached to the sys_exit of every syscall above. */
SEC("tracepoint/syscalls/sys_exit_read")
int on_data_exit(struct sys_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (maybe_watched(id >> 32))
		data_exit(id, ctx->ret);
	return 0;
}

/* ---- raw syscall path (x86-64) ----
 *
 * The same work from the raw sys_exit tracepoint, which fires for every
 * syscall, and a close-only program on raw sys_enter: used where
 * tracepoint attachments cannot be pinned (before Linux 5.15) and raw
 * tracepoint links can (5.8+), so counting goes on while the daemon is
 * stopped there too. At a syscall's exit its saved registers still hold
 * its arguments, so no map carries the fd from enter to exit, and an
 * unwatched process pays the bitmap at exit and one comparison at entry.
 */

enum { RAW_RECV, RAW_SEND, RAW_ACCEPT, RAW_OTHER };

static __always_inline int raw_kind(long nr)
{
	switch (nr) {
	case NR_read: case NR_readv: case NR_recvfrom: case NR_recvmsg:
		return RAW_RECV;
	case NR_write: case NR_writev: case NR_sendto: case NR_sendmsg: case NR_sendfile:
		return RAW_SEND;
	case NR_accept: case NR_accept4:
		return RAW_ACCEPT;
	}
	return RAW_OTHER;
}

/* The flags argument of a receive that has one: recvfrom's 4th, recvmsg's 3rd. */
static __always_inline long raw_recv_flags(struct pt_regs *regs, long nr)
{
	if (nr == NR_recvfrom)
		return BPF_CORE_READ(regs, r10);
	if (nr == NR_recvmsg)
		return BPF_CORE_READ(regs, dx);
	return 0;
}

/* A close is seen at its entry, while the fd still names the connection:
 * at its exit another thread may have been given the same fd number, or a
 * new connection the same socket address. The syscall number is in the
 * arguments here: every other syscall costs one comparison. */
SEC("raw_tracepoint/sys_enter")
int on_raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] != NR_close)
		return 0;
	__u32 tgid;
	struct worker *cur = current_worker(&tgid);
	if (cur) {
		struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
		closing(tgid, cur, BPF_CORE_READ(regs, di));
	}
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int on_raw_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	/* The filter before the syscall number: reading it from the
	 * registers costs more than the bitmap. */
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!maybe_watched(tgid))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	long nr = BPF_CORE_READ(regs, orig_ax);
	long ret = ctx->args[1];
	int kind = raw_kind(nr);
	if (kind == RAW_OTHER)
		return 0;
	struct worker *w = live_worker(tgid);
	if (!w)
		return 0;
	if (kind == RAW_ACCEPT) {
		accepted(tgid, w, ret);
		return 0;
	}
	unsigned long fd = BPF_CORE_READ(regs, di);
	if (ret <= 0 || (kind == RAW_RECV && (raw_recv_flags(regs, nr) & MSG_PEEK)))
		return 0;
	__u64 key = fd_key(tgid, fd);
	__u64 *skp = bpf_map_lookup_elem(&fds, &key);
	if (!skp)
		return 0;
	__u64 sk = *skp;
	__u32 dir = kind == RAW_SEND ? DIR_SEND : DIR_RECV;
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (!c)
		return 0;
	/* The buffer's address only where a request may begin. */
	int same = 0;
	if (may_continue(c, dir, ret))
		same = same_request(nr, BPF_CORE_READ(regs, si));
	int more = head_continues(c, dir);
	__u64 at = conn_bytes(c, dir, ret, tgid, w, same);
	if ((at || more) && capture_heads)
		capture(sk, c, tgid, dir, ret, at, nr, BPF_CORE_READ(regs, si));
	return 0;
}
