//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Which listening sockets a pool serves on, seen from one of its workers.
 * Once started the daemon may not read other users' fd tables, so for a
 * master whose it cannot read it asks here: an entry under the master's
 * tgid with want set (listener_scans). The next accept (or, sock hooks,
 * adoption) by one of its workers walks that worker's fd table and
 * records the listening stream sockets it holds: their inodes, which
 * userspace finds in the sock_diag dumps, a TCP one's port, and each
 * one's socket and network namespace, which read_listeners reads when
 * userspace runs it. Once per question, never per event: scans_asked[0],
 * set by userspace while any entry wants an answer, is the only thing an
 * accept reads otherwise.
 */
#include "lib/common.h"

/* Records in master's answer the listening stream socket fd (of the
 * current task, in file table fds) is, if it is one; 0 once the answer
 * is full. A global function, as scan_listeners. */
__noinline int scan_fd(__u32 master, __u64 fds, __u32 fd)
{
	struct listener_scan *s = bpf_map_lookup_elem(&listener_scans, &master);
	if (!s)
		return 0;
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), (struct file **)fds + (fd & (SCAN_FDS - 1))) || !f)
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
	__u32 netns = sock_netns(sk);
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
	s->socks[n] = (__u64)sk;
	s->netns[n] = netns;
	s->found = n + 1;
	return 1;
}

/* Answers master's question (its entry in listener_scans): the listening
 * sockets the current task holds. A global function (see same_request in
 * requests.c): its walk of SCAN_FDS fds is checked once, on its own,
 * rather than in every state of every path of the send, receive and close
 * programs that may adopt a connection, which multiplied their
 * verification several times over. */
__noinline int scan_listeners(__u32 master)
{
	struct listener_scan *s = bpf_map_lookup_elem(&listener_scans, &master);
	if (!s)
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds = BPF_CORE_READ(fdt, fd);
	__u32 max = BPF_CORE_READ(fdt, max_fds);
	s->found = 0;
	for (__u32 fd = 0; fd < SCAN_FDS && fd < max; fd++)
		if (!scan_fd(master, (__u64)fds, fd))
			break;
	s->answered = 1;
	s->want = 0;
	return 0;
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
	if (scan_asked(master))
		scan_listeners(master);
}

/* Sock hooks, accept unhooked: does master (asked since the daemon
 * started, its answer adopted) listen on TCP port of socket sk's network
 * namespace, by its answer? That namespace (an inode number, never 0)
 * if it does, else 0. The question is answered first if it waits. A
 * global function, as scan_listeners: its loops are checked once. */
__noinline __u32 scanned_port(__u32 master, __u64 sk, __u32 port)
{
	struct listener_scan *s = bpf_map_lookup_elem(&listener_scans, &master);
	if (!s || !s->adopt)
		return 0;
	if (s->want)
		scan_listeners(master);
	/* The namespace is read only when the port is one of the answer's. */
	int found = 0;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < SCAN_FOUND; i++)
		found |= i < s->found && s->ports[i] == port;
	if (!found)
		return 0;
	__u32 netns = sock_netns((struct sock *)sk);
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < SCAN_FOUND; i++)
		if (i < s->found && s->ports[i] == port && s->netns[i] == netns)
			return netns;
	return 0;
}

/* Socket layer hooks: is Unix socket sk a connection accepted from one of
 * master's listeners, by its answer? An accepted socket shares its
 * listener's bound address (struct unix_address); a socketpair or an
 * unbound client has none, and is told at the first read. The question is
 * answered first if it waits. A global function, as scanned_port. */
__noinline int scanned_unix(__u32 master, __u64 sk)
{
	struct unix_address *addr = BPF_CORE_READ((struct unix_sock *)sk, addr);
	if (!addr || BPF_CORE_READ((struct sock *)sk, __sk_common.skc_state) != TCP_ESTABLISHED)
		return 0;
	struct listener_scan *s = bpf_map_lookup_elem(&listener_scans, &master);
	if (!s || !s->adopt)
		return 0;
	if (s->want)
		scan_listeners(master);
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < SCAN_FOUND; i++) {
		if (i >= s->found)
			break;
		struct unix_sock *l = (struct unix_sock *)s->socks[i];
		if (!s->ports[i] && BPF_CORE_READ(l, addr) == addr)
			return 1;
	}
	return 0;
}

