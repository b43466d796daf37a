// Package requests follows a pool's requests from the heads the kernel
// side captures on its workers' connections (a request's first bytes, its
// response's, a close in the middle of a request): what each worker is
// serving now, how its requests ended, and how long they took.
//
// The bytes come from anyone who can reach the observed server: they are
// parsed by observer/proto, and everything kept here is bounded, by
// connections (MaxConns) and by the vars of one request head.
package requests

import (
	"cmp"
	"slices"
	"sync"

	"github.com/workerstats/workerstats/observer/proto"
)

// Kind is what a Head says of its connection.
type Kind uint8

const (
	// Request: a request began, so the one before it on the connection,
	// answered, is over; its last response byte went at LastTxNs.
	Request Kind = iota
	// Response: the request's response began.
	Response
	// Close: the connection closed in the middle of a request, answered
	// (Answered) or not.
	Close
	// More: the next bytes of a request whose head came in several reads
	// (PHP-FPM reads each FastCGI record's header apart).
	More
)

// Head is one captured head.
type Head struct {
	Conn      uint64 // the connection (the kernel's socket address)
	PID       int    // the worker
	Kind      Kind
	TimeNs    uint64 // when the request or response began, or at the close
	LastTxNs  uint64 // the connection's last response byte before this head
	Answered  bool   // Close: the request's response had begun
	Data      []byte // Request, Response: the first bytes
	Total     int    // Request, Response: the bytes the syscall moved
	Truncated bool   // the syscall moved more than Data holds
}

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

// InFlight is a request a worker is serving now.
type InFlight struct {
	Conn     uint64
	Kind     proto.Kind
	Vars     []proto.Var // as Tracker.Vars keeps them: credentials never
	StartNs  uint64
	Answered bool // its response began
	Status   int  // the status it began with, 0 if none could be read
	// Truncated: its head was longer than what is kept (HeadMax), so
	// Vars hold only what fit.
	Truncated bool
}

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

// Worker is what the tracker knows of one worker's requests.
type Worker struct {
	Summary
	InFlight []InFlight // by start
}

// DefaultMaxConns bounds the connections a Tracker follows at once.
const DefaultMaxConns = 1 << 17

// Tracker follows requests from heads. Its zero value is ready, holding
// DefaultMaxConns connections at most, and DefaultHeadMax bytes of a head.
type Tracker struct {
	MaxConns int
	// HeadMax bounds the bytes of a request head a connection keeps while
	// it comes in several reads: set it to what the kernel side captures
	// of one.
	HeadMax int
	Vars    Vars // which of a request's vars to keep; credentials never

	mu      sync.Mutex
	conns   map[uint64]*conn
	byPID   map[int]map[uint64]*conn // conns again, by worker: a dump asks by worker
	workers map[int]*Summary
	latest  map[int]*InFlight // by worker, the request it began last
	lost    uint64
}

// conn is one connection's state.
type conn struct {
	pid  int
	kind proto.Kind
	cur  *InFlight
	// head holds the current request's head while it is incomplete and
	// came in several reads, at most Tracker.HeadMax bytes; nil once
	// complete.
	head      []byte
	truncated bool
}

// DefaultHeadMax is a Tracker's HeadMax when it is 0: a request line and
// the headers that matter.
const DefaultHeadMax = 512

// Add takes the next head.
func (t *Tracker) Add(h Head) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := t.conns[h.Conn]
	if c != nil && c.pid != h.PID {
		// The socket address is a new connection's, of another worker:
		// the old one's close was not seen. What it had is dropped.
		t.drop(h.Conn, c)
		c = nil
	}
	switch h.Kind {
	case Request:
		t.request(c, h)
	case More:
		if c != nil && c.cur != nil && c.head != nil {
			t.more(c, h)
		}
	case Response:
		if c != nil && c.cur != nil && !c.cur.Answered {
			c.cur.Answered = true
			c.cur.Status, _ = proto.Status(c.kind, h.Data)
		}
	case Close:
		if c != nil {
			if c.cur != nil {
				end := h.TimeNs
				if h.Answered {
					end = h.LastTxNs
				}
				t.end(c, end, h.Answered)
			}
			t.drop(h.Conn, c)
		}
	}
}

// request starts a request on c (nil: a connection not followed yet).
func (t *Tracker) request(c *conn, h Head) {
	if c == nil {
		if len(t.conns) >= t.maxConns() {
			t.lost++
			return
		}
		c = &conn{pid: h.PID}
		t.add(h.Conn, c)
	}
	if c.cur != nil {
		t.end(c, h.LastTxNs, c.cur.Answered)
	}
	c.cur = &InFlight{Conn: h.Conn, StartNs: h.TimeNs}
	c.head, c.truncated = nil, h.Truncated
	t.parse(c, h.Data)
	if t.latest == nil {
		t.latest = map[int]*InFlight{}
	}
	t.latest[c.pid] = c.cur
}

