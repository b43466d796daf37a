//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Bytes, syscall path (any kernel with BTF): the enter and exit
 * tracepoints of read/write/send/recv and friends, finding the socket from
 * the fd recorded at accept (conns.c). The socket and the syscall's buffer
 * go from enter to exit in `inflight`, by thread.
 *
 * Included after requests.c and capture.c, whose conn_bytes and capture it
 * calls.
 */
#include "lib/common.h"

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
	if (*at && dir == DIR_SEND)
		response_began(c, nr, arg1, n);
	return c;
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
	if (c && ((at && done.dir == DIR_RECV) || more) && capture_heads)
		capture(done.sk, c, tgid, ret, at, done.nr, done.arg1);
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
