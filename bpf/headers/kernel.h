/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The few kernel types and constants workerstats' programs use. Struct
 * layouts are relocated at load time (CO-RE, preserve_access_index), so only
 * the fields we read are named here and their order does not matter. This
 * keeps the build independent of the build machine's kernel and of a
 * multi-megabyte vmlinux.h.
 */
#ifndef WORKERSTATS_KERNEL_H
#define WORKERSTATS_KERNEL_H

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u16 umode_t;

/* UAPI constants (include/uapi/linux/bpf.h), stable by definition. */
enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_HASH = 5,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};
enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};
enum {
	BPF_RB_AVAIL_DATA = 0,
};

#define MSG_PEEK 2
#define ETH_P_IP 0x0800
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define S_IFMT 00170000
#define S_IFSOCK 0140000

/* TCP states (include/net/tcp_states.h). */
enum {
	TCP_ESTABLISHED = 1,
	TCP_SYN_RECV = 3,
	TCP_FIN_WAIT1 = 4,
	TCP_CLOSE = 7,
	TCP_LAST_ACK = 9,
	TCP_LISTEN = 10,
};

/* x86-64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl), for the
 * raw sys_enter/sys_exit programs. */
enum {
	NR_read = 0,
	NR_write = 1,
	NR_close = 3,
	NR_readv = 19,
	NR_writev = 20,
	NR_sendfile = 40,
	NR_accept = 43,
	NR_sendto = 44,
	NR_recvfrom = 45,
	NR_sendmsg = 46,
	NR_recvmsg = 47,
	NR_accept4 = 288,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

typedef struct {
	int counter;
} atomic_t;

/* live: threads of the group not yet past do_exit's group_dead test,
 * which comes before the sched_process_exit tracepoint. */
struct signal_struct {
	atomic_t live;
};

/* A pid's number in each PID namespace, from the host's (level 0) to
 * the process's own (level). numbers[] has level + 1 entries. */
struct upid {
	int nr;
};

struct pid {
	unsigned int level;
	struct upid numbers[1];
};

/* x86-64's kernel stack, 16 KiB (without KASAN, as distributions
 * build): its saved user registers are at its top. */
#define THREAD_SIZE 16384

struct task_struct {
	void *stack;
	int pid;
	int tgid;
	int exit_code;
	__u64 start_boottime;
	struct files_struct *files;
	struct signal_struct *signal;
	struct pid *thread_pid;
};

struct inode {
	umode_t i_mode;
	unsigned long i_ino;
};

struct file {
	struct inode *f_inode;
	void *private_data;
};

struct socket;

/* A network namespace: inum is its inode number, as /proc/PID/ns/net
 * shows it. */
struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
};

/* skc_num is the local port in host order, skc_rcv_saddr the local IPv4
 * address; CO-RE finds those fields inside the anonymous unions that hold
 * them. */
struct sock_common {
	unsigned short skc_family;
	volatile unsigned char skc_state;
	__u16 skc_num;
	__be32 skc_rcv_saddr;
	struct in6_addr skc_v6_rcv_saddr;
	possible_net_t skc_net;
};

struct sk_buff_head {
	__u32 qlen;
};

/* skb_shinfo(skb) is at head + end (end an offset on 64-bit kernels);
 * protocol is the frame's ethertype, network order. */
struct sk_buff {
	unsigned char *head;
	unsigned int end;
	__be16 protocol;
};

struct skb_shared_info {
	unsigned short gso_segs;
};

struct sock {
	struct sock_common __sk_common;
	struct socket *sk_socket;
	struct sk_buff_head sk_receive_queue;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
	atomic_t sk_drops;
};

struct socket {
	short type;
	struct sock *sk;
	struct file *file;
};

struct sockaddr_un {
	unsigned short sun_family;
	char sun_path[108];
};

/* A Unix socket's bound name: len bytes of name, its family included. */
struct unix_address {
	int len;
	struct sockaddr_un name[1];
};

struct unix_sock {
	struct sock sk;
	struct unix_address *addr;
};

/* x86-64's saved registers at syscall entry: the raw sys_enter/sys_exit
 * tracepoints hand us these, not the syscall's arguments. */
struct pt_regs {
	unsigned long di;      /* first argument */
	unsigned long si;      /* second argument */
	unsigned long dx;      /* third argument */
	unsigned long r10;     /* fourth argument */
	unsigned long orig_ax; /* syscall number */
};

#pragma clang attribute pop

/* Argument block of raw tracepoints. */
struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#endif
