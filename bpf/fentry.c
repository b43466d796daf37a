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
 * A connection is adopted at its worker's first send or receive (conns.c):
 * a TCP one on a port its pool listens on, as with the sock set, a Unix
 * one when it shares the bound address of one of its pool's listeners.
 * No accept is hooked: an fexit program sees only the calls that begin
 * after it is attached, and a worker is asleep in accept when the daemon
 * starts. A TCP connection ends at its state change, a Unix one at
 * unix_release, its last close in any process, an fentry program: once
 * a connection, and no syscall hook.
 *
 * The programs' targets are looked up in the kernel's BTF at load:
 * userspace leaves out the ones a kernel lacks (the sendpage operations
 * are gone from 6.5), and all of them under another hook set.
 *
 * Included after sock.c and conns.c, whose sock_moved and socket_closed
 * it calls.
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

/* unix_release(struct socket *sock): the socket's last reference is gone,
 * in whichever process dropped it (an exiting worker's, too). Once per
 * Unix socket of the host: the lookup in conns is the filter, then the
 * watched bit for one never read or written. */
SEC("fentry/unix_release")
int on_unix_release(__u64 *ctx)
{
	socket_closed((__u64)BPF_CORE_READ((struct socket *)ctx[0], sk));
	return 0;
}
