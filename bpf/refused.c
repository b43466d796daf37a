//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Connection attempts a watched listener's full accept queue refused:
 * uWSGI's listen_queue_errors, nothing else. The kernel refuses one in two
 * places: a SYN in tcp_conn_request, a handshake's last ACK in
 * tcp_v4_syn_recv_sock or tcp_v6_syn_recv_sock, each once in the host's
 * ListenOverflows, each when the accept queue is full as it is called
 * (fentry programs there test the same). Per listener it has only
 * sk_drops, which also counts the stray segments of connections already
 * gone (under a load that closes every connection, two a request) and a
 * refused ACK twice.
 *
 * Where BPF trampolines load (the fentry set), the programs here count
 * each refusal where it is made, into its listener's queue_waits entry
 * (`refused`). Elsewhere, where the kfree_skb tracepoint names the socket
 * a packet was dropped on (6.11 and newer), they count the drops tcp_v4_rcv
 * and tcp_v6_rcv make on a listener, which each add to its sk_drops
 * (`strays`): the rest of sk_drops are its refusals, a SYN's once, an
 * ACK's once (the second of its two is one of these). A SYN is refused
 * without any tracepoint seeing it, so it cannot be counted directly there.
 *
 * Each runs once per connection attempt of the host, or per dropped
 * packet, and the port's bit in watched_ports turns away all but those of
 * a port a watched pool listens on.
 */
#include "lib/common.h"

/* The queue_waits entry of listener sk, if a watched pool listens on it:
 * the port's bit first. */
static __always_inline struct queue_wait *listener_counts(struct sock *sk)
{
	struct listen_key key = { .port = BPF_CORE_READ(sk, __sk_common.skc_num) };
	if (!port_watched(key.port))
		return 0;
	key.netns = sock_netns(sk);
	return bpf_map_lookup_elem(&queue_waits, &key);
}

/* Whether listener sk's accept queue is full (sk_acceptq_is_full). */
static __always_inline int accept_queue_full(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_ack_backlog) > BPF_CORE_READ(sk, sk_max_ack_backlog);
}

/* A refusal at listener sk, if its accept queue is full. */
static __always_inline int refused_if_full(struct sock *sk)
{
	if (!accept_queue_full(sk))
		return 0;
	struct queue_wait *qw = listener_counts(sk);
	if (qw)
		qw->refused++; /* this CPU's copy */
	return 0;
}

/* tcp_conn_request(rsk_ops, af_ops, struct sock *sk, skb): a SYN at
 * listener sk, which it refuses when the accept queue is full (checked
 * here first, as the kernel does next). */
SEC("fentry/tcp_conn_request")
int on_syn_refused(__u64 *ctx)
{
	return refused_if_full((struct sock *)ctx[2]);
}

/* tcp_v4_syn_recv_sock(const struct sock *sk, skb, req, dst, req_unhash,
 * own_req): a handshake's last ACK at listener sk, which it refuses when
 * the accept queue is full (its first test). An fentry program, not an
 * fexit one on the returned socket: Debian's 6.12 types
 * tcp_v6_syn_recv_sock's return so that no program may read it. */
SEC("fentry/tcp_v4_syn_recv_sock")
int on_ack_refused(__u64 *ctx)
{
	return refused_if_full((struct sock *)ctx[0]);
}

/* The same for IPv6, but for an IPv4 connection to a dual-stack listener
 * (skb's protocol IPv4), which it hands to tcp_v4_syn_recv_sock. */
SEC("fentry/tcp_v6_syn_recv_sock")
int on_ack_refused6(__u64 *ctx)
{
	struct sk_buff *skb = (struct sk_buff *)ctx[1];
	if (BPF_CORE_READ(skb, protocol) == __builtin_bswap16(ETH_P_IP))
		return 0;
	return refused_if_full((struct sock *)ctx[0]);
}

/* kfree_skb(skb, void *location, reason, struct sock *rx_sk): a packet
 * dropped, on socket rx_sk if any. Those tcp_v4_rcv and tcp_v6_rcv drop on
 * a listener were added to its sk_drops, a segment each (gso_segs). */
SEC("raw_tracepoint/kfree_skb")
int on_listener_drop(struct bpf_raw_tracepoint_args *ctx)
{
	struct sock *sk = (struct sock *)ctx->args[3];
	__u64 at = ctx->args[1];
	if (!sk || (at - tcp_v4_rcv_at >= tcp_v4_rcv_len && at - tcp_v6_rcv_at >= tcp_v6_rcv_len))
		return 0;
	if (BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN)
		return 0;
	struct queue_wait *qw = listener_counts(sk);
	if (!qw)
		return 0;
	struct sk_buff *skb = (struct sk_buff *)ctx->args[0];
	struct skb_shared_info *si = (struct skb_shared_info *)(BPF_CORE_READ(skb, head) + BPF_CORE_READ(skb, end));
	__u16 segs = BPF_CORE_READ(si, gso_segs);
	qw->strays += segs ? segs : 1;
	return 0;
}
