//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Request capture: the first HEAD_MAX bytes of each request a watched
 * worker receives and the first RESPONSE_HEAD_MAX of each response it
 * sends (its status is at the start: the status line, or FastCGI's Status
 * header, which PHP writes first), once per request and per response,
 * never more of a body than fits in those bytes, as struct head records
 * on the heads ring. Userspace parses them (observer/proto). Whether the
 * programs capture is capture_heads, set at load (lib/maps.h).
 */
#include "lib/common.h"

/* Whether a receive of n bytes on c (no request begun by it) brings more
 * of a request head to capture: one still being received whose first
 * bytes came short of HEAD_MAX. */
static __always_inline int head_continues(struct conn *c, __u32 dir)
{
	return capture_heads && dir == DIR_RECV && c->state == CONN_RECEIVING && c->captured < HEAD_MAX;
}

/* Fills h, a record with room for cap bytes of data (a constant at each
 * call), with at most max of them, from user buffer buf (room bytes long)
 * of a syscall that moved n. */
static __always_inline void fill_head(struct head *h, __u64 cap, __u64 max, __u64 buf, __u64 room, long n)
{
	__u64 len = (__u64)n < room ? (__u64)n : room;
	if (len > max)
		len = max;
	/* max may vary (what a head's earlier reads left): bound len by the
	 * record's constant room where older verifiers see it, after the
	 * barrier that keeps the compiler from folding the test away. */
	barrier_var(len);
	if (len > cap)
		len = cap;
	if (bpf_probe_read_user(h->data, len, (void *)buf))
		len = 0;
	h->len = len;
	h->total = n;
}

/* Hands h to userspace. Waking the reader for each head would cost more
 * than all the rest (an interrupt and a wakeup): it polls, and is woken
 * only when the ring is half full. */
static __always_inline void submit_head(struct head *h)
{
	__u64 pending = bpf_ringbuf_query(&heads, BPF_RB_AVAIL_DATA);
	bpf_ringbuf_submit(h, pending > HEADS_RING / 2 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Sends the first bytes syscall nr (second argument arg1) moved, n in all,
 * on connection sk (entry c) of worker tgid, to userspace: at, when they
 * begin a request or response; 0 for more of a request's head. */
static __always_inline void capture(__u64 sk, struct conn *c, __u32 tgid, __u32 dir, long n, __u64 at, long nr, __u64 arg1)
{
	__u64 room = 0;
	__u64 buf = user_buf(nr, arg1, &room);
	if (!buf)
		return;
	struct head *h;
	if (dir == DIR_SEND) {
		h = bpf_ringbuf_reserve(&heads, sizeof(*h) - HEAD_MAX + RESPONSE_HEAD_MAX, 0);
		if (h)
			fill_head(h, RESPONSE_HEAD_MAX, RESPONSE_HEAD_MAX, buf, room, n);
	} else {
		__u32 had = at ? 0 : c->captured;
		h = bpf_ringbuf_reserve(&heads, sizeof(*h), 0);
		if (h) {
			fill_head(h, HEAD_MAX, had < HEAD_MAX ? HEAD_MAX - had : 0, buf, room, n);
			c->captured = had + h->len;
		}
	}
	if (!h) {
		count(CNT_HEAD_LOST);
		return;
	}
	h->sk = sk;
	h->ts_ns = at ? at : bpf_ktime_get_ns();
	h->last_tx_ns = c->last_tx_ns;
	h->tgid = tgid;
	h->kind = at ? dir : HEAD_MORE;
	submit_head(h);
}

/* Tells userspace that connection sk (entry c, of worker tgid) closes in
 * the middle of a request: answered or not, it is over. Once per
 * connection. */
static __always_inline void capture_close(__u64 sk, struct conn *c, __u32 tgid)
{
	if (capture_heads == CAPTURE_OFF || c->state == CONN_IDLE)
		return;
	struct head *h = bpf_ringbuf_reserve(&heads, sizeof(*h) - HEAD_MAX, 0);
	if (!h) {
		count(CNT_HEAD_LOST);
		return;
	}
	h->sk = sk;
	h->ts_ns = bpf_ktime_get_ns();
	h->last_tx_ns = c->last_tx_ns;
	h->tgid = tgid;
	h->kind = HEAD_CLOSE;
	h->len = 0;
	h->total = c->state;
	submit_head(h);
}
