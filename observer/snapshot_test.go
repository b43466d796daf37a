package observer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The dump (snapshot.go, render.go): uWSGI's schema, filled from the
// kernel's counters and procfs.

func TestPoolSnapshotSchema(t *testing.T) {
	p, k := testPool(t)
	k.set(Counters{PID: 4001, Master: testMaster, Start: TicksToNs(1000),
		Accepts: 12, Requests: 10, Closes: 11, RX: 7000, TX: 50000,
		RunNs: 2_500_000, AvgRTNs: 123_456, InProgress: 1})
	k.set(Counters{PID: 4003, Master: testMaster, Start: TicksToNs(1234),
		Accepts: 3, Requests: 3, Closes: 3, RX: 900, TX: 3000,
		RunNs: 999_999, AvgRTNs: 5_000})
	st := snapshot(t, p)

	if st.Version != Version {
		t.Errorf("version = %q, want %q", st.Version, Version)
	}
	if st.PID != testMaster || st.UID != 1000 || st.GID != 2000 || st.CWD != "/srv/app" {
		t.Errorf("master pid/uid/gid/cwd = %d/%d/%d/%q, want %d/1000/2000/\"/srv/app\"", st.PID, st.UID, st.GID, st.CWD, testMaster)
	}
	if st.Load != 1 {
		t.Errorf("load = %d, want 1 (one busy worker)", st.Load)
	}
	wantInfo := k.info
	wantInfo.Target = "pid 4000"
	if !reflect.DeepEqual(st.Observer, wantInfo) {
		t.Errorf("observer = %+v, want the kernel's Info with the target %+v", st.Observer, wantInfo)
	}
	if len(st.Workers) != 3 {
		t.Fatalf("%d workers, want 3", len(st.Workers))
	}

	page := uint64(os.Getpagesize())
	tests := []struct {
		id, pid            int
		requests, tx, rx   uint64
		accepted, closed   uint64
		runningUs, avgRTUs uint64
		status             string
		inRequest          int
		rssPages, vszPages uint64
		startTicks         uint64
	}{
		{1, 4001, 10, 50000, 7000, 12, 11, 2500, 123, "busy", 1, 1200, 40000, 1000},
		{2, 4003, 3, 3000, 900, 3, 3, 999, 5, "idle", 0, 1400, 42000, 1234},
		{3, 4002, 0, 0, 0, 0, 0, 0, 0, "idle", 0, 1300, 41000, 1500},
	}
	first := workerBySlot(t, st, 1)
	for _, tt := range tests {
		w := workerBySlot(t, st, tt.id)
		check := func(name string, got, want any) {
			t.Helper()
			if got != want {
				t.Errorf("worker %d: %s = %v, want %v", tt.id, name, got, want)
			}
		}
		check("pid", w.PID, tt.pid)
		check("requests", w.Requests, tt.requests)
		check("delta_requests", w.DeltaRequests, tt.requests)
		check("tx", w.TX, tt.tx)
		check("rx", w.RX, tt.rx)
		check("accepted", w.Accepted, tt.accepted)
		check("closed", w.Closed, tt.closed)
		check("running_time", w.RunningTime, tt.runningUs)
		check("avg_rt", w.AvgRT, tt.avgRTUs)
		check("status", w.Status, tt.status)
		check("accepting", w.Accepting, 1)
		check("respawn_count", w.RespawnCount, uint64(1))
		check("rss", w.RSS, tt.rssPages*page)
		check("vsz", w.VSZ, tt.vszPages*page)
		// last_spawn is boot time + start/100; the boot time itself is
		// checked by TestPoolLastSpawnIsBtimePlusStart.
		check("last_spawn - slot 1's", w.LastSpawn-first.LastSpawn, int64(tt.startTicks/100)-int64(1000/100))
		if len(w.Apps) != 1 {
			t.Errorf("worker %d: %d apps, want 1", tt.id, len(w.Apps))
		} else {
			check("apps[0].requests", w.Apps[0].Requests, tt.requests)
		}
		if len(w.Cores) != 1 {
			t.Errorf("worker %d: %d cores, want 1", tt.id, len(w.Cores))
		} else {
			check("cores[0].requests", w.Cores[0].Requests, tt.requests)
			check("cores[0].in_request", w.Cores[0].InRequest, tt.inRequest)
		}
	}

	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	js := string(b)
	for _, tt := range []struct {
		text string
		n    int
	}{
		{`"vars":[]`, 3},     // one per core
		{`"req_info":{}`, 3}, // one per core
		{`"locks":[{"snapshot":0}]`, 1},
		{`"sockets":[]`, 1},
		{"null", 0},
	} {
		if n := strings.Count(js, tt.text); n != tt.n {
			t.Errorf("JSON has %s %d times, want %d: %s", tt.text, n, tt.n, js)
		}
	}
}

