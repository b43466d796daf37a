//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Process lifecycle: a process a watched master forks becomes a worker
 * (noting its pid in its own PID namespace), an exiting worker is marked
 * dead (userspace folds its final counts and deletes it), and how it
 * ended is kept for its slot's last_exit: its exit status, the last fatal
 * signal sent to it and by whom (the OOM killer too), and whether it was
 * in a request then.
 */
#include "lib/common.h"

/* Task's pid in its own (innermost) PID namespace: the last of its pid's
 * numbers, numbers[level]. The level is bounded, so the read stays within
 * a pid's numbers whatever was read: namespaces nest at most 32 deep
 * (MAX_PID_NS_LEVEL). 0 when the read fails. */
static __always_inline __u32 ns_pid(struct task_struct *task)
{
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	__u32 level = BPF_CORE_READ(pid, level);
	if (level > 32)
		return 0;
	__u64 at = bpf_core_field_offset(struct pid, numbers) + level * bpf_core_type_size(struct upid) +
		   bpf_core_field_offset(struct upid, nr);
	int nr = 0;
	bpf_probe_read_kernel(&nr, sizeof(nr), (void *)pid + at);
	return nr;
}

SEC("raw_tracepoint/sched_process_fork")
int on_fork(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *parent = (struct task_struct *)ctx->args[0];
	__u32 ptgid = BPF_CORE_READ(parent, tgid);
	struct worker *m = bpf_map_lookup_elem(&workers, &ptgid);
	if (!m || m->role != ROLE_MASTER || m->exit_ns)
		return 0;
	struct task_struct *child = (struct task_struct *)ctx->args[1];
	__u32 pid = BPF_CORE_READ(child, pid);
	__u32 tgid = BPF_CORE_READ(child, tgid);
	if (pid != tgid)
		return 0; /* a new thread of the master, not a worker */

	struct worker *old = bpf_map_lookup_elem(&workers, &tgid);
	if (old && old->exit_ns)
		count(CNT_WORKER_REUSED);
	struct worker w = {
		.role = ROLE_WORKER,
		.master = ptgid,
		.start_ns = BPF_CORE_READ(child, start_boottime),
		.ns_pid = ns_pid(child),
	};
	if (bpf_map_update_elem(&workers, &tgid, &w, BPF_ANY))
		count(CNT_WORKER_FULL);
	else
		mark_forked(tgid);
	return 0;
}

/* Whether worker w is in a request at now: one received and not answered,
 * or a response being sent (a byte within RESPONSE_IDLE_NS, 100 ms, as
 * userspace's busy). */
static __always_inline int in_request(struct worker *w, __u64 now)
{
	return w->awaiting > 0 || (w->in_progress > 0 && now - w->last_tx_ns < RESPONSE_IDLE_NS);
}

SEC("raw_tracepoint/sched_process_exit")
int on_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	__u32 pid = BPF_CORE_READ(task, pid);
	__u32 tgid = BPF_CORE_READ(task, tgid);
	struct worker *w = bpf_map_lookup_elem(&workers, &tgid);
	if (!w)
		return 0;
	__u64 id = (__u64)tgid << 32 | pid;
	bpf_map_delete_elem(&inflight, &id); /* died inside a send or recv */
	/* The process has exited when its last thread does, whichever that
	 * is: a killed multi-threaded worker's leader may go first while
	 * another thread is still leaving a send, whose bytes count. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (!w->exit_ns) {
		unmark_forked(tgid);
		/* What it received and did not answer, it never will. */
		if (w->awaiting > 0)
			__sync_fetch_and_add(&w->unanswered, w->awaiting);
		__u64 now = bpf_ktime_get_ns();
		w->exit_status = BPF_CORE_READ(task, exit_code);
		if (in_request(w, now))
			w->in_request_at |= IN_REQUEST_AT_EXIT;
		w->exit_ns = now;
		w->in_progress = 0;
		w->awaiting = 0;
	}
	return 0;
}

/* Signals whose default action ends a process: those a worker's death
 * may be told by. (A worker may handle some, SIGTERM above all: then the
 * signal is what it was asked, and its exit status what it did.) */
static __always_inline int fatal_signal(long sig)
{
	switch (sig) {
	case 1: case 2: case 3: case 4: case 6: case 7: case 8: case 9:
	case 11: case 13: case 14: case 15: case 24: case 25: case 31:
		return 1;
	}
	return 0;
}

/* A signal is generated for a task: remember the last fatal one a live
 * worker was sent, and its sender (the current process; none when the
 * kernel sends it, SEND_SIG_PRIV). Runs for every signal of the host:
 * most are not fatal (SIGCHLD, and SIGURG, which the Go runtime sends its
 * threads to preempt them), told from the arguments alone; then the
 * bitmap filters on the target before any lookup. */
SEC("raw_tracepoint/signal_generate")
int on_signal(struct bpf_raw_tracepoint_args *ctx)
{
	long sig = ctx->args[0];
	if (!fatal_signal(sig) || (int)ctx->args[4] != 0) /* not delivered: ignored, pending... */
		return 0;
	struct task_struct *task = (struct task_struct *)ctx->args[2];
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (!maybe_watched(tgid))
		return 0;
	struct worker *w = live_worker(tgid);
	if (!w)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	w->kill_sig = sig;
	w->killer = ctx->args[1] == 1 ? 0 : bpf_get_current_pid_tgid() >> 32;
	w->kill_ns = now;
	/* Kept once set: a master that kills a stuck worker may follow its
	 * first signal with SIGKILL after the request's connection closed
	 * (gunicorn, when its SIGABRT is not obeyed within a second). */
	if (in_request(w, now))
		w->in_request_at |= IN_REQUEST_AT_SIGNAL;
	return 0;
}

/* The OOM killer has sent SIGKILL to a process (signal_generate saw it,
 * sent by the kernel) and marks it its victim. Runs once per OOM kill.
 * Which argument names the victim is oom_victim_task, set at load. */
SEC("raw_tracepoint/mark_victim")
int on_oom_victim(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tgid = (__u32)ctx->args[0];
	if (oom_victim_task)
		tgid = BPF_CORE_READ((struct task_struct *)ctx->args[0], tgid);
	struct worker *w = live_worker(tgid);
	if (w && w->kill_sig == 9 && w->killer == 0)
		w->killer = KILLER_OOM;
	return 0;
}
