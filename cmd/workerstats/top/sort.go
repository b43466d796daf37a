package top

import (
	"cmp"
	"slices"
	"strings"
)

// Order is how rows are sorted: a key of SortKeys, and whether the order
// is reversed from the key's own (pressing a key again reverses it).
type Order struct {
	Key     rune
	Reverse bool
}

// SortKeys are the keys that sort rows, in the footer's order, with what
// each sorts by. Figures sort largest first, the others smallest first.
var SortKeys = []struct {
	Key  rune
	Name string
}{
	{'w', "slot"}, {'p', "pid"}, {'r', "req/s"}, {'t', "avg time"}, {'m', "rss"}, {'s', "status"},
}

// Press returns the order after key is pressed, and whether key sorts.
func (o Order) Press(key rune) (Order, bool) {
	for _, k := range SortKeys {
		if k.Key == key {
			if o.Key == key {
				return Order{Key: key, Reverse: !o.Reverse}, true
			}
			return Order{Key: key}, true
		}
	}
	return o, false
}

// name is what the order sorts by, as the footer says it.
func (o Order) name() string {
	for _, k := range SortKeys {
		if k.Key == o.Key {
			arrow := map[bool]string{false: "↑", true: "↓"}[o.descending()]
			return k.Name + " " + arrow
		}
	}
	return "slot ↑"
}

// descending says rows go largest first.
func (o Order) descending() bool {
	figure := strings.ContainsRune("rtm", o.Key)
	return figure != o.Reverse
}

// Sort sorts rows in order o; ties go by slot.
func Sort(rows []Row, o Order) {
	by := func(a, b Row) int {
		switch o.Key {
		case 'p':
			return cmp.Compare(a.PID, b.PID)
		case 'r':
			return cmp.Compare(a.RPS, b.RPS)
		case 't':
			return cmp.Compare(a.Avg, b.Avg)
		case 'm':
			return cmp.Compare(a.RSS, b.RSS)
		case 's':
			return cmp.Compare(a.Status, b.Status)
		}
		return cmp.Compare(a.Slot, b.Slot)
	}
	slices.SortStableFunc(rows, func(a, b Row) int {
		c := by(a, b)
		if o.descending() {
			c = -c
		}
		return cmp.Or(c, cmp.Compare(a.Slot, b.Slot))
	})
}
