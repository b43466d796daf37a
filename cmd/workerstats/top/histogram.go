package top

import (
	"math"
	"time"
)

// Histogram is a distribution of durations as workerstats serves it:
// Counts[i] counts those up to BoundsUs[i] µs (above the one before), and
// the last of Counts, one more than BoundsUs, those above them all.
type Histogram struct {
	Count    uint64   `json:"count"`
	SumUs    uint64   `json:"sum_us"`
	BoundsUs []uint64 `json:"bounds_us"`
	Counts   []uint64 `json:"counts"`
}

// Avg is the mean duration; false with nothing counted.
func (h *Histogram) Avg() (time.Duration, bool) {
	if h == nil || h.Count == 0 {
		return 0, false
	}
	return time.Duration(h.SumUs/h.Count) * time.Microsecond, true
}

// Quantile is the upper bound of the bucket that holds the q-quantile (0 <
// q ≤ 1): the quantile is at most that. over says it is in the overflow
// bucket, above the last bound (which d is then). False with nothing
// counted or a malformed histogram.
func (h *Histogram) Quantile(q float64) (d time.Duration, over, ok bool) {
	if h == nil || len(h.BoundsUs) == 0 || len(h.Counts) != len(h.BoundsUs)+1 {
		return 0, false, false
	}
	var total uint64
	for _, n := range h.Counts {
		total += n
	}
	if total == 0 {
		return 0, false, false
	}
	rank := uint64(math.Ceil(q * float64(total)))
	var cum uint64
	for i, n := range h.Counts {
		cum += n
		if cum >= rank && i < len(h.BoundsUs) {
			return time.Duration(h.BoundsUs[i]) * time.Microsecond, false, true
		}
	}
	return time.Duration(h.BoundsUs[len(h.BoundsUs)-1]) * time.Microsecond, true, true
}
