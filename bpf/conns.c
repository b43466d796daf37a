//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Connections. A connection belongs to the worker that accepted it:
 * accept() adds the socket to `conns` (and its fd to `fds`), close()
 * removes it. Only bytes moved on sockets in `conns` are counted, so a
 * worker's own outbound connections never count. With the sock hooks and
 * no accept tracepoint, a TCP connection is adopted instead at its
 * worker's first send or receive (or its close) on a port the pool
 * listens on, and ends at the TCP state change its close makes.
 *
 * Included after requests.c, queue.c and listeners.c, whose
 * finish_request, dequeued and scans it calls.
 */
#include "lib/common.h"

/* End tracked connection sk (its entry c), which worker tgid (entry cur)
 * had open. */
static __always_inline void end_conn(__u32 tgid, struct worker *cur, __u64 sk, struct conn *c)
{
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

/* ---- sock hooks without accept: adoption, and the end at a TCP state ---- */

/* Is TCP socket s on a listener (network namespace and port) the pool of
 * worker w listens on? Userspace fills listen_ports, and only while
 * accept is not hooked; so does a scan's answer, here. The namespace is
 * read only for a port a watched pool listens on (watched_ports), or one
 * of the answer's. */
static __always_inline int on_pool_port(struct sock *s, struct worker *w)
{
	struct listen_key key = { .port = BPF_CORE_READ(s, __sk_common.skc_num) };
	__u32 *master = 0;
	if (port_watched(key.port)) {
		key.netns = sock_netns(s);
		master = bpf_map_lookup_elem(&listen_ports, &key);
	}
	if (master && *master == w->master)
		return 1;
	/* A pool's new master, or a pool found once the daemon could no
	 * longer read its listeners: its answer says (the ports adopted from
	 * it have no bit until userspace says them). */
	if (!scan_asked(w->master) && !bpf_map_lookup_elem(&listener_scans, &w->master))
		return 0;
	key.netns = scanned_port(w->master, (__u64)s, key.port);
	if (!key.netns)
		return 0;
	if (master)
		*master = w->master;
	else
		bpf_map_update_elem(&listen_ports, &key, &w->master, BPF_NOEXIST);
	return 1;
}

/* Worker tgid (entry w) moves bytes on, or closes, socket sk, which is not
 * in conns: a TCP connection on a port its pool listens on (an outbound
 * connection's local port is never a listener's), or a Unix one accepted
 * from one of its pool's listeners, by the scan's answer, is one it
 * accepted. Tracks it and returns its entry; NULL for anything else, or
 * when conns is full (*full set). */
static __always_inline struct conn *adopt(__u64 sk, __u32 tgid, struct worker *w, int *full)
{
	struct sock *s = (struct sock *)sk;
	__u16 family = BPF_CORE_READ(s, __sk_common.skc_family);
	if (family == AF_UNIX) {
		if (!scanned_unix(w->master, sk))
			return 0;
	} else if ((family != AF_INET && family != AF_INET6) || !on_pool_port(s, w)) {
		return 0;
	}
	if (BPF_CORE_READ(s, sk_socket, type) != SOCK_STREAM)
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
/* Worker tgid (entry cur) closes socket sk, which is not in conns: a
 * connection it accepted but never read or wrote (an idle one) is
 * adopted and ended all the same. */
static __always_inline void close_untracked(__u64 sk, __u32 tgid, struct worker *cur)
{
	if (bpf_map_lookup_elem(&untracked, &sk)) {
		bpf_map_delete_elem(&untracked, &sk); /* counted untracked, now over */
		return;
	}
	int full = 0;
	struct conn *c = adopt(sk, tgid, cur, &full);
	if (c)
		end_conn(tgid, cur, sk, c);
	else if (full)
		bpf_map_delete_elem(&untracked, &sk);
}

/* Socket sk is closed, in any process: end its connection if it is
 * tracked, else adopt it if a worker closes it (close_untracked). */
static __always_inline void socket_closed(__u64 sk)
{
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (c) {
		end_conn(0, 0, sk, c);
		return;
	}
	__u32 tgid;
	struct worker *cur = current_worker(&tgid);
	if (cur)
		close_untracked(sk, tgid, cur);
}

SEC("raw_tracepoint/inet_sock_set_state")
int on_tcp_close(struct bpf_raw_tracepoint_args *ctx)
{
	int state = (int)ctx->args[2];
	if (state != TCP_FIN_WAIT1 && state != TCP_LAST_ACK)
		return 0;
	socket_closed(ctx->args[0]);
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
