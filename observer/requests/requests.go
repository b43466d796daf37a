// Package requests says what a pool's requests are: the vars of one a
// worker is serving now, read from its head's first bytes as the kernel
// side keeps them, and how a worker's requests ended (by status class)
// and how long they took, as the kernel side counts them.
//
// The bytes come from anyone who can reach the observed server: they are
// parsed by observer/proto, at most HeadMax of them.
package requests

import "github.com/workerstats/workerstats/observer/proto"

// Class is how a request ended: its status class, or unanswered.
type Class uint8

const (
	Status2xx Class = iota
	Status3xx
	Status4xx
	Status5xx
	// StatusOther: answered, with no status to read (traffic of no
	// protocol here, or a 1xx).
	StatusOther
	// Unanswered: the connection closed before any response byte.
	Unanswered
	classes
)

// Names of the classes, as the dump and /metrics show them.
var classNames = [classes]string{"2xx", "3xx", "4xx", "5xx", "other", "unanswered"}

func (c Class) String() string { return classNames[c] }

// Classes is how many classes there are.
const Classes = int(classes)

// Summary is how a worker's requests ended.
type Summary struct {
	Ended     [classes]uint64 // requests ended, by class
	Durations Histogram       // answered requests, first request byte to last response byte
}

// Add adds o's counts to s's.
func (s *Summary) Add(o Summary) {
	for i, n := range o.Ended {
		s.Ended[i] += n
	}
	s.Durations.Add(o.Durations)
}

// Exceptions are uWSGI's: requests answered with a 5xx, or never answered.
func (s Summary) Exceptions() uint64 { return s.Ended[Status5xx] + s.Ended[Unanswered] }

// HeadMax is how many first bytes of a request's head the kernel side
// keeps (enum capture_size in bpf/lib/types.h), and so the most Parse
// reads.
const HeadMax = 512

// Parse reads the first bytes of a request's head, as the kernel side
// kept them (cut: a read brought more than it kept), into the vars a dump
// shows, as keep keeps them; truncated says they are those of the head's
// first bytes only. It reads at most HeadMax bytes of head, of whatever
// protocol proto knows (none: no vars).
func Parse(head []byte, cut bool, keep Vars) (vars []proto.Var, truncated bool) {
	if len(head) > HeadMax {
		head, cut = head[:HeadMax], true
	}
	r := proto.ParseRequest(proto.Detect(head), head, cut)
	return keep.keep(r.Vars), r.Truncated
}
