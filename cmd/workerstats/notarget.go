package main

import (
	"fmt"
	"strings"

	"github.com/workerstats/workerstats/observer"
)

// noTargetMessage is what the daemon says when it was given no target: what
// it could watch, and how to choose.
func noTargetMessage(cands []observer.Candidate) string {
	const how = "give the pool's master with --pid PID, --pidfile FILE or --name NAME (or several pools with --config FILE, or every pool on the node with --discover)"
	if len(cands) == 0 {
		return "no target: " + how + "; no pre-fork master (a process with forked children of its own name) is running now"
	}
	var b strings.Builder
	b.WriteString("no target: " + how + "; running now: ")
	for i, c := range cands {
		if i == 8 {
			fmt.Fprintf(&b, ", and %d more", len(cands)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		workers := "workers"
		if c.Workers == 1 {
			workers = "worker"
		}
		fmt.Fprintf(&b, "%s (--pid %d, %d %s)", c.Name, c.PID, c.Workers, workers)
	}
	return b.String()
}
