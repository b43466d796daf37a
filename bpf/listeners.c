//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Which listening sockets a pool serves on, seen from one of its workers.
 * Once started the daemon may not read other users' fd tables, so for a
 * master whose it cannot read it asks here: an entry under the master's
 * tgid with want set (listener_scans). The next accept (or, sock hooks,
 * adoption) by one of its workers walks that worker's fd table and
 * records the listening stream sockets it holds: their inodes, which
 * userspace finds in the sock_diag dumps, and a TCP one's port. Once per
 * question, never per event: scans_asked[0], set by userspace while any
 * entry wants an answer, is the only thing an accept reads otherwise.
 */
#include "lib/common.h"

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
