/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What every concern uses: the counters, the watched filter, finding the
 * current worker, a connection's socket from its fd, a socket's network
 * namespace and whether its port may matter, and a syscall's user buffer.
 */
#ifndef WORKERSTATS_COMMON_H
#define WORKERSTATS_COMMON_H

#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "types.h"
#include "maps.h"

static __always_inline void count(enum counter c)
{
	__u32 idx = c;
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1; /* per-CPU: no atomic needed */
}

/* Whether process tgid's bit is set in `watched`. */
static __always_inline int maybe_watched(__u32 tgid)
{
	__u64 bit = 1ULL << (tgid % WATCHED_WORD_BITS);
	__u32 i = tgid / WATCHED_WORD_BITS * WATCHED_HALVES;
	__u64 *user = bpf_map_lookup_elem(&watched, &i);
	if (user && (*user & bit))
		return 1;
	i++;
	__u64 *forked = bpf_map_lookup_elem(&watched, &i);
	return forked && (*forked & bit);
}

/* on_fork's and on_exit's bit for tgid in `watched`: set, or cleared. */
static __always_inline __u64 *forked_word(__u32 tgid, __u64 *bit)
{
	*bit = 1ULL << (tgid % WATCHED_WORD_BITS);
	__u32 i = tgid / WATCHED_WORD_BITS * WATCHED_HALVES + 1;
	return bpf_map_lookup_elem(&watched, &i);
}

static __always_inline void mark_forked(__u32 tgid)
{
	__u64 bit;
	__u64 *w = forked_word(tgid, &bit);
	if (w && !(*w & bit))
		__sync_fetch_and_add(w, bit);
}

static __always_inline void unmark_forked(__u32 tgid)
{
	__u64 bit;
	__u64 *w = forked_word(tgid, &bit);
	if (w && (*w & bit))
		__sync_fetch_and_add(w, -bit);
}

/* Process tgid's entry if it is a live worker, else NULL. */
static __always_inline struct worker *live_worker(__u32 tgid)
{
	struct worker *w = bpf_map_lookup_elem(&workers, &tgid);
	if (!w || w->role != ROLE_WORKER || w->exit_ns)
		return 0;
	return w;
}

/* The current process's entry if it is a live worker, else NULL: the
 * bitmap first, the hash only for a process whose bit is set. */
static __always_inline struct worker *current_worker(__u32 *tgid)
{
	*tgid = bpf_get_current_pid_tgid() >> 32;
	if (!maybe_watched(*tgid))
		return 0;
	return live_worker(*tgid);
}

/* The struct sock * of a socket fd of the current task, or 0. */
static __always_inline __u64 socket_fd_to_sock(unsigned long fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct file **fdt = BPF_CORE_READ(task, files, fdt, fd);
	struct file *file = 0;
	if (!fdt || bpf_probe_read_kernel(&file, sizeof(file), &fdt[fd & 0xffffff]) || !file)
		return 0;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return 0;
	return (__u64)BPF_CORE_READ(sock, sk);
}

/* The network namespace of socket sk: its inode number. */
static __always_inline __u32 sock_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* Whether TCP port may be a watched pool's listener's, in some network
 * namespace: its bit in watched_ports. */
static __always_inline int port_watched(__u32 port)
{
	__u32 i = port / WATCHED_WORD_BITS;
	__u64 *word = bpf_map_lookup_elem(&watched_ports, &i);
	return word && (*word & (1ULL << (port % WATCHED_WORD_BITS)));
}

static __always_inline __u64 fd_key(__u32 tgid, unsigned long fd)
{
	return (__u64)tgid << FD_KEY_FD_BITS | (__u32)fd;
}

static __always_inline struct worker *owner_of(struct conn *c, __u32 tgid, struct worker *cur)
{
	if (c->owner == tgid)
		return cur;
	return bpf_map_lookup_elem(&workers, &c->owner);
}

/* The current task's registers saved at its syscall's entry, whose
 * orig_ax and si are the syscall's number and second argument. From
 * bpf_task_pt_regs where the kernel has it (5.15+); before, from where
 * x86-64 keeps them, the top of the task's kernel stack (task_pt_regs):
 * only called under a socket-layer hook, from a syscall of a user task. */
static __always_inline struct pt_regs *syscall_regs(void)
{
	if (regs_helper)
		return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u64 top = (__u64)BPF_CORE_READ(t, stack) + THREAD_SIZE;
	/* The kernel's size of the struct, not this file's few fields. */
	return (struct pt_regs *)(top - bpf_core_type_size(struct pt_regs));
}

/* The first user buffer of syscall nr, whose second argument is arg1, and
 * its length in *len: the buffer of a read, write, recvfrom or sendto; the
 * first iovec of a readv, writev, recvmsg or sendmsg (msg_iov is 16 bytes
 * into a msghdr). 0 for anything else: sendfile's bytes come from a file. */
static __always_inline __u64 user_buf(long nr, __u64 arg1, __u64 *len)
{
	struct user_iovec iov;
	__u64 iovp = arg1;
	switch (nr) {
	case NR_read: case NR_write: case NR_recvfrom: case NR_sendto:
		*len = HEAD_MAX;
		return arg1;
	case NR_recvmsg: case NR_sendmsg:
		if (bpf_probe_read_user(&iovp, sizeof(iovp), (void *)(arg1 + 16)))
			return 0;
		/* fallthrough */
	case NR_readv: case NR_writev:
		if (bpf_probe_read_user(&iov, sizeof(iov), (void *)iovp))
			return 0;
		*len = iov.len;
		return iov.base;
	}
	return 0;
}

#endif
