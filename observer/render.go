package observer

import (
	"maps"

	"github.com/workerstats/workerstats/observer/requests"
)

// How a slot is shown: uWSGI's worker object, filled from its counters,
// what request capture saw, and how its last process ended.

// serving shows the requests a worker is in as its cores, one each, as a
// threaded uWSGI worker's are; the worker's requests are the first's.
func serving(w *Worker, reqs []Serving) {
	if len(reqs) == 0 {
		return
	}
	w.Status = "busy"
	cores := make([]Core, len(reqs))
	for i, r := range reqs {
		cores[i] = Core{ID: i, InRequest: 1, Vars: r.Vars, ReqInfo: map[string]any{}}
		if !r.Start.IsZero() { // else unknown: left out rather than 1970
			cores[i].ReqInfo["request_start"] = r.Start.Unix()
		}
		if r.Truncated { // ours: the vars are a long head's first ones
			cores[i].ReqInfo["head_truncated"] = 1
		}
	}
	cores[0].Requests = w.Cores[0].Requests
	w.Cores = cores
}

// followed adds to w what request capture saw of the slot's requests:
// their status classes and durations, and its 5xx answers to exceptions.
// Unanswered requests are the kernel's count, which capture's cannot miss.
func (s *slot) followed(w *Worker) {
	if s.past.Followed == nil && s.cur.Followed == nil {
		return
	}
	var sum requests.Summary
	for _, f := range []*requests.Summary{s.past.Followed, s.cur.Followed} {
		if f != nil {
			sum.Add(*f)
		}
	}
	sum.Ended[requests.Unanswered] = s.past.Unanswered + s.cur.Unanswered
	w.Exceptions = sum.Exceptions()
	w.Statuses = &Statuses{
		S2xx: sum.Ended[requests.Status2xx], S3xx: sum.Ended[requests.Status3xx],
		S4xx: sum.Ended[requests.Status4xx], S5xx: sum.Ended[requests.Status5xx],
		Other: sum.Ended[requests.StatusOther], Unanswered: sum.Ended[requests.Unanswered],
	}
	h := sum.Durations
	w.Durations = &Durations{Count: h.Count, SumUs: h.SumNs / 1000, Counts: h.Counts[:]}
	w.Durations.BoundsUs = durationBoundsUs
}

// durationBoundsUs are requests.Bounds in µs, as every dump shows them.
var durationBoundsUs = func() []uint64 {
	out := make([]uint64, len(requests.Bounds))
	for i, b := range requests.Bounds {
		out[i] = b / 1000
	}
	return out
}()

// worker renders a slot as uWSGI's worker object.
func (s *slot) worker(bootUnix int64) Worker {
	c := s.cur
	// A request never answered is one, and an exception, as in uWSGI.
	w := Worker{
		ID:            s.id,
		PID:           s.nsPID,
		HostPID:       s.proc.PID,
		Requests:      s.past.Requests + s.past.Unanswered + c.Requests + c.Unanswered,
		DeltaRequests: c.Requests + c.Unanswered,
		Exceptions:    s.past.Unanswered + c.Unanswered,
		Status:        "idle",
		RunningTime:   (s.past.RunNs + c.RunNs) / 1000,
		LastSpawn:     bootUnix + int64(s.proc.StartTicks/ticksPerSecond),
		RespawnCount:  s.spawns,
		TX:            s.past.TX + c.TX,
		AvgRT:         c.AvgRTNs / 1000,
		RX:            s.past.RX + c.RX,
		Accepted:      s.past.Accepts + c.Accepts,
		Closed:        s.past.Closes + c.Closes,
	}
	if c.AvgRTNs == 0 {
		w.AvgRT = s.past.AvgRTNs / 1000
	}
	w.HarakiriCount = s.harakiri
	if s.lastExit != nil {
		w.LastExit = s.lastExit.render(bootUnix)
		w.Exits = maps.Clone(s.exits)
	}
	// uWSGI's statuses: "cheap" for a slot with no process (uWSGI's
	// cheaper mode stopped it; here it exited and was not replaced yet),
	// "busy" in a request, "pause" for a stopped process, else "idle".
	// "sig" (running a signal handler) cannot be seen from outside.
	inRequest := 0
	switch {
	case !s.alive:
		w.PID, w.HostPID, w.Status = 0, 0, "cheap"
	case c.InProgress > 0:
		w.Accepting, w.Status, inRequest = 1, "busy", 1
	case s.paused:
		w.Accepting, w.Status = 1, "pause"
	default:
		w.Accepting = 1
	}
	s.followed(&w)
	w.Apps = []App{{Requests: w.Requests, Exceptions: w.Exceptions}}
	w.Cores = []Core{{
		Requests:  w.Requests,
		InRequest: inRequest,
		Vars:      []string{},
		ReqInfo:   map[string]any{},
	}}
	return w
}
