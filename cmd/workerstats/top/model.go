package top

import (
	"cmp"
	"maps"
	"slices"
	"time"
)

// Sample is a dump and when it was read.
type Sample struct {
	Dump *Dump
	At   time.Time
}

// Frame is what one screen shows: the pool, a row per worker and the last
// exits, from a sample and the one before it.
type Frame struct {
	Version     string
	PID         int
	Mode        string // "ebpf" or "procfs"; "" from uWSGI's own server
	ListenQueue uint64
	QueueErrors uint64
	Sockets     []Socket
	Rows        []Row
	Exits       []Exit            // the workers' last exits, newest first
	ExitCounts  map[string]uint64 // exits by cause, over the workers
	Harakiri    uint64
	Now         time.Time
}

// Row is one worker as a row shows it. A Has flag is false where the dump
// does not say (uWSGI's own server counts no statuses, say).
type Row struct {
	Slot, PID int
	Status    string
	RPS       float64
	HasRPS    bool // the pid was in the sample before
	Avg       time.Duration
	HasAvg    bool
	P99       time.Duration
	P99Over   bool // above the histogram's last bound
	HasP99    bool
	S5xx      uint64
	Has5xx    bool
	RSS       uint64 // 0: not measured
	Busy      bool
	Request   Request
	Running   time.Duration // since Request.Start, when it is known
	Requests  uint64
}

// Exit is a worker's last exit.
type Exit struct {
	Slot int
	LastExit
}

// NewFrame builds the frame of cur; prev (Dump nil if none) gives the rates.
func NewFrame(prev, cur Sample, now time.Time) Frame {
	d := cur.Dump
	f := Frame{
		Version: d.Version, PID: d.PID, ListenQueue: d.ListenQueue, QueueErrors: d.ListenQueueErrors,
		Sockets: d.Sockets, ExitCounts: map[string]uint64{}, Now: now,
	}
	if d.Observer != nil {
		f.Mode = d.Observer.Mode
	}
	before := map[int]uint64{}
	if prev.Dump != nil {
		for _, w := range prev.Dump.Workers {
			before[w.PID] = w.Requests
		}
	}
	dt := cur.At.Sub(prev.At).Seconds()
	for _, w := range d.Workers {
		r := newRow(w, now)
		if n, ok := before[w.PID]; ok && w.PID != 0 && dt > 0 && w.Requests >= n {
			r.RPS, r.HasRPS = float64(w.Requests-n)/dt, true
		}
		f.Rows = append(f.Rows, r)
		f.Harakiri += w.HarakiriCount
		if w.LastExit != nil {
			f.Exits = append(f.Exits, Exit{Slot: w.ID, LastExit: *w.LastExit})
		}
		for cause, n := range w.Exits {
			f.ExitCounts[cause] += n
		}
	}
	slices.SortStableFunc(f.Exits, func(a, b Exit) int { return cmp.Compare(b.At, a.At) })
	return f
}

// newRow is worker w as a row shows it at now, without its rate.
func newRow(w Worker, now time.Time) Row {
	r := Row{Slot: w.ID, PID: w.PID, Status: w.Status, RSS: w.RSS, Requests: w.Requests}
	if w.AvgRT > 0 || w.Requests > 0 {
		r.Avg, r.HasAvg = time.Duration(w.AvgRT)*time.Microsecond, true
	}
	r.P99, r.P99Over, r.HasP99 = w.Durations.Quantile(0.99)
	if w.Statuses != nil {
		r.S5xx, r.Has5xx = w.Statuses.S5xx, true
	}
	if req, ok := w.CurrentRequest(); ok {
		r.Busy, r.Request = true, req
		if !req.Start.IsZero() {
			r.Running = max(now.Sub(req.Start), 0)
		}
	}
	return r
}

// TotalRPS is the pool's requests per second; false before two samples.
func (f *Frame) TotalRPS() (float64, bool) {
	var sum float64
	any := false
	for _, r := range f.Rows {
		if r.HasRPS {
			sum, any = sum+r.RPS, true
		}
	}
	return sum, any
}

// Busy counts the workers in a request.
func (f *Frame) Busy() int {
	n := 0
	for _, r := range f.Rows {
		if r.Busy {
			n++
		}
	}
	return n
}

// Causes are the exit causes counted, sorted.
func (f *Frame) Causes() []string { return slices.Sorted(maps.Keys(f.ExitCounts)) }
