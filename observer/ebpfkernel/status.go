package ebpfkernel

import (
	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/requests"
)

// Status classes and durations counted in the kernel (bpf/requests.c,
// unless Options.NoStatus): each response's class is read from its first
// bytes as it begins, and each answered request's class and duration
// counted in its worker's entry when it ends, so they need no captured
// head to reach userspace.

// The kernel's classes are requests.Class's, in the same order, and its
// duration buckets requests.Bounds' and the rest.
var (
	_ = [1]struct{}{}[int(bpf.ObserverStatusClassCLASS_ANSWERED)-int(requests.Unanswered)]
	_ = [1]struct{}{}[len(bpf.ObserverWorker{}.RtCounts)-len(requests.Bounds)-1]
	_ = [1]struct{}{}[len(bpf.ObserverWorker{}.Answered)-int(requests.Unanswered)]
)

// summary is how the requests of worker entry v ended, as the kernel
// counted them.
func summary(v *bpf.ObserverWorker) *requests.Summary {
	s := &requests.Summary{Durations: requests.Histogram{Counts: v.RtCounts, Count: v.Finished, SumNs: v.RtNs}}
	copy(s.Ended[:], v.Answered[:])
	s.Ended[requests.Unanswered] = v.Unanswered
	return s
}

// keepSummary writes the classes and buckets of h (a slot's sums) into its
// history entry v.
func keepSummary(v *bpf.ObserverWorker, h observer.Counters) {
	v.Answered, v.RtCounts = [len(v.Answered)]uint64{}, [len(v.RtCounts)]uint64{}
	if h.Followed == nil {
		return
	}
	copy(v.Answered[:], h.Followed.Ended[:len(v.Answered)])
	v.RtCounts = h.Followed.Durations.Counts
	v.Finished = h.Followed.Durations.Count
}
