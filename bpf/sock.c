//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Bytes, socket path (kernel >= 6.3): raw tracepoints on sock_recv_length
 * and sock_send_length, whose arguments (struct sock *sk, int ret, int
 * flags) come as they are, where the tracepoint interface would first
 * copy them into a trace record. They hand us the socket directly, so a
 * TCP pool needs no syscall tracepoint: its connections are adopted and
 * ended as conns.c says. A pool on a Unix socket still needs accept and
 * close from their syscall tracepoints, which userspace attaches only
 * while such a pool is watched (and then leaves listen_ports empty, so
 * nothing is adopted twice).
 *
 * sock_moved is what the fentry set's programs (fentry.c) run too.
 *
 * Included after conns.c, whose adopt it calls.
 */
#include "lib/common.h"

/* A send or receive on a socket moved ret bytes (flags, a receive's):
 * count them if the current process is a watched worker and the socket
 * a connection one of its pool's listeners gave it. The socket is sk, or
 * when sk is 0 sock's, read only once the filter has passed. */
static __always_inline int sock_moved(__u64 sk, struct socket *sock, int ret, int flags, __u32 dir)
{
	if (ret <= 0 || (flags & MSG_PEEK))
		return 0;
	/* Positive: widened without its sign, whose extension older
	 * verifiers cannot bound where the capture reads ret bytes. */
	long n = (__u32)ret;
	__u32 tgid;
	struct worker *cur = current_worker(&tgid);
	if (!cur)
		return 0;
	if (!sk)
		sk = (__u64)BPF_CORE_READ(sock, sk);
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
	if (sock_hooks && may_continue(c, dir, n)) {
		regs = syscall_regs();
		same = same_request(BPF_CORE_READ(regs, orig_ax), BPF_CORE_READ(regs, si));
	}
	int more = head_continues(c, dir);
	__u64 at = conn_bytes(c, dir, n, tgid, cur, same);
	if (at && dir == DIR_SEND && count_status && sock_hooks) {
		if (!regs)
			regs = syscall_regs();
		response_began(c, BPF_CORE_READ(regs, orig_ax), BPF_CORE_READ(regs, si), n);
	}
	if (((at && dir == DIR_RECV) || more) && capture_heads == CAPTURE_SOCK) {
		if (!regs)
			regs = syscall_regs();
		capture(sk, c, tgid, n, at, BPF_CORE_READ(regs, orig_ax), BPF_CORE_READ(regs, si));
	}
	return 0;
}

static __always_inline int sock_length(struct bpf_raw_tracepoint_args *ctx, __u32 dir)
{
	return sock_moved(ctx->args[0], 0, (int)ctx->args[1], (int)ctx->args[2], dir);
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
