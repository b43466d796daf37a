package top

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
)

// View is everything one screen shows.
type View struct {
	Addr          string
	Frame         *Frame // nil until a dump was read
	Order         Order
	Err           string // why the last read failed, "" if it did not
	Width, Height int    // 0: 80 by 24; a Height below 0: as tall as it takes
}

var (
	titleStyle  = lipgloss.NewStyle().Bold(true)
	headerStyle = lipgloss.NewStyle().Reverse(true)
	errStyle    = lipgloss.NewStyle().Bold(true)
)

// maxExits is how many last exits the view lists at most.
const maxExits = 3

// Render lays the view out for its terminal size: rows that do not fit
// are elided with a "+N more" line, columns that do not fit are left out
// (the least needed first) and every line is cut at the width.
func (v View) Render() string {
	w, h := cmp.Or(max(v.Width, 0), 80), cmp.Or(v.Height, 24)
	fill := h > 0
	if !fill {
		h = math.MaxInt32
	}
	var top, bottom []string
	top = append(top, v.title(w))
	if v.Frame != nil {
		top = append(top, poolLine(v.Frame), totalsLine(v.Frame))
	}
	if v.Err != "" {
		bottom = append(bottom, errStyle.Render(cut(v.Err, w)))
	}
	bottom = append(bottom, cut(footer(v.Order), w))
	if v.Frame == nil {
		return strings.Join(append(append(top, ""), bottom...), "\n")
	}
	head, rows := table(v.Frame, v.Order, w)
	avail := h - len(top) - len(bottom) - 1 // the table's header
	body := fitRows(rows, avail)
	if spare := avail - len(body); spare >= 3 {
		body = append(body, exitLines(v.Frame, w, spare-1)...)
	}
	for fill && len(body) < avail { // the footer at the bottom
		body = append(body, "")
	}
	lines := append(top, headerStyle.Render(head))
	lines = append(append(lines, body...), bottom...)
	for i, l := range lines[:len(top)] {
		lines[i] = cut(l, w)
	}
	lines[0] = titleStyle.Render(lines[0])
	return strings.Join(lines, "\n")
}

// fitRows returns rows cut to avail lines, the last one saying how many
// more there are when they do not all fit.
func fitRows(rows []string, avail int) []string {
	if len(rows) <= avail {
		return rows
	}
	if avail < 1 {
		return nil
	}
	shown := avail - 1
	return append(rows[:shown:shown], fmt.Sprintf("+%d more", len(rows)-shown))
}

// title is the first line: what is read, and the time of the dump.
func (v View) title(w int) string {
	s := "workerstats top · " + v.Addr
	if f := v.Frame; f != nil {
		if f.Version != "" {
			s += " · version " + f.Version
		}
		if f.PID > 0 {
			s += fmt.Sprintf(" · master %d", f.PID)
		}
		if f.Mode != "" {
			s += " · " + f.Mode
		}
		clock := f.Now.Format("15:04:05")
		if pad := w - ansi.StringWidth(s) - len(clock); pad >= 2 {
			s += strings.Repeat(" ", pad) + clock
		}
	}
	return s
}

// poolLine is the pool's listen queue, and each socket's queue and wait.
func poolLine(f *Frame) string {
	parts := []string{fmt.Sprintf("listen queue %d, errors %d", f.ListenQueue, f.QueueErrors)}
	for _, s := range f.Sockets {
		p := fmt.Sprintf("%s queue %d/%d", s.Name, s.Queue, s.MaxQueue)
		if s.QueueWait != nil {
			avg, ok := s.QueueWait.Avg()
			q := Row{HasAvg: ok, Avg: avg}
			q.P99, q.P99Over, q.HasP99 = s.QueueWait.Quantile(0.99)
			p += fmt.Sprintf(" wait avg %s p99 %s", q.avg(), q.p99())
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, " · ")
}

// totalsLine is the pool's workers, rate, harakiris and exits in all.
func totalsLine(f *Frame) string {
	rps, ok := f.TotalRPS()
	parts := []string{
		fmt.Sprintf("workers %d, %d busy", len(f.Rows), f.Busy()),
		when(ok, func() string { return fmtRate(rps) }) + " req/s",
		fmt.Sprintf("harakiri %d", f.Harakiri),
	}
	if causes := f.Causes(); len(causes) > 0 {
		var c []string
		for _, k := range causes {
			c = append(c, fmt.Sprintf("%s %d", k, f.ExitCounts[k]))
		}
		parts = append(parts, "exits: "+strings.Join(c, ", "))
	}
	return strings.Join(parts, " · ")
}

// exitLines lists the newest last exits in at most n lines, a heading
// first; none if there are none or n < 2.
func exitLines(f *Frame, w, n int) []string {
	if len(f.Exits) == 0 || n < 2 {
		return nil
	}
	lines := []string{"", "last exits"}
	for _, e := range f.Exits[:min(len(f.Exits), maxExits, n-1)] {
		lines = append(lines, cut("  "+exitText(e, f), w))
	}
	return lines
}

// exitText is one exit: which process, how, by whom, when, in what.
func exitText(e Exit, f *Frame) string {
	s := fmt.Sprintf("slot %d pid %d ", e.Slot, e.PID)
	if e.Status == "killed" {
		s += "killed by " + e.Signal
	} else {
		s += fmt.Sprintf("exited %d", e.Code)
	}
	if e.By != "" {
		s += " (" + e.By + ")"
	}
	if e.At > 0 {
		s += " " + fmtAge(max(f.Now.Sub(unix(e.At)), 0)) + " ago"
	}
	if e.InRequest == 1 {
		s += " in request"
		if e.Request != "" {
			s += " " + e.Request
		}
	}
	return s
}

// footer says which keys do what.
func footer(o Order) string {
	var keys []string
	for _, k := range SortKeys {
		keys = append(keys, fmt.Sprintf("%c %s", k.Key, k.Name))
	}
	return "q quit · sort: " + strings.Join(keys, "  ") + " (now " + o.name() + ")"
}

// cut cuts s to w cells.
func cut(s string, w int) string { return ansi.Truncate(s, w, "…") }

// sortedRows returns the frame's rows in order o.
func sortedRows(f *Frame, o Order) []Row {
	rows := slices.Clone(f.Rows)
	Sort(rows, o)
	return rows
}
