package forkpool

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"sync"
)

// Tally is what the clients saw of one worker pid.
type Tally struct {
	Requests, TX, RX uint64
}

// Tallies are the clients' counts by the worker pid that answered.
type Tallies struct {
	mu    sync.Mutex
	byPID map[int]*Tally
}

// Add counts one request answered by pid: sent bytes from the client,
// received back.
func (ts *Tallies) Add(pid int, sent, received int) {
	ts.addTally(pid, Tally{Requests: 1, RX: uint64(sent), TX: uint64(received)})
}

// addTally adds another count of pid's.
func (ts *Tallies) addTally(pid int, t Tally) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.byPID == nil {
		ts.byPID = map[int]*Tally{}
	}
	x := ts.byPID[pid]
	if x == nil {
		x = &Tally{}
		ts.byPID[pid] = x
	}
	x.Requests += t.Requests
	x.TX += t.TX
	x.RX += t.RX
}

// ByPID returns a copy of the counts.
func (ts *Tallies) ByPID() map[int]Tally {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := make(map[int]Tally, len(ts.byPID))
	for pid, x := range ts.byPID {
		out[pid] = *x
	}
	return out
}

// Session opens one kept-alive connection and sends reqs requests on it,
// request i asking for size(i) bytes after sleepMS, with outbound (0 or 1).
func (p *Pool) Session(ts *Tallies, reqs int, size func(i int) int, sleepMS, outbound int) error {
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for i := range reqs {
		req := fmt.Sprintf("%d %d %d\n", size(i), sleepMS, outbound)
		if _, err := io.WriteString(c, req); err != nil {
			return err
		}
		if err := ReadAnswer(r, ts, len(req)); err != nil {
			return err
		}
	}
	return nil
}

// ReadAnswer reads one answer from r and adds it to ts, with sent the
// size of the request it answers.
func ReadAnswer(r *bufio.Reader, ts *Tallies, sent int) error {
	head, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	var pid, n int
	if _, err := fmt.Sscan(head, &pid, &n); err != nil {
		return fmt.Errorf("bad response head %q", head)
	}
	if _, err := io.CopyN(io.Discard, r, int64(n)); err != nil {
		return err
	}
	ts.Add(pid, sent, len(head)+n)
	return nil
}
