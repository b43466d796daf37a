// Package top is the model and the view of `workerstats top`: a live
// terminal view of a stats socket, ours or uWSGI's own. It parses dumps
// into structs of its own (a key a server leaves out stays at its zero
// value or nil, and is shown as "-"), derives per-worker rates from two
// successive dumps, and renders a frame for a terminal of a given size.
package top

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Dump is what top reads of one stats dump.
type Dump struct {
	Version           string   `json:"version"`
	PID               int      `json:"pid"`
	ListenQueue       uint64   `json:"listen_queue"`
	ListenQueueErrors uint64   `json:"listen_queue_errors"`
	Sockets           []Socket `json:"sockets"`
	Workers           []Worker `json:"workers"`
	Observer          *struct {
		Mode string `json:"mode"`
	} `json:"observer"` // workerstats' own; nil from uWSGI
}

// Socket is one of the pool's listening sockets.
type Socket struct {
	Name      string     `json:"name"`
	Queue     uint64     `json:"queue"`
	MaxQueue  uint64     `json:"max_queue"`
	QueueWait *Histogram `json:"queue_wait"` // workerstats', when it counts waits
}

// Worker is one worker slot.
type Worker struct {
	ID            int               `json:"id"`
	PID           int               `json:"pid"`
	Status        string            `json:"status"`
	Requests      uint64            `json:"requests"`
	HarakiriCount uint64            `json:"harakiri_count"`
	RSS           uint64            `json:"rss"`    // bytes; 0 when not measured
	AvgRT         uint64            `json:"avg_rt"` // µs
	Cores         []Core            `json:"cores"`
	Statuses      *Statuses         `json:"statuses"`
	Durations     *Histogram        `json:"request_durations"`
	LastExit      *LastExit         `json:"last_exit"`
	Exits         map[string]uint64 `json:"exits"`
}

// Core is one of a worker's cores (threads).
type Core struct {
	InRequest int            `json:"in_request"`
	Vars      []string       `json:"vars"`
	ReqInfo   map[string]any `json:"req_info"`
}

// Statuses counts a worker's responses by class.
type Statuses struct {
	S2xx       uint64 `json:"2xx"`
	S3xx       uint64 `json:"3xx"`
	S4xx       uint64 `json:"4xx"`
	S5xx       uint64 `json:"5xx"`
	Other      uint64 `json:"other"`
	Unanswered uint64 `json:"unanswered"`
}

// LastExit is how a worker's last process ended.
type LastExit struct {
	PID       int    `json:"pid"`
	At        int64  `json:"at"`     // unix s
	Status    string `json:"status"` // "exited" or "killed"
	Code      int    `json:"code"`
	Signal    string `json:"signal"`
	By        string `json:"by"`
	InRequest int    `json:"in_request"`
	Request   string `json:"request"`
}

// Parse decodes a dump.
func Parse(b []byte) (*Dump, error) {
	var d Dump
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("not a stats dump: %w", err)
	}
	return &d, nil
}

// Request is what a core in a request is serving: "METHOD URI" from its
// vars, and when it began (zero if the dump does not say).
type Request struct {
	Line  string
	Start time.Time
}

// CurrentRequest returns the request of the worker's first core in one.
func (w *Worker) CurrentRequest() (Request, bool) {
	for _, c := range w.Cores {
		if c.InRequest == 1 {
			return c.request(), true
		}
	}
	return Request{}, false
}

// request reads the core's method and URI from its vars (PATH_INFO when
// there is no REQUEST_URI) and its start from req_info.
func (c *Core) request() Request {
	var method, uri, path string
	for _, v := range c.Vars {
		key, val, _ := strings.Cut(v, "=")
		switch key {
		case "REQUEST_METHOD":
			method = val
		case "REQUEST_URI":
			uri = val
		case "PATH_INFO":
			path = val
		}
	}
	if uri == "" {
		uri = path
	}
	r := Request{Line: strings.TrimSpace(method + " " + uri)}
	if s, ok := c.ReqInfo["request_start"].(float64); ok && s > 0 {
		r.Start = time.Unix(int64(s), 0)
	}
	return r
}
