//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Time in the listen queue. A TCP connection enters its listener's accept
 * queue when the handshake's last ACK makes its socket (the listener's
 * clone goes from LISTEN to SYN_RECV just before it is queued; a Fast Open
 * one at its SYN), and leaves it when a worker accepts it. The programs
 * here note when each of a watched listener's connections entered
 * (`queued`); a watched worker's accept or adoption (conns.c) counts how
 * long it waited, in its listener's buckets (`queue_waits`, struct
 * queue_wait, by network namespace and port).
 */
#include "lib/common.h"

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

/* The queued entry of socket sk: its slot (which a colliding socket may
 * hold). */
static __always_inline struct queued *queued_slot(__u64 sk)
{
	__u32 i = (sk * 0x9E3779B97F4A7C15ULL) >> 48; /* 16 bits: QUEUED_SLOTS */
	return bpf_map_lookup_elem(&queued, &i);
}

/* A connection's socket is made from a listener's: if its listener is a
 * watched pool's, it waits in the accept queue from now. Runs at every
 * TCP state change of the host; the states alone tell all but the passive
 * opens, once per connection, and its port's bit all but those to a port
 * a watched pool listens on, whose namespace is read then. */
static __always_inline int tcp_queued(struct bpf_raw_tracepoint_args *ctx, int twin)
{
	if ((int)ctx->args[2] != TCP_SYN_RECV || (int)ctx->args[1] != TCP_LISTEN)
		return 0;
	__u64 sk = ctx->args[0];
	struct sock *s = (struct sock *)sk;
	struct listen_key key = { .port = BPF_CORE_READ(s, __sk_common.skc_num) };
	if (!port_watched(key.port))
		return 0;
	struct queued *q = queued_slot(sk);
	if (!q)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	/* Its twin ran (the usual case) when the entry is this moment's. */
	if (twin && q->sk == sk && now - q->at_ns < 1000000)
		return 0;
	key.netns = sock_netns(s);
	if (!bpf_map_lookup_elem(&queue_waits, &key))
		return 0;
	q->sk = sk;
	q->at_ns = now;
	q->key = key;
	return 0;
}

/* Twins, as on_tcp_done's (conns.c): a listener's clone made in a softirq
 * that lands inside one's run on a CPU (the listener's backlog processed
 * in process context) is skipped by the kernel for that one, and seen by
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
 * listener's accept queue, count how long. Once per connection. */
static __always_inline void dequeued(__u64 sk)
{
	struct queued *q = queued_slot(sk);
	if (!q || q->sk != sk)
		return;
	__u64 now = bpf_ktime_get_ns();
	struct queue_wait *qw = bpf_map_lookup_elem(&queue_waits, &q->key);
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
