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

/* Keeps the first bytes received by syscall nr (second argument arg1), n
 * in all, on connection sk (entry c) of worker tgid: at, when they begin a
 * request; 0 for more of the head of the one c is receiving. */
static __always_inline void capture(__u64 sk, struct conn *c, __u32 tgid, long n, __u64 at, long nr, __u64 arg1)
{
	__u64 room = 0;
	__u64 buf = user_buf(nr, arg1, &room);
	if (!buf)
		return;
	struct req_head *h = head_entry(sk, at);
	if (!h)
		return;
	__u32 had = 0;
	if (at) {
		h->start_ns = at;
		h->tgid = tgid;
		h->cut = 0;
	} else {
		had = c->captured;
		if (h->start_ns != c->req_start_ns || had >= HEAD_MAX)
			return;
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
	c->captured = had + len;
}
