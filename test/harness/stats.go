package harness

import (
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
)

// ReadStats reads and decodes a stats dump from addr (workerstats' or
// uWSGI's; http://ADDR/ for one served over HTTP).
func ReadStats(addr string) (*observer.Stats, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := statsock.Read(ctx, addr)
	if err != nil {
		return nil, err
	}
	var st observer.Stats
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("decode %q: %w", Truncate(b), err)
	}
	return &st, nil
}

// ReadRaw reads one dump's bytes as a client does, failing t if it
// cannot or the dump is empty.
func ReadRaw(t testing.TB, addr string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := statsock.Read(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		t.Fatal(errors.New("empty dump from " + addr))
	}
	return b
}

// MetricsText reads /metrics from a daemon run with --stats-http.
func MetricsText(t testing.TB, d *Daemon) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	b, err := statsock.Read(ctx, d.Addr+"metrics") // d.Addr is http://ADDR/
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Truncate is b as a string, cut after 200 bytes, for a message.
func Truncate(b []byte) string {
	if len(b) > 200 {
		return string(b[:200]) + "..."
	}
	return string(b)
}

// WaitStats polls the stats socket addr (workerstats' or uWSGI's) until ok
// accepts a dump, and returns it; it fails t if none is accepted within d.
func WaitStats(t testing.TB, addr string, d time.Duration, what string, ok func(st *observer.Stats) error) *observer.Stats {
	t.Helper()
	var st *observer.Stats
	WaitFor(t, d, what, func() error {
		var err error
		if st, err = ReadStats(addr); err != nil {
			return err
		}
		return ok(st)
	})
	return st
}

// WaitRequests waits until the dump at addr counts want requests in all
// (what the clients completed), and returns it; it fails t after d.
func WaitRequests(t testing.TB, addr string, d time.Duration, what string, want int64) *observer.Stats {
	t.Helper()
	return WaitStats(t, addr, d, what, func(st *observer.Stats) error {
		if req, _, _ := SumRequests(st); req != uint64(want) {
			return fmt.Errorf("%d requests counted, clients completed %d", req, want)
		}
		return nil
	})
}

// WorkersByPID indexes a dump's workers by pid.
func WorkersByPID(st *observer.Stats) map[int]observer.Worker {
	m := make(map[int]observer.Worker, len(st.Workers))
	for _, w := range st.Workers {
		m[w.PID] = w
	}
	return m
}

// SumRequests sums the workers' requests, tx and rx.
func SumRequests(st *observer.Stats) (req, tx, rx uint64) {
	for _, w := range st.Workers {
		req += w.Requests
		tx += w.TX
		rx += w.RX
	}
	return
}

// SumConns sums the workers' accepted and closed connections.
func SumConns(st *observer.Stats) (accepted, closed uint64) {
	for _, w := range st.Workers {
		accepted += w.Accepted
		closed += w.Closed
	}
	return
}

// Dropped returns an error naming every count in the dump's
// observer.dropped that is not zero, or nil if none is. Up to stale
// connections_stale are allowed: a connection a killed worker held is never
// closed with close(2), so its entry stays until the daemon sweeps it, and
// an accept that reuses its socket address first finds it there (and
// replaces it; nothing is lost).
func Dropped(st *observer.Stats, stale uint64) error {
	var drops []string
	for name, n := range st.Observer.Dropped {
		if n != 0 && (name != "connections_stale" || n > stale) {
			drops = append(drops, fmt.Sprintf("dropped %s = %d", name, n))
		}
	}
	if len(drops) == 0 {
		return nil
	}
	sort.Strings(drops)
	return errors.New(strings.Join(drops, "; "))
}

// CheckDropped fails t if the kernel side lost anything (see Dropped).
func CheckDropped(t testing.TB, st *observer.Stats, stale uint64) {
	t.Helper()
	if err := Dropped(st, stale); err != nil {
		t.Error(err)
	}
}

// SlotList is a dump's slots in one line, for a message.
func SlotList(st *observer.Stats) string {
	var b strings.Builder
	for _, w := range st.Workers {
		fmt.Fprintf(&b, "[id %d pid %d %s requests %d delta %d respawn_count %d] ", w.ID, w.PID, w.Status, w.Requests, w.DeltaRequests, w.RespawnCount)
	}
	return strings.TrimSpace(b.String())
}

// SlotOf returns the worker in slot id, or fails t.
func SlotOf(t testing.TB, st *observer.Stats, id int) observer.Worker {
	t.Helper()
	for _, w := range st.Workers {
		if w.ID == id {
			return w
		}
	}
	t.Fatalf("no slot %d: %s", id, SlotList(st))
	return observer.Worker{}
}

// SocketNames lists sockets' names.
func SocketNames(socks []observer.Socket) []string {
	names := []string{}
	for _, s := range socks {
		names = append(names, s.Name)
	}
	return names
}

// MetricValue is the value of the sample of metric name (a histogram's
// _count or _sum, a counter, a gauge) whose labels include match, in a
// /metrics body in Prometheus' text format, parsed with Prometheus' own
// parser; ok false when there is no such sample. Labels not in match (a
// pool's, say) are ignored.
func MetricValue(t testing.TB, body, name string, match map[string]string) (v float64, ok bool) {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	base, part := name, ""
	for _, suffix := range []string{"_count", "_sum"} {
		if b, ok := strings.CutSuffix(name, suffix); ok && families[name] == nil && families[b] != nil {
			base, part = b, suffix
		}
	}
	for _, m := range families[base].GetMetric() {
		if !labelsInclude(m.GetLabel(), match) {
			continue
		}
		switch {
		case part == "_count":
			return float64(m.GetHistogram().GetSampleCount()), true
		case part == "_sum":
			return m.GetHistogram().GetSampleSum(), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		}
	}
	return 0, false
}

// labelsInclude reports whether labels have every name and value of match.
func labelsInclude(labels []*dto.LabelPair, match map[string]string) bool {
	n := 0
	for _, l := range labels {
		if v, ok := match[l.GetName()]; ok && v == l.GetValue() {
			n++
		}
	}
	return n == len(match)
}
