//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Bytes, raw syscall path (x86-64): the same work from the raw sys_exit
 * tracepoint, which fires for every syscall, and a close-only program on
 * raw sys_enter: used where tracepoint attachments cannot be pinned
 * (before Linux 5.15) and raw tracepoint links can (5.8+), so counting
 * goes on while the daemon is stopped there too. At a syscall's exit its
 * saved registers still hold its arguments, so no map carries the fd from
 * enter to exit, and an unwatched process pays the bitmap at exit and one
 * comparison at entry.
 *
 * Included after conns.c and capture.c, whose accepted, closing and
 * capture it calls.
 */
#include "lib/common.h"

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
	if (at && dir == DIR_SEND)
		response_began(c, nr, BPF_CORE_READ(regs, si), ret);
	if (((at && dir == DIR_RECV) || more) && capture_heads)
		capture(sk, c, tgid, ret, at, nr, BPF_CORE_READ(regs, si));
	return 0;
}
