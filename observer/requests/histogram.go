package requests

// Bounds are the upper bounds of a Histogram's buckets, in ns: fit for web
// requests, from a few ms to tens of seconds. A last bucket holds the rest.
var Bounds = [...]uint64{
	5e6, 10e6, 25e6, 50e6, 100e6, 250e6, 500e6,
	1e9, 2.5e9, 5e9, 10e9, 30e9,
}

// Histogram counts durations: Counts[i] those at most Bounds[i] and above
// the bound before, Counts[len(Bounds)] those above every bound.
type Histogram struct {
	Counts [len(Bounds) + 1]uint64
	Count  uint64
	SumNs  uint64
}

// Observe counts one duration.
func (h *Histogram) Observe(ns uint64) {
	i := 0
	for i < len(Bounds) && ns > Bounds[i] {
		i++
	}
	h.Counts[i]++
	h.Count++
	h.SumNs += ns
}

// Add adds o's counts to h's.
func (h *Histogram) Add(o Histogram) {
	for i, n := range o.Counts {
		h.Counts[i] += n
	}
	h.Count += o.Count
	h.SumNs += o.SumNs
}
