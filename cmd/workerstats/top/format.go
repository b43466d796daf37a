package top

import (
	"fmt"
	"time"
)

const none = "-" // what a cell shows where the dump does not say

// fmtDur shows a duration in 3 or 4 figures: 850µs, 12.3ms, 4.2s, 2m05s.
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 100*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", d.Seconds())
	}
	return fmtAge(d)
}

// fmtAge shows a duration in whole seconds: 4s, 2m05s, 3h10m.
func fmtAge(d time.Duration) string {
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%02ds", s/60, s%60)
	}
	return fmt.Sprintf("%dh%02dm", s/3600, s/60%60)
}

// fmtBytes shows a size with a binary unit: 812K, 45.2M, 1.1G.
func fmtBytes(n uint64) string {
	const k = 1024
	switch {
	case n < k:
		return fmt.Sprintf("%dB", n)
	case n < k*k:
		return fmt.Sprintf("%dK", n/k)
	case n < k*k*k:
		return fmt.Sprintf("%.1fM", float64(n)/(k*k))
	}
	return fmt.Sprintf("%.1fG", float64(n)/(k*k*k))
}

// fmtRate shows requests per second.
func fmtRate(r float64) string {
	if r >= 1000 {
		return fmt.Sprintf("%.0f", r)
	}
	return fmt.Sprintf("%.1f", r)
}

// Cells of a row; each is none where the dump does not say.

func (r Row) rps() string    { return when(r.HasRPS, func() string { return fmtRate(r.RPS) }) }
func (r Row) avg() string    { return when(r.HasAvg, func() string { return fmtDur(r.Avg) }) }
func (r Row) s5xx() string   { return when(r.Has5xx, func() string { return fmt.Sprint(r.S5xx) }) }
func (r Row) rss() string    { return when(r.RSS > 0, func() string { return fmtBytes(r.RSS) }) }
func (r Row) pid() string    { return when(r.PID > 0, func() string { return fmt.Sprint(r.PID) }) }
func (r Row) status() string { return when(r.Status != "", func() string { return r.Status }) }

func (r Row) p99() string {
	switch {
	case !r.HasP99:
		return none
	case r.P99Over:
		return ">" + fmtDur(r.P99)
	}
	return fmtDur(r.P99)
}

func (r Row) running() string {
	if !r.Busy {
		return ""
	}
	return when(!r.Request.Start.IsZero(), func() string { return fmtAge(r.Running) })
}

func (r Row) request() string {
	if !r.Busy {
		return ""
	}
	return when(r.Request.Line != "", func() string { return r.Request.Line })
}

// when is f() if ok, else none.
func when(ok bool, f func() string) string {
	if !ok {
		return none
	}
	return f()
}
