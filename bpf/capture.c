//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Request capture: the first HEAD_MAX bytes of each request a watched
 * worker receives, kept in req_heads by connection (lib/maps.h) until the
 * connection's next request, for userspace to read when it is asked for a
 * dump, and only then, for the requests in flight (their conns entry says
 * so). Nothing goes to userspace per request. A head that comes in
 * several reads (PHP-FPM reads each FastCGI record's header apart) is
 * kept read by read until HEAD_MAX. Whether the programs capture is
 * capture_heads, set at load (lib/maps.h).
 */
#include "lib/common.h"

/* Whether a receive of n bytes on c (no request begun by it) brings more
 * of a request head to keep: one still being received whose first bytes
 * came short of HEAD_MAX. */
static __always_inline int head_continues(struct conn *c, __u32 dir)
{
	return capture_heads && dir == DIR_RECV && c->state == CONN_RECEIVING && c->captured < HEAD_MAX;
}

/* The entry of connection sk in req_heads, made blank when it has none
 * and make says to; 0 when there is none (counted when one was wanted). */
static __always_inline struct req_head *head_entry(__u64 sk, __u64 make)
{
	struct req_head *h = bpf_map_lookup_elem(&req_heads, &sk);
	if (h || !make)
		return h;
	__u32 zero = 0;
	struct req_head *blank = bpf_map_lookup_elem(&blank_head, &zero);
	if (blank && !bpf_map_update_elem(&req_heads, &sk, blank, BPF_ANY))
		h = bpf_map_lookup_elem(&req_heads, &sk);
	if (!h)
		count(CNT_HEAD_LOST);
	return h;
}

/* copy_head's flag, in its last argument, that the bytes begin a request. */
#define HEAD_BEGINS (1U << 31)

/* Copies into connection sk's head the first bytes received by syscall
 * nr (second argument arg1), n in all (nr_n: nr << 32 | n), of worker tgid
 * (tgid_had: tgid << 32 | had, or | HEAD_BEGINS): when they begin a
 * request, which began at when; else more of the head of the one being
 * received since when, of which had bytes are kept. Returns how many are
 * kept now (had when none could be). A global function (see
 * same_request): a BPF call passes five scalars, hence the packing; the
 * caller keeps the count in its conns entry. */
__noinline __u32 copy_head(__u64 sk, __u64 arg1, __u64 nr_n, __u64 when, __u64 tgid_had)
{
	long nr = (long)(nr_n >> 32), n = (long)(__u32)nr_n;
	__u32 had = (__u32)tgid_had & ~HEAD_BEGINS;
	int begins = (tgid_had & HEAD_BEGINS) != 0;
	__u64 room = 0;
	__u64 buf = user_buf(nr, arg1, &room);
	if (!buf)
		return had;
	struct req_head *h = head_entry(sk, begins);
	if (!h)
		return had;
	if (begins) {
		h->start_ns = when;
		h->tgid = tgid_had >> 32;
		h->cut = 0;
		had = 0;
	} else if (h->start_ns != when || had >= HEAD_MAX) {
		return had;
	}
	__u64 len = (__u64)n < room ? (__u64)n : room;
	if (len > HEAD_MAX - had)
		len = HEAD_MAX - had;
	/* Bounded again where older verifiers see it, after the barriers
	 * that keep the compiler from folding the tests away: the copy ends
	 * within the data's 2 * HEAD_MAX bytes. */
	barrier_var(len);
	if (len > HEAD_MAX)
		len = HEAD_MAX;
	barrier_var(had);
	had &= HEAD_MAX - 1;
	if (bpf_probe_read_user(h->data + had, len, (void *)buf))
		len = 0;
	if ((__u64)n > len)
		h->cut = 1;
	h->len = had + len;
	return had + len;
}

/* Keeps the first bytes received by syscall nr (second argument arg1), n
 * in all, on connection sk (entry c) of worker tgid: at, when they begin a
 * request; 0 for more of the head of the one c is receiving. */
static __always_inline void capture(__u64 sk, struct conn *c, __u32 tgid, long n, __u64 at, long nr, __u64 arg1)
{
	__u64 tgid_had = (__u64)tgid << 32 | (at ? HEAD_BEGINS : c->captured);
	c->captured = copy_head(sk, arg1, (__u64)nr << 32 | (__u32)n, at ? at : c->req_start_ns, tgid_had);
}
