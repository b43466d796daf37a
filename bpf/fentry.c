//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Bytes, kernel-function path (the fentry set, any kernel whose BPF
 * trampolines load: 5.10 and newer with BTF): fexit programs on the
 * socket layer's protocol operations, which every way of sending or
 * receiving reaches (read, write, send, recv, their vector forms, and
 * sendfile and splice: through sendpage before 6.5, sendmsg after). A
 * trampoline patches only its own function, so no other syscall of the
 * host pays anything, unlike a syscall tracepoint, which puts every
 * thread of the host on the slow syscall path. Each program is the sock
 * set's body (sock_moved) with the socket from the function's first
 * argument and the bytes from its return value.
 *
 * A TCP connection is adopted and ended as with the sock set (conns.c). A
 * Unix one is taken at unix_accept's return and ended at unix_release,
 * the socket's last close in any process: neither runs more than once a
 * connection, and neither is a syscall hook.
 *
 * The programs' targets are looked up in the kernel's BTF at load:
 * userspace leaves out the ones a kernel lacks (the sendpage operations
 * are gone from 6.5), and all of them under another hook set.
 *
 * Included after sock.c and conns.c, whose sock_moved and take_conn it
 * calls.
 */
#include "lib/common.h"

/* recvmsg(struct socket *, struct msghdr *, size_t, int flags) -> int */
#define RECV_HOOK(prog, fn)                                                         \
	SEC("fexit/" #fn)                                                           \
	int prog(__u64 *ctx)                                                        \
	{                                                                           \
		return sock_moved(0, (struct socket *)ctx[0], (int)ctx[4], (int)ctx[3], \
				  DIR_RECV);                                        \
	}

/* sendmsg(struct socket *, struct msghdr *, size_t) -> int */
#define SEND_HOOK(prog, fn)                                                      \
	SEC("fexit/" #fn)                                                        \
	int prog(__u64 *ctx)                                                     \
	{                                                                        \
		return sock_moved(0, (struct socket *)ctx[0], (int)ctx[3], 0, DIR_SEND); \
	}

/* sendpage(struct socket *, struct page *, int, size_t, int) -> ssize_t */
#define SENDPAGE_HOOK(prog, fn)                                                  \
	SEC("fexit/" #fn)                                                        \
	int prog(__u64 *ctx)                                                     \
	{                                                                        \
		return sock_moved(0, (struct socket *)ctx[0], (int)ctx[5], 0, DIR_SEND); \
	}

RECV_HOOK(on_inet_recv, inet_recvmsg)
RECV_HOOK(on_inet6_recv, inet6_recvmsg)
RECV_HOOK(on_unix_recv, unix_stream_recvmsg)
SEND_HOOK(on_inet_send, inet_sendmsg)
SEND_HOOK(on_inet6_send, inet6_sendmsg)
SEND_HOOK(on_unix_send, unix_stream_sendmsg)
SENDPAGE_HOOK(on_inet_sendpage, inet_sendpage)
SENDPAGE_HOOK(on_unix_sendpage, unix_stream_sendpage)

/* unix_accept(struct socket *sock, struct socket *newsock, ...): the
 * arguments after these two changed in 6.10, and are not read. newsock
 * holds the connection once the accept succeeded. */
SEC("fexit/unix_accept")
int on_unix_accept(__u64 *ctx)
{
	__u32 tgid;
	struct worker *w = current_worker(&tgid);
	if (!w)
		return 0;
	__u64 sk = (__u64)BPF_CORE_READ((struct socket *)ctx[1], sk);
	if (!sk)
		return 0; /* the accept failed */
	answer_scan(w->master);
	if (take_conn(tgid, w, sk))
		tracked(w);
	return 0;
}

/* unix_release(struct socket *sock): the socket's last reference is gone,
 * in whichever process dropped it (an exiting worker's, too). Once per
 * Unix socket of the host: the lookup in conns is the filter. */
SEC("fentry/unix_release")
int on_unix_release(__u64 *ctx)
{
	__u64 sk = (__u64)BPF_CORE_READ((struct socket *)ctx[0], sk);
	struct conn *c = bpf_map_lookup_elem(&conns, &sk);
	if (c)
		end_conn(0, 0, sk, c);
	return 0;
}
