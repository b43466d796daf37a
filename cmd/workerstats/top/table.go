package top

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// column is one of the table's columns of fixed width.
type column struct {
	title string
	width int
	left  bool // aligned left (figures align right)
	cell  func(Row) string
}

// columns are the fixed columns, in order; the current request takes
// what width is left after them.
var columns = []column{
	{"SLOT", 4, false, func(r Row) string { return fmt.Sprint(r.Slot) }},
	{"PID", 8, false, Row.pid},
	{"STATUS", 6, true, Row.status},
	{"REQ/S", 7, false, Row.rps},
	{"AVG", 7, false, Row.avg},
	{"P99", 7, false, Row.p99},
	{"5XX", 5, false, Row.s5xx},
	{"RSS", 7, false, Row.rss},
	{"RUNNING", 7, false, Row.running},
}

// dropOrder is which columns go first when the terminal is too narrow.
var dropOrder = []string{"P99", "5XX", "RSS", "STATUS", "AVG", "RUNNING"}

// minRequest is the least width the request column keeps before a column
// is dropped for it.
const minRequest = 16

// fitColumns returns the columns that fit in width w with the request
// column, and the width left for that.
func fitColumns(w int) ([]column, int) {
	cols := slices.Clone(columns)
	used := func() int {
		n := 0
		for _, c := range cols {
			n += c.width + 1
		}
		return n
	}
	for _, name := range dropOrder {
		if w-used() >= minRequest {
			break
		}
		cols = slices.DeleteFunc(cols, func(c column) bool { return c.title == name })
	}
	return cols, max(w-used(), 0)
}

// table returns the table's header line and a line per row, in order o.
func table(f *Frame, o Order, w int) (string, []string) {
	cols, reqWidth := fitColumns(w)
	line := func(cell func(column) string, request string) string {
		var b strings.Builder
		for _, c := range cols {
			s := cut(cell(c), c.width)
			if c.left {
				fmt.Fprintf(&b, "%-*s ", c.width, s)
			} else {
				fmt.Fprintf(&b, "%*s ", c.width, s)
			}
		}
		return strings.TrimRight(cut(b.String()+request, w), " ")
	}
	head := line(func(c column) string { return c.title }, "REQUEST")
	head += strings.Repeat(" ", max(w-len(head), 0)) // the reverse bar spans the width
	var rows []string
	for _, r := range sortedRows(f, o) {
		rows = append(rows, line(func(c column) string { return c.cell(r) }, cut(r.request(), reqWidth)))
	}
	return head, rows
}

// unix is a unix time in seconds as a time.
func unix(s int64) time.Time { return time.Unix(s, 0) }
