//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * workerstats kernel side: per-worker request accounting for pre-fork pools.
 *
 * Userspace puts a pool's master into `workers` (role MASTER) with the
 * workers it already has (role WORKER). From then on the kernel follows the
 * pool by itself: a process forked by a master becomes a worker, an exiting
 * worker is marked dead (userspace folds its final counts and deletes it).
 *
 * A connection belongs to the worker that accepted it: accept() adds the
 * socket to `conns`, close() removes it. Only bytes moved on sockets in
 * `conns` are counted, so a worker's own outbound connections never count.
 *
 * A request is inbound data on an accepted connection and the response to it:
 * the first inbound bytes after an idle or answered state start one; the
 * response ends at its last outbound byte, which is known when the next
 * request starts or the connection closes.
 *
 * Bytes come from one of four attachment sets, picked by userspace:
 *  - fexit programs on the socket layer's send and receive operations,
 *    TCP and Unix (any kernel whose BPF trampolines load), which hand us
 *    the socket as the sock set's tracepoints do and patch only their own
 *    functions: no syscall hook at all. A Unix connection is adopted
 *    as a TCP one is (below), by its listener's address, and ends at
 *    unix_release;
 *  - the sock_recv_length / sock_send_length raw tracepoints (kernel >=
 *    6.3), which hand us the socket directly. There a TCP pool needs no
 *    syscall tracepoint: a connection is adopted at its worker's first
 *    send or receive on a socket whose local port, in its network
 *    namespace, the pool listens on (`listen_ports`), and ends at the TCP
 *    state change its close makes (inet_sock_set_state). A pool on a
 *    Unix socket still needs accept and close from their syscall
 *    tracepoints, which userspace attaches only while such a pool is
 *    watched (and then leaves listen_ports empty, so nothing is adopted
 *    twice);
 *  - syscall enter/exit tracepoints of read/write/send/recv and friends,
 *    finding the socket from the fd recorded at accept (any kernel with BTF);
 *  - the same work from the raw sys_exit tracepoint (and sys_enter for
 *    close) (x86-64), whose links can be pinned before 5.15, where
 *    tracepoint attachments cannot.
 *
 * Every program that runs for the whole host filters on "may the current
 * process be a watched worker" first: one bit of the `watched` bitmap,
 * indexed by tgid (two array loads the verifier inlines), before any other
 * work. Only a process whose bit is set pays the hash lookup in `workers`.
 *
 * The code, one concern a file. This file is the one bpf2go compiles: it
 * includes the others, each after those whose functions it calls, so that
 * they make one object, which userspace loads as one collection.
 *  - lib/types.h   the records and enums, and the sizes userspace shares
 *  - lib/maps.h    every map, and the constants set at load
 *  - lib/common.h  the counters, the watched filter, the current worker,
 *                  a socket from its fd, its network namespace, whether
 *                  its port may be a watched listener's, a syscall's
 *                  user buffer
 *  - requests.c    requests and bytes: what every hook set counts
 *  - capture.c     request capture: each connection's request head, in req_heads
 *  - process.c     process lifecycle: fork, exit, fatal signals, OOM kills
 *  - queue.c       time in the listen queue
 *  - refused.c     connection attempts a full accept queue refused
 *  - listeners.c   which listening sockets a pool's workers hold, and
 *                  reading them when userspace asks (read_listeners,
 *                  never attached)
 *  - conns.c       connections: accept, close, adoption, their end
 *  - sock.c        bytes, the sock hook set
 *  - fentry.c      bytes, the fentry hook set (kernel functions)
 *  - syscall.c     bytes, the syscall hook set
 *  - raw.c         bytes, the raw hook set
 */
#include "lib/common.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#include "requests.c"
#include "capture.c"
#include "process.c"
#include "queue.c"
#include "refused.c"
#include "listeners.c"
#include "conns.c"
#include "sock.c"
#include "fentry.c"
#include "syscall.c"
#include "raw.c"
