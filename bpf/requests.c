//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Requests and bytes: what every hook set does with the bytes a worker
 * moves on one of its connections. A request is inbound data on an
 * accepted connection and the response to it: the first inbound bytes
 * after an idle or answered state start one; the response ends at its
 * last outbound byte, which is known when the next request starts or the
 * connection closes.
 */
#include "lib/common.h"

/* End the request on c. An answered one adds its time, first inbound byte
 * to last response byte; one never answered counts as such, unless its
 * worker has exited (on_exit counted it then). */
static __always_inline void finish_request(struct worker *w, struct conn *c)
{
	__sync_fetch_and_add(&w->in_progress, -1);
	if (c->state == CONN_RECEIVING) {
		__sync_fetch_and_add(&w->awaiting, -1);
		if (!w->exit_ns)
			__sync_fetch_and_add(&w->unanswered, 1);
	}
	if (c->state == CONN_RESPONDING) {
		__u64 rt = c->last_tx_ns > c->req_start_ns ? c->last_tx_ns - c->req_start_ns : 0;
		__sync_fetch_and_add(&w->rt_ns, rt);
		__sync_fetch_and_add(&w->finished, 1);
		w->avg_rt_ns = (w->avg_rt_ns + rt) / 2;
	}
	c->state = CONN_IDLE;
}

/* Counts n bytes moved on c; when they begin a request (a receive) or its
 * response (a send), the bytes to capture, returns when (else 0). same:
 * the protocol says a receive is more of the request being answered (see
 * same_request). */
static __always_inline __u64 conn_bytes(struct conn *c, __u32 dir, long n, __u32 tgid, struct worker *cur, int same)
{
	struct worker *w = owner_of(c, tgid, cur);
	if (!w)
		return 0;
	if (dir == DIR_SEND) {
		__u64 now = bpf_ktime_get_ns();
		__sync_fetch_and_add(&w->tx, n);
		c->last_tx_ns = now;
		w->last_tx_ns = now;
		if (c->state != CONN_RECEIVING)
			return 0;
		c->state = CONN_RESPONDING;
		__sync_fetch_and_add(&w->requests, 1);
		__sync_fetch_and_add(&w->awaiting, -1);
		return now;
	}
	__sync_fetch_and_add(&w->rx, n);
	if (c->state == CONN_RECEIVING || same)
		return 0; /* more of the same request */
	if (c->state == CONN_RESPONDING)
		finish_request(w, c); /* keep-alive: the previous one is answered */
	__sync_fetch_and_add(&w->in_progress, 1);
	__sync_fetch_and_add(&w->awaiting, 1);
	__u64 now = bpf_ktime_get_ns();
	c->req_start_ns = now;
	c->state = CONN_RECEIVING;
	return now;
}

/* Whether a receive of n bytes on c may be more of the request being
 * answered rather than the next one, as far as can be told without its
 * bytes: a lone FastCGI record header (8 bytes; PHP-FPM reads each one on
 * its own) while the request is answered. An HTTP or uwsgi request is
 * longer, so theirs pay nothing more. */
static __always_inline int may_continue(struct conn *c, __u32 dir, long n)
{
	return dir == DIR_RECV && n == 8 && c->state == CONN_RESPONDING;
}

/* Whether those 8 bytes, received by syscall nr (second argument arg1),
 * are more of the request being answered: the protocol says so for a
 * FastCGI record other than BEGIN_REQUEST, such as the empty STDIN record
 * that ends a request's input, which PHP-FPM reads only after answering.
 * Reads the record's first two bytes. (A uwsgi packet of modifier1 1 and
 * a size of 2 to 11 looks the same: no server sends one.) */
static __always_inline int same_request(long nr, __u64 arg1)
{
	__u64 room = 0;
	__u64 buf = user_buf(nr, arg1, &room);
	__u8 rec[2];
	if (!buf || room < sizeof(rec) || bpf_probe_read_user(rec, sizeof(rec), (void *)buf))
		return 0;
	return rec[0] == 1 && rec[1] >= 2 && rec[1] <= 11;
}