// more takes the next bytes of c's request head.
func (t *Tracker) more(c *conn, h Head) {
	n := min(len(h.Data), t.headMax()-len(c.head))
	c.truncated = c.truncated || n < len(h.Data) || h.Truncated
	t.parse(c, append(c.head, h.Data[:n]...))
}

// parse reads head, all of c's current request's head so far, into its
// vars; a head not complete yet is kept for the next bytes.
func (t *Tracker) parse(c *conn, head []byte) {
	if c.kind == proto.Unknown {
		c.kind = proto.Detect(head)
	}
	r := proto.ParseRequest(c.kind, head, c.truncated)
	c.cur.Kind, c.cur.Vars, c.cur.Truncated = c.kind, t.Vars.keep(r.Vars), r.Truncated
	c.head = nil
	if limit := t.headMax(); !r.Complete && !c.truncated && len(head) < limit {
		c.head = append(make([]byte, 0, min(2*len(head)+64, limit)), head...)
	}
}

// end ends c's request at endNs.
func (t *Tracker) end(c *conn, endNs uint64, answered bool) {
	w := t.worker(c.pid)
	r := c.cur
	c.cur = nil
	if !answered {
		w.Ended[Unanswered]++
		return
	}
	w.Ended[classOf(r.Status)]++
	if endNs >= r.StartNs {
		w.Durations.Observe(endNs - r.StartNs)
	}
}

func classOf(status int) Class {
	switch status / 100 {
	case 2:
		return Status2xx
	case 3:
		return Status3xx
	case 4:
		return Status4xx
	case 5:
		return Status5xx
	}
	return StatusOther
}

// add follows connection k, c.
func (t *Tracker) add(k uint64, c *conn) {
	if t.conns == nil {
		t.conns, t.byPID = map[uint64]*conn{}, map[int]map[uint64]*conn{}
	}
	t.conns[k] = c
	mine := t.byPID[c.pid]
	if mine == nil {
		mine = map[uint64]*conn{}
		t.byPID[c.pid] = mine
	}
	mine[k] = c
}

// drop stops following connection k, c.
func (t *Tracker) drop(k uint64, c *conn) {
	delete(t.conns, k)
	if mine := t.byPID[c.pid]; mine != nil {
		delete(mine, k)
		if len(mine) == 0 {
			delete(t.byPID, c.pid)
		}
	}
}

func (t *Tracker) worker(pid int) *Summary {
	if t.workers == nil {
		t.workers = map[int]*Summary{}
	}
	w := t.workers[pid]
	if w == nil {
		w = &Summary{}
		t.workers[pid] = w
	}
	return w
}

func (t *Tracker) headMax() int {
	if t.HeadMax > 0 {
		return t.HeadMax
	}
	return DefaultHeadMax
}

func (t *Tracker) maxConns() int {
	if t.MaxConns > 0 {
		return t.MaxConns
	}
	return DefaultMaxConns
}

// Worker returns what the tracker knows of pid's requests: a copy.
func (t *Tracker) Worker(pid int) Worker {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out Worker
	if w := t.workers[pid]; w != nil {
		out.Summary = *w
	}
	for _, c := range t.byPID[pid] {
		if c.cur != nil {
			out.InFlight = append(out.InFlight, *c.cur)
		}
	}
	slices.SortFunc(out.InFlight, func(a, b InFlight) int {
		return cmp.Or(cmp.Compare(a.StartNs, b.StartNs), cmp.Compare(a.Conn, b.Conn))
	})
	return out
}

// Summary returns how pid's requests the tracker followed ended.
func (t *Tracker) Summary(pid int) Summary {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w := t.workers[pid]; w != nil {
		return *w
	}
	return Summary{}
}

// Latest returns the request pid began last, in flight or over (a worker
// killed in a request: the one it died in); false if none.
func (t *Tracker) Latest(pid int) (InFlight, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.latest[pid]
	if r == nil {
		return InFlight{}, false
	}
	return *r, true
}

// Forget drops what the tracker holds for pid, a worker gone: its
// connections closed with it.
func (t *Tracker) Forget(pid int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.workers, pid)
	delete(t.latest, pid)
	for k, c := range t.byPID[pid] {
		t.drop(k, c)
	}
}

// Lost is how many requests were not followed because MaxConns
// connections already were.
func (t *Tracker) Lost() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lost
}
