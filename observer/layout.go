package observer

import (
	"strconv"
	"unicode/utf8"
)

// layout writes a dump in uWSGI's layout (or compact, minified) as it
// goes: the bytes indentLikeUWSGI makes of encoding/json's compact form,
// without the second pass, and without reflection for the workers, which
// are nearly all of a big pool's dump. Values of no fixed shape (locks,
// sockets, req_info, the observer's block) go through encoding/json.
type layout struct {
	b        []byte
	depth    int
	minified bool
	empty    bool // nothing written yet in the innermost object or array
	err      error
}

func (l *layout) newline() {
	if !l.minified {
		l.b = appendNewline(l.b, l.depth)
	}
}

// open starts an object or array; close ends it, "{}" or "[]" if empty.
func (l *layout) open(c byte) {
	l.b = append(l.b, c)
	l.depth++
	l.empty = true
}

func (l *layout) close(c byte) {
	l.depth--
	if !l.empty {
		l.newline()
	}
	l.b = append(l.b, c)
	l.empty = false
}

// elem starts the next member of the innermost object or array.
func (l *layout) elem() {
	if !l.empty {
		l.b = append(l.b, ',')
	}
	l.newline()
	l.empty = false
}

// key starts an object member: keys are the schema's, plain ASCII.
func (l *layout) key(k string) {
	l.elem()
	l.b = append(l.b, '"')
	l.b = append(l.b, k...)
	l.b = append(l.b, '"', ':')
}

func (l *layout) uint(k string, v uint64) {
	l.key(k)
	l.b = strconv.AppendUint(l.b, v, 10)
}

func (l *layout) int(k string, v int64) {
	l.key(k)
	l.b = strconv.AppendInt(l.b, v, 10)
}

func (l *layout) str(k, v string) {
	l.key(k)
	l.string(v)
}

// string appends v quoted as encoding/json quotes it: printable ASCII
// directly, anything else (escapes, invalid UTF-8, U+2028) by encoding/json.
func (l *layout) string(v string) {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			l.json(v)
			return
		}
	}
	l.b = append(l.b, '"')
	l.b = append(l.b, v...)
	l.b = append(l.b, '"')
}

// array appends member k, an array of n elements written by each (null
// for a nil slice, as encoding/json writes it).
func (l *layout) array(k string, isNil bool, n int, each func(i int)) {
	l.key(k)
	if isNil {
		l.b = append(l.b, "null"...)
		return
	}
	l.open('[')
	for i := range n {
		l.elem()
		each(i)
	}
	l.close(']')
}

// value appends member k with v encoded by encoding/json.
func (l *layout) value(k string, v any) {
	l.key(k)
	l.json(v)
}

func (l *layout) json(v any) {
	if l.err != nil {
		return
	}
	if l.minified {
		l.b, l.err = appendJSON(l.b, v)
		return
	}
	at := len(l.b)
	l.b, l.err = appendJSON(l.b, v)
	if l.err != nil || !hasStructure(l.b[at:]) {
		return
	}
	compact := string(l.b[at:])
	l.b = appendIndented(l.b[:at], []byte(compact), l.depth)
}

// hasStructure says whether compact JSON is more than one number or string.
func hasStructure(b []byte) bool {
	return len(b) > 0 && (b[0] == '{' || b[0] == '[')
}

func (l *layout) stats(st *Stats) {
	l.open('{')
	l.str("version", st.Version)
	l.uint("listen_queue", st.ListenQueue)
	l.uint("listen_queue_errors", st.ListenQueueErrors)
	l.uint("signal_queue", st.SignalQueue)
	l.uint("load", st.Load)
	l.int("pid", int64(st.PID))
	l.int("host_pid", int64(st.HostPID))
	l.int("uid", int64(st.UID))
	l.int("gid", int64(st.GID))
	l.str("cwd", st.CWD)
	l.value("locks", st.Locks)
	l.value("sockets", st.Sockets)
	l.array("workers", st.Workers == nil, len(st.Workers), func(i int) { l.worker(&st.Workers[i]) })
	if st.Container != nil {
		l.value("container", st.Container)
	}
	if st.Pod != nil {
		l.value("pod", st.Pod)
	}
	l.value("observer", st.Observer)
	l.close('}')
}

