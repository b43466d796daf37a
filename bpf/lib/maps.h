/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every map, and the constants set at load. Userspace finds them by these
 * names (bpf2go's ObserverMaps), pins them under them, and sizes some at
 * load: workers and slots, conns and fds, inflight, heads (enum
 * table_size, enum capture_size). Their order here is the object's.
 */
#ifndef WORKERSTATS_MAPS_H
#define WORKERSTATS_MAPS_H

#include "kernel.h"
#include <bpf/bpf_helpers.h>
#include "types.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, WORKERS_MAX);
	__type(key, __u32);
	__type(value, struct worker);
} workers SEC(".maps");

/*
 * The connection tables' size; userspace sets its own (--max-connections)
 * at load. A plain hash, not an LRU: when it is full a new connection is
 * not tracked (and counted as such), where an LRU would silently evict a
 * live one and leave its request open forever. Missed closes cannot fill
 * it: an exited owner's entries are swept by userspace, and an entry whose
 * close was missed in a live worker (dup2 over its fd, close_range) is
 * ended when its fd number or its socket address is accepted again.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONN_MAX);
	__type(key, __u64); /* struct sock * */
	__type(value, struct conn);
} conns SEC(".maps");

/*
 * The accepting process's fd of each tracked connection: (tgid << 32 | fd)
 * -> struct sock *. Filled at accept, so close and the syscall path find a
 * connection from an fd with one lookup instead of walking the task's file
 * table. An fd closed behind our back (dup2 over it, close_range, exit) is
 * left for the next accept of its number and for userspace's sweep of
 * exited processes.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CONN_MAX);
	__type(key, __u64);
	__type(value, __u64);
} fds SEC(".maps");

/* A plain hash: every entry is removed at the syscall's exit, or at the
 * thread's exit when it dies inside the syscall. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, INFLIGHT_MAX);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct inflight);
} inflight SEC(".maps");

/* Sock hooks without accept and close syscall tracepoints: the TCP
 * listeners (network namespace and port) the watched pools listen on,
 * each with its master's tgid. Written by userspace, and by adoption from
 * a scan's answer (conns.c). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct listen_key);
	__type(value, __u32);
} listen_ports SEC(".maps");

/* Sock hooks without accept: the connections adoption found no room for,
 * so that each is counted untracked once, not at every send. A hint
 * only, hence an LRU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* struct sock * */
	__type(value, __u8);
} untracked SEC(".maps");

/*
 * Time in the listen queue (queue.c). queue_waits holds, for each TCP
 * listener (network namespace and port) a watched pool listens on, the
 * waits of the connections its workers took: userspace adds and removes
 * the entries, the kernel adds to them. Per CPU: a CPU's accepts add to
 * its own copy, no atomics, no shared cache line; userspace sums them.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct listen_key);
	__type(value, struct queue_wait);
} queue_waits SEC(".maps");

/*
 * The ports of queue_waits' and listen_ports' keys, whatever their
 * namespace: bit (port % 64) of word port / 64. Written by userspace only
 * (a bit is set before its first key is added, cleared after its last is
 * removed), so that a socket's namespace is read only when its port is
 * one a watched pool listens on: one array load the verifier inlines
 * tells every other inbound connection of the host, and every outbound
 * socket of a watched worker, apart. A set bit is a hint; the keys decide.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536 / WATCHED_WORD_BITS);
	__type(key, __u32);
	__type(value, __u64);
} watched_ports SEC(".maps");

/* The connections waiting in a watched port's accept queue: when each
 * entered it, in a table indexed by a hash of the socket's address. An
 * array, so entering and leaving cost no map update or delete (a hash
 * map's update alone cost more than the rest of the program): a
 * connection whose entry a later one took over before its accept (the
 * same hash, or one never accepted left behind) is not timed. Only a
 * watched worker's accept reads one, of a socket that entered since. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, QUEUED_SLOTS);
	__type(key, __u32);
	__type(value, struct queued);
} queued SEC(".maps");

/*
 * Which slot of its pool each worker holds, by pid: written by userspace
 * only, read by none of the programs. Pinned with the rest, so a daemon
 * restarted on the pins puts every live worker and every slot's history
 * back in its own slot. start_ticks tells a reused pid. An LRU: an entry
 * left by a worker whose end was missed goes first; one that is gone is a
 * slot userspace guesses again (the lowest free).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, WORKERS_MAX);
	__type(key, __u32);
	__type(value, struct slot_of);
} slots SEC(".maps");

/*
 * Which listening sockets a pool serves on, seen from one of its workers
 * (listeners.c): an entry under the master's tgid with want set is a
 * question, answered in the entry. scans_asked[0], set by userspace while
 * any entry wants an answer, is the only thing an accept reads otherwise.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32); /* the master's tgid */
	__type(value, struct listener_scan);
} listener_scans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scans_asked SEC(".maps");

