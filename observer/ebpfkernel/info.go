package ebpfkernel

import (
	"sort"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
)

// recursionPrefix starts the Dropped key of each program's recursion
// misses: the runs the kernel skipped because another eBPF program was
// already running on that CPU (a tracepoint fired inside one of ours, say).
const recursionPrefix = "recursion_misses_"

// Info implements observer.Kernel.
func (k *Kernel) Info() observer.ObserverInfo {
	info := observer.ObserverInfo{
		Mode:  "ebpf",
		Hooks: k.hooks,
		Dropped: map[string]uint64{
			"connections_untracked": k.counter(bpf.ObserverCounterCNT_CONN_FULL),
			"connections_stale":     k.counter(bpf.ObserverCounterCNT_CONN_STALE),
			"workers_untracked":     k.counter(bpf.ObserverCounterCNT_WORKER_FULL) + k.unfitWorkers(),
			"workers_pid_reused":    k.counter(bpf.ObserverCounterCNT_WORKER_REUSED),
			"transfers_untracked":   k.counter(bpf.ObserverCounterCNT_INFLIGHT_FULL),
			"heads_lost":            k.counter(bpf.ObserverCounterCNT_HEAD_LOST),
		},
	}
	stats := k.programStats()
	for _, ps := range stats {
		if !missesHarmless(ps.Name) {
			info.Dropped[recursionPrefix+ps.Name] = ps.recursionMisses
		}
	}
	if k.stats != nil {
		for _, ps := range stats {
			info.Programs = append(info.Programs, ps.ProgramStats)
		}
	}
	return info
}

// programStat is one attached program's statistics. Run counts and times
// need kernel.bpf_stats_enabled; recursion misses are always counted
// (Linux 5.12 and newer; 0 before).
type programStat struct {
	observer.ProgramStats
	recursionMisses uint64
}

// programStats reads the statistics of every program the hook set runs.
func (k *Kernel) programStats() []programStat {
	var out []programStat
	for name, prog := range k.attached() {
		s, err := prog.Stats()
		if err != nil {
			continue
		}
		ps := observer.ProgramStats{Name: name, RunCount: s.RunCount, RunTimeNs: uint64(s.Runtime.Nanoseconds())}
		if s.RunCount > 0 {
			ps.AvgNs = ps.RunTimeNs / s.RunCount
		}
		out = append(out, programStat{ps, s.RecursionMisses})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// missesHarmless says whether what program name's recursion misses lose
// nothing (see the C file): on_tcp_close's are softirqs' state changes
// inside a close, where it has nothing to do; what one of on_tcp_done and
// its twin misses, nested in its own run, the other sees, and so for
// on_tcp_queued and its twin.
func missesHarmless(name string) bool {
	switch name {
	case bpf.ObserverProgOnTcpClose, bpf.ObserverProgOnTcpDone, bpf.ObserverProgOnTcpDoneTwin,
		bpf.ObserverProgOnTcpQueued, bpf.ObserverProgOnTcpQueuedTwin:
		return true
	}
	return false
}
