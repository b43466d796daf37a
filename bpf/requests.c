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

/* The bucket of a request of ns: the first bound it is at most, 5 ms to
 * 30 s (requests.Bounds), else the last. A global function (see
 * same_request): its thirteen ways out would otherwise multiply the
 * states of every path that ends a request. */
__noinline __u32 bucket_of(__u64 ns)
{
	if (ns <= 100000000ULL)
		return ns <= 5000000ULL ? 0 : ns <= 10000000ULL ? 1 : ns <= 25000000ULL ? 2 : ns <= 50000000ULL ? 3 : 4;
	if (ns <= 1000000000ULL)
		return ns <= 250000000ULL ? 5 : ns <= 500000000ULL ? 6 : 7;
	return ns <= 2500000000ULL ? 8 : ns <= 5000000000ULL ? 9 : ns <= 10000000000ULL ? 10 : ns <= 30000000000ULL ? 11 : 12;
}

/* Counts an answered request of rt ns whose response was of class in its
 * worker's classes and buckets. */
static __always_inline void count_answered(struct worker *w, __u32 class, __u64 rt)
{
	if (!count_status)
		return;
	__u32 i = bucket_of(rt);
	/* Checked again in the registers that index: older verifiers lose
	 * the bounds of the ternaries. */
	barrier_var(i);
	if (i < RT_BUCKETS)
		__sync_fetch_and_add(&w->rt_counts[i], 1);
	barrier_var(class);
	if (class < CLASS_ANSWERED)
		__sync_fetch_and_add(&w->answered[class], 1);
}

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
		count_answered(w, c->status, rt);
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
 * a size of 2 to 11 looks the same: no server sends one.)
 *
 * A global function, as response_class and copy_head: the verifier checks
 * it once, on its own, rather than again in every state of every path of
 * its callers, which multiplied their verification (and the daemon's
 * start) several times over. Their arguments are scalars. */
__noinline int same_request(long nr, __u64 arg1)
{
	__u64 room = 0;
	__u64 buf = user_buf(nr, arg1, &room);
	__u8 rec[2];
	if (!buf || room < sizeof(rec) || bpf_probe_read_user(rec, sizeof(rec), (void *)buf))
		return 0;
	return rec[0] == 1 && rec[1] >= 2 && rec[1] <= 11;
}

/* The class of an HTTP status whose digits are a, b, c. */
static __always_inline __u32 digits_class(__u8 a, __u8 b, __u8 c)
{
	if (b < '0' || b > '9' || c < '0' || c > '9' || a < '2' || a > '5')
		return CLASS_OTHER; /* none, or a 1xx */
	return a - '2';
}

/* Whether b[0..6] is "Status:", in any case. */
static __always_inline int status_header(const __u8 *b)
{
	return (b[0] | 0x20) == 's' && (b[1] | 0x20) == 't' && (b[2] | 0x20) == 'a' && (b[3] | 0x20) == 't' &&
	       (b[4] | 0x20) == 'u' && (b[5] | 0x20) == 's' && b[6] == ':';
}

#define STATUS_PEEK 24
#define FCGI_STDOUT 6

/* The status class of a response from its first bytes, those syscall nr
 * (second argument arg1) sent, n in all: an HTTP status line
 * ("HTTP/1.1 404 ...", which uwsgi servers answer in too), or a FastCGI
 * STDOUT record whose headers begin with Status (PHP writes it first when
 * it writes it), a 200 when they begin with another. */
__noinline __u32 response_class(long nr, __u64 arg1, long n)
{
	__u64 room = 0;
	__u64 buf = user_buf(nr, arg1, &room);
	__u64 len = (__u64)n < room ? (__u64)n : room;
	if (!buf || len < 12)
		return CLASS_OTHER;
	barrier_var(len);
	if (len > STATUS_PEEK)
		len = STATUS_PEEK;
	__u8 b[STATUS_PEEK] = {};
	if (bpf_probe_read_user(b, len, (void *)buf))
		return CLASS_OTHER;
	if (b[0] == 'H' && b[1] == 'T' && b[2] == 'T' && b[3] == 'P' && b[4] == '/' && b[8] == ' ')
		return digits_class(b[9], b[10], b[11]);
	if (b[0] != 1 || b[1] != FCGI_STDOUT)
		return CLASS_OTHER;
	if (!status_header(b + 8))
		return CLASS_2XX;
	if (b[15] == ' ')
		return digits_class(b[16], b[17], b[18]);
	return digits_class(b[15], b[16], b[17]);
}

/* A response began on c with the bytes syscall nr (second argument arg1)
 * sent, n in all: note its status class, for finish_request. */
static __always_inline void response_began(struct conn *c, long nr, __u64 arg1, long n)
{
	if (count_status)
		c->status = response_class(nr, arg1, n);
}
