package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/metrics"
	"github.com/workerstats/workerstats/statsock"
)

// serve --discover: every pre-fork master on the node watched as a pool
// of its own while it runs, all served on one HTTP stats socket.

const (
	// defaultDiscoverEvery is --discover-interval's default.
	defaultDiscoverEvery = 2 * time.Second
	// minDiscoverEvery bounds --discover-interval: each look reads every
	// process's stat and command line.
	minDiscoverEvery = 100 * time.Millisecond
	// defaultMaxPools is --max-pools' default.
	defaultMaxPools = 256
	// maxPoolsLimit bounds --max-pools: beyond it a scrape of /metrics
	// would run to hundreds of thousands of series.
	maxPoolsLimit = 4096
)

// discoverOptions are --discover's, checked.
type discoverOptions struct {
	every    time.Duration // --discover-interval
	maxPools int           // --max-pools
}

// check validates --discover's options; nil (no --discover) is valid.
func (o *discoverOptions) check() error {
	switch {
	case o == nil:
	case o.every < minDiscoverEvery:
		return fmt.Errorf("--discover-interval %v: give at least %v, such as %v", o.every, minDiscoverEvery, defaultDiscoverEvery)
	case o.maxPools < 1 || o.maxPools > maxPoolsLimit:
		return fmt.Errorf("--max-pools %d: give 1 to %d", o.maxPools, maxPoolsLimit)
	}
	return nil
}

// discoverSpecs is --discover's one stats socket, in HTTP mode, which
// --pid, --pidfile and --name would contradict.
func (o *serveFlags) discoverSpecs(changed func(string) bool) ([]poolSpec, error) {
	what := "--discover"
	if !changed("discover") {
		what = "discover = true in " + o.config
	}
	for _, name := range targetFlags {
		if changed(name) {
			return nil, fmt.Errorf("%s and --%s exclude each other: pick one (discover watches every pool on the node, --%s one)", what, name, name)
		}
	}
	p := o.pool
	p.StatsHTTP = true
	addr, mode, err := p.socket()
	if err != nil {
		return nil, fmt.Errorf("serve --discover: %w", err)
	}
	return []poolSpec{{addr: addr, opts: p, mode: mode}}, nil
}

// discovery is the daemon's side of --discover: the registry of the pools
// found, which the stats socket serves and maintain keeps up to date.
type discovery struct {
	reg      *observer.Discovery
	maxPools int
	// unwatched is how many masters the last sweep left unwatched for
	// --max-pools: said again only when it grows.
	unwatched int
	log       *slog.Logger
}

// newDiscovery is the registry whose pools count through k (nil: each
// its own procfs kernel, which says procfsReason) and follow requests
// through follower (nil: off).
func newDiscovery(k observer.Kernel, follower *observer.Follower, procfsReason string, o daemonOptions, minified bool, log *slog.Logger) *discovery {
	d := &discovery{maxPools: o.discover.maxPools, log: log.With("component", "discover")}
	d.reg = &observer.Discovery{
		Proc: o.proc, Skip: []int{os.Getpid()}, MaxPools: o.discover.maxPools, Minified: minified,
		NewPool: func(id string) *observer.Pool {
			return newPool(observer.Target{}, k, follower, procfsReason, o, log.With("pool", id))
		},
	}
	return d
}

// sweep drops the pools whose master exited, then watches the masters
// started since, and says so: a line per pool found or dropped, one when
// more masters than before are left unwatched for --max-pools.
func (d *discovery) sweep(ctx context.Context) {
	d.drop()
	f, err := d.reg.Find(ctx)
	if err != nil {
		d.log.Warn("cannot look for pre-fork masters", "error", err)
		return
	}
	for _, p := range f.New {
		d.log.Info("pool found", poolAttrs(p)...)
	}
	for _, m := range f.Failed {
		d.log.Warn("a pre-fork master is not watched: its pool could not start; tried again every --discover-interval", "server", m.Server, "master", m.Master.PID, "error", m.Err)
	}
	d.unwatched = warnUnwatched(f.Unwatched, d.unwatched, d.maxPools, d.log)
}

// poolAttrs say who a pool found is, for the log.
func poolAttrs(p *observer.Discovered) []any {
	attrs := []any{"pool", p.ID, "server", p.Server, "master", p.Master.PID, "path", p.Path()}
	if c := p.Container; c != nil && c.ID != "" {
		attrs = append(attrs, "container", c.ID)
	} else if c != nil {
		attrs = append(attrs, "cgroup", c.Cgroup)
	}
	return attrs
}

// warnUnwatched says, when more masters are left unwatched than at the
// last sweep (before), that --max-pools is reached. It returns the
// number now.
func warnUnwatched(now, before, maxPools int, log *slog.Logger) int {
	if now > before {
		log.Warn(fmt.Sprintf("more pre-fork masters run than --max-pools %d: those beyond it are not watched; raise --max-pools", maxPools), "unwatched", now)
	}
	return now
}

// drop drops the pools whose master exited, and says so.
func (d *discovery) drop() {
	gone, err := d.reg.Drop()
	for _, p := range gone {
		d.log.Info("pool dropped: its master exited", "pool", p.ID, "master", p.Master.PID)
	}
	if err != nil {
		d.log.Warn("the kernel side kept entries of a dropped pool", "error", err)
	}
}

// refresh refreshes every pool found, as maintain does a configured one,
// once the pools whose master exited are dropped (a pool's refresh would
// only find its master gone).
func (d *discovery) refresh() {
	d.drop()
	for _, p := range d.reg.Pools() {
		if err := p.Pool.Refresh(); err != nil {
			d.log.Warn("refresh failed", "pool", p.ID, "error", err)
		}
	}
}

// masters are the masters of every pool found.
func (d *discovery) masters() []int {
	var out []int
	for _, p := range d.reg.Pools() {
		out = append(out, p.Pool.Masters()...)
	}
	return out
}

// metricsPools are the pools found, as /metrics labels them.
func (d *discovery) metricsPools() []metrics.Pool {
	ps := d.reg.Pools()
	out := make([]metrics.Pool, len(ps))
	for i, p := range ps {
		out[i] = metrics.Pool{ID: p.ID, Server: p.Server, Container: p.Container, Snapshot: p.Pool.Snapshot}
	}
	return out
}

// catalog serves the pools found on the stats socket (statsock.Catalog).
type catalog struct{ reg *observer.Discovery }

func (c catalog) List(ctx context.Context) ([]byte, error) { return c.reg.List(ctx) }

func (c catalog) Pool(id string) (statsock.Source, bool) {
	p, ok := c.reg.Pool(id)
	if !ok {
		return nil, false
	}
	return p.Source, true
}