func TestPoolLastSpawnIsBtimePlusStart(t *testing.T) {
	p, _ := testPool(t)
	st := snapshot(t, p)
	for _, tt := range []struct {
		id    int
		ticks int64
	}{{1, 1000}, {2, 1234}, {3, 1500}} {
		if got, want := workerBySlot(t, st, tt.id).LastSpawn, fixtureBtime+tt.ticks/100; got != want {
			t.Errorf("worker %d: last_spawn = %d, want btime + %d/100 = %d", tt.id, got, tt.ticks, want)
		}
	}
}

// TestPoolStoppedWorkerIsPaused: a worker stopped with SIGSTOP shows
// uWSGI's "pause".
func TestPoolStoppedWorkerIsPaused(t *testing.T) {
	p, _ := testPool(t)
	w := worker(4002, 1500, 1300, 41000)
	w.state = 'T'
	addProc(t, p.Proc.Root, w)
	st := snapshot(t, p)
	if got := workerBySlot(t, st, 3).Status; got != "pause" {
		t.Errorf("stopped worker: status %q, want pause", got)
	}
	if got := workerBySlot(t, st, 1).Status; got != "idle" {
		t.Errorf("running worker: status %q, want idle", got)
	}
}

func TestPoolSnapshotKernelError(t *testing.T) {
	p, k := testPool(t)
	boom := errors.New("map iteration failed")
	k.readErr = boom
	if _, err := p.Snapshot(context.Background()); !errors.Is(err, boom) {
		t.Errorf("Snapshot err = %v, want the kernel's error", err)
	}
	if err := p.Refresh(); !errors.Is(err, boom) {
		t.Errorf("Refresh err = %v, want the kernel's error", err)
	}
}

func TestPoolSnapshotJSONNumbersAreIntegers(t *testing.T) {
	p, k := testPool(t)
	// Nanosecond values that do not divide evenly into microseconds.
	k.update(4001, func(c *Counters) { c.Requests, c.RunNs, c.AvgRTNs, c.TX, c.InProgress = 3, 1_999_999, 333_333, 1, 2 })
	k.update(4003, func(c *Counters) { c.RunNs, c.AvgRTNs = 1, 999 })
	k.set(Counters{PID: 4012, Master: testMaster, Start: TicksToNs(7777), Exited: true, Requests: 1, RunNs: 1_500})
	st := snapshot(t, p)
	b, err := json.MarshalIndent(st, "", "\t")
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	count := 0
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case json.Number:
			count++
			if strings.ContainsAny(v.String(), ".eE") {
				t.Errorf("%s = %s, not an integer", path, v)
			}
		case map[string]any:
			for k, e := range v {
				walk(path+"."+k, e)
			}
		case []any:
			for i, e := range v {
				walk(path+"["+strconv.Itoa(i)+"]", e)
			}
		}
	}
	walk("$", v)
	if count < 100 {
		t.Errorf("only %d numbers in the dump: %s", count, b)
	}
}
