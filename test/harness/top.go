package harness

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// TopRow is one worker's row as `workerstats top` shows it.
type TopRow struct {
	Slot, PID int
	Fields    []string // slot pid status req/s, then as wide as the terminal: avg p99 5xx rss [running request...]
}

// TopRows reads the worker rows off a screen (or a --once frame) of top's,
// in screen order.
func TopRows(screen string) []TopRow {
	var rows []TopRow
	inTable := false
	for _, l := range strings.Split(screen, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "SLOT" {
			inTable = true
			continue
		}
		if !inTable || len(f) < 4 {
			continue
		}
		slot, err1 := strconv.Atoi(f[0])
		pid, err2 := strconv.Atoi(f[1])
		if err1 == nil && err2 == nil {
			rows = append(rows, TopRow{Slot: slot, PID: pid, Fields: f})
		}
	}
	return rows
}

// TopRowsOf checks the screen has a row for each of pids (sorted) and no
// other, and returns them by pid.
func TopRowsOf(screen string, pids []int) (map[int]TopRow, error) {
	rows := map[int]TopRow{}
	var got []int
	for _, r := range TopRows(screen) {
		rows[r.PID] = r
		got = append(got, r.PID)
	}
	slices.Sort(got)
	if !slices.Equal(got, pids) {
		return nil, fmt.Errorf("rows for pids %v, want %v", got, pids)
	}
	return rows, nil
}
