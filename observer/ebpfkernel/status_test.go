package ebpfkernel

import (
	"testing"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/requests"
)

// The classes and durations the kernel counted reach the dump as the
// follower's would, unanswered requests included, and a slot's sums
// written into its history entry read back the same after a restart.
func TestKernelSummaryRoundTrip(t *testing.T) {
	v := bpf.ObserverWorker{Finished: 9, RtNs: 123e6, Unanswered: 2}
	v.Answered = [5]uint64{5, 1, 2, 1, 0}
	v.RtCounts[0], v.RtCounts[3], v.RtCounts[12] = 6, 2, 1
	s := summary(&v)
	want := [requests.Classes]uint64{5, 1, 2, 1, 0, 2}
	if s.Ended != want {
		t.Errorf("ended %v, want %v", s.Ended, want)
	}
	if s.Exceptions() != 3 {
		t.Errorf("exceptions %d, want 3 (one 5xx, two unanswered)", s.Exceptions())
	}
	if s.Durations.Count != 9 || s.Durations.SumNs != 123e6 || s.Durations.Counts[12] != 1 {
		t.Errorf("durations %+v", s.Durations)
	}
	var kept bpf.ObserverWorker
	keepSummary(&kept, observer.Counters{Followed: s})
	kept.Unanswered, kept.RtNs = 2, 123e6
	if got := summary(&kept); *got != *s {
		t.Errorf("kept %+v, want %+v", *got, *s)
	}
}
