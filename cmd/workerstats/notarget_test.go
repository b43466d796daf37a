package main

import (
	"strings"
	"testing"

	"github.com/workerstats/workerstats/observer"
)

// TestNoTargetMessage: serve with no target says in one line how to give
// one and which masters it could watch.
func TestNoTargetMessage(t *testing.T) {
	msg := noTargetMessage([]observer.Candidate{
		{PID: 400, Name: "php-fpm8.2", Workers: 3},
		{PID: 500, Name: "nginx", Workers: 1},
	})
	for _, s := range []string{"--pid PID, --pidfile FILE or --name NAME", "php-fpm8.2 (--pid 400, 3 workers)", "nginx (--pid 500, 1 worker)"} {
		if !strings.Contains(msg, s) {
			t.Errorf("message %q lacks %q", msg, s)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("message is not one line: %q", msg)
	}
	if msg := noTargetMessage(nil); !strings.Contains(msg, "no pre-fork master") {
		t.Errorf("message with nothing running: %q", msg)
	}
}