func (l *layout) worker(w *Worker) {
	l.open('{')
	l.int("id", int64(w.ID))
	l.int("pid", int64(w.PID))
	l.int("host_pid", int64(w.HostPID))
	l.int("accepting", int64(w.Accepting))
	l.uint("requests", w.Requests)
	l.uint("delta_requests", w.DeltaRequests)
	l.uint("exceptions", w.Exceptions)
	l.uint("harakiri_count", w.HarakiriCount)
	l.uint("signals", w.Signals)
	l.uint("signal_queue", w.SignalQueue)
	l.str("status", w.Status)
	l.uint("rss", w.RSS)
	l.uint("vsz", w.VSZ)
	l.uint("running_time", w.RunningTime)
	l.int("last_spawn", w.LastSpawn)
	l.uint("respawn_count", w.RespawnCount)
	l.uint("tx", w.TX)
	l.uint("avg_rt", w.AvgRT)
	l.array("apps", w.Apps == nil, len(w.Apps), func(i int) { l.app(&w.Apps[i]) })
	l.array("cores", w.Cores == nil, len(w.Cores), func(i int) { l.core(&w.Cores[i]) })
	l.uint("rx", w.RX)
	l.uint("accepted", w.Accepted)
	l.uint("closed", w.Closed)
	if w.Statuses != nil {
		l.statuses(w.Statuses)
	}
	if w.Durations != nil {
		l.durations(w.Durations)
	}
	if w.LastExit != nil {
		l.value("last_exit", w.LastExit)
	}
	if w.Exits != nil {
		l.value("exits", w.Exits)
	}
	l.close('}')
}

func (l *layout) statuses(s *Statuses) {
	l.key("statuses")
	l.open('{')
	l.uint("2xx", s.S2xx)
	l.uint("3xx", s.S3xx)
	l.uint("4xx", s.S4xx)
	l.uint("5xx", s.S5xx)
	l.uint("other", s.Other)
	l.uint("unanswered", s.Unanswered)
	l.close('}')
}

func (l *layout) durations(d *Durations) {
	l.key("request_durations")
	l.open('{')
	l.uint("count", d.Count)
	l.uint("sum_us", d.SumUs)
	l.array("bounds_us", d.BoundsUs == nil, len(d.BoundsUs), func(i int) { l.b = strconv.AppendUint(l.b, d.BoundsUs[i], 10) })
	l.array("counts", d.Counts == nil, len(d.Counts), func(i int) { l.b = strconv.AppendUint(l.b, d.Counts[i], 10) })
	l.close('}')
}

func (l *layout) app(a *App) {
	l.open('{')
	l.int("id", int64(a.ID))
	l.int("modifier1", int64(a.Modifier1))
	l.str("mountpoint", a.Mountpoint)
	l.uint("startup_time", a.StartupTime)
	l.uint("requests", a.Requests)
	l.uint("exceptions", a.Exceptions)
	l.str("chdir", a.Chdir)
	l.close('}')
}

func (l *layout) core(c *Core) {
	l.open('{')
	l.int("id", int64(c.ID))
	l.uint("requests", c.Requests)
	l.uint("static_requests", c.StaticRequests)
	l.uint("routed_requests", c.RoutedRequests)
	l.uint("offloaded_requests", c.OffloadedRequests)
	l.uint("write_errors", c.WriteErrors)
	l.uint("read_errors", c.ReadErrors)
	l.int("in_request", int64(c.InRequest))
	l.array("vars", c.Vars == nil, len(c.Vars), func(i int) { l.string(c.Vars[i]) })
	l.value("req_info", c.ReqInfo)
	l.close('}')
}