/* read_listeners' answer (listeners.c): written by its run, which
 * userspace makes one at a time, and read by userspace after it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listeners_read);
} listeners_read SEC(".maps");

/*
 * The cheap filter: bit (tgid % 64) of word tgid / 64 is set when the
 * process may be a watched worker. Each word has two entries, each with one
 * writer, so neither overwrites the other's bits: entry 2w is written by
 * userspace only (the workers it adds), entry 2w+1 by on_fork and on_exit
 * only (the workers the kernel adds), which set and clear a bit with one
 * atomic add, each bit by its own process's fork and exit. The two share a
 * cache line. A set bit is a hint; the entry in `workers` decides.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PID_LIMIT / 64 * 2);
	__type(key, __u32);
	__type(value, __u64);
} watched SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, enum counter);
	__type(value, __u64);
} counters SEC(".maps");

/*
 * A map definition's field as __uint writes it, a pointer to an array,
 * here of no elements (a value of 0), whose element type t no loader
 * reads: it puts t in the object's BTF, for bpf2go (see struct exported).
 */
#define __naming(name, t) t (*name)[0]

/* The head of the request each connection began last (capture.c), by
 * socket, for userspace to read for the requests in flight when it is
 * asked for a dump. Least recently used first out: an in-flight request
 * began after all but the latest HEADS_TABLE. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HEADS_TABLE);
	__type(key, __u64); /* struct sock * */
	__type(value, struct req_head);
	__naming(map_flags, struct exported); /* no flags */
} req_heads SEC(".maps");

/* A blank head (one, per CPU), which a connection's first entry in
 * req_heads is made from: a head is too large for the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct req_head);
} blank_head SEC(".maps");

/* Set at load: whether the programs capture heads (capture.c). While it
 * is CAPTURE_OFF the verifier drops the capture code (and userspace makes
 * req_heads one entry); the socket-layer programs (sock.c, fentry.c)
 * capture only with CAPTURE_SOCK, reading the syscall's buffer from its
 * saved registers (syscall_regs). */
volatile const enum capture_mode capture_heads = CAPTURE_OFF;

/* Set at load: whether the programs read each response's status class
 * from its first bytes and count classes and durations per worker
 * (requests.c), once per request. */
volatile const __u8 count_status = 0;

/* Set at load when the socket-layer hooks (the sock or fentry set) are
 * the ones attached: only then do the programs read a syscall's saved
 * registers. */
volatile const __u8 sock_hooks = 0;

/* Set at load when the kernel has bpf_task_pt_regs (5.15+); without it
 * syscall_regs finds the registers at the top of the task's stack. */
volatile const __u8 regs_helper = 0;

/* Set at load, where on_listener_drop runs (refused.c): where tcp_v4_rcv
 * and tcp_v6_rcv are in the kernel's text, and how long each is (0 for
 * one the kernel lacks). */
volatile const __u64 tcp_v4_rcv_at = 0;
volatile const __u64 tcp_v4_rcv_len = 0;
volatile const __u64 tcp_v6_rcv_at = 0;
volatile const __u64 tcp_v6_rcv_len = 0;

/* Set at load: whether mark_victim's first argument is the victim's task
 * (newer kernels) rather than its pid (5.10). */
volatile const __u8 oom_victim_task = 0;

#endif