/* ---- the listeners an answer found, read now ---- */

/* Unix listener u's bound name into out (none when it is unbound). */
static __always_inline void read_unix_name(struct listener_read *out, struct unix_sock *u)
{
	out->name_len = 0;
	struct unix_address *addr = BPF_CORE_READ(u, addr);
	int len = BPF_CORE_READ(addr, len) - (int)bpf_core_field_offset(struct sockaddr_un, sun_path);
	if (!addr || len <= 0)
		return;
	/* 64 bits, and checked again in the register that sizes the read:
	 * the verifier must see the bound in the very register passed. */
	__u64 n = len < UNIX_PATH_MAX ? len : UNIX_PATH_MAX;
	barrier_var(n);
	if (n > UNIX_PATH_MAX)
		return;
	void *path = (void *)addr + bpf_core_field_offset(struct unix_address, name) +
		     bpf_core_field_offset(struct sockaddr_un, sun_path);
	if (!bpf_probe_read_kernel(out->name, n, path))
		out->name_len = n;
}

/* Reads into out what a dump shows of listener sk, which the scan found
 * under inode in network namespace netns: if it is still that socket and
 * still listening, its family, address and port (TCP) or name (Unix), its
 * accept queue, backlog and drops; else it is gone. The scan stored sk
 * long ago: the socket may have been closed and freed since, its memory
 * reused. Every read goes through bpf_probe_read_kernel (BPF_CORE_READ,
 * bpf_core_read), which is safe at any address, and the inode check tells
 * whether what was read is that socket. */
static __always_inline void read_listener(struct listener_read *out, struct sock *sk, __u64 inode, __u32 netns)
{
	out->kind = LISTENER_GONE;
	out->inode = inode;
	out->netns = netns;
	if (BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino) != inode ||
	    BPF_CORE_READ(sk, __sk_common.skc_state) != TCP_LISTEN)
		return;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	out->family = family;
	out->max_queue = BPF_CORE_READ(sk, sk_max_ack_backlog);
	if (family == AF_UNIX) {
		read_unix_name(out, (struct unix_sock *)sk);
		/* A Unix listener's pending connections are its receive
		 * queue's skbs, as sock_diag's UNIX_DIAG_RQLEN says. */
		out->queue = BPF_CORE_READ(sk, sk_receive_queue.qlen);
		out->kind = LISTENER_UNIX;
		return;
	}
	if (family != AF_INET && family != AF_INET6)
		return;
	out->port = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (family == AF_INET)
		bpf_core_read(out->addr, 4, &sk->__sk_common.skc_rcv_saddr);
	else
		bpf_core_read(out->addr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
	out->queue = BPF_CORE_READ(sk, sk_ack_backlog);
	out->drops = BPF_CORE_READ(sk, sk_drops.counter);
	out->kind = LISTENER_TCP;
}

/*
 * Never attached: userspace runs it (BPF_PROG_TEST_RUN), one run at a
 * time, with args[0] a master's tgid. It answers in listeners_read with
 * the listeners of that master's scan as they are now, from any network
 * namespace and with no privilege, where a sock_diag dump sees only the
 * daemon's namespace. Returns 1, or 0 while no scan has answered for
 * master.
 */
SEC("raw_tp")
int read_listeners(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 master = ctx->args[0];
	__u32 zero = 0;
	struct listeners_read *out = bpf_map_lookup_elem(&listeners_read, &zero);
	if (!out)
		return 0;
	out->master = master;
	out->count = 0;
	struct listener_scan *s = bpf_map_lookup_elem(&listener_scans, &master);
	if (!s || !s->answered)
		return 0;
	for (__u32 i = 0; i < SCAN_FOUND; i++) {
		if (i >= s->found)
			break;
		read_listener(&out->socks[i], (struct sock *)s->socks[i], s->inodes[i], s->netns[i]);
		out->count = i + 1;
	}
	return 1;
}
