package main

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/statsock"
)

// poolOptions are one pool's target and stats socket: from serve's flags,
// or one [[pool]] of a --config file (whose keys are the flags' names).
type poolOptions struct {
	PID           int    `toml:"pid"`
	PIDFile       string `toml:"pidfile"`
	Name          string `toml:"name"`
	Stats         string `toml:"stats"`
	StatsHTTP     bool   `toml:"stats-http"`
	StatsMinified bool   `toml:"stats-minified"`
	StatsChmod    string `toml:"stats-chmod"`
	StatsChown    string `toml:"stats-chown"`
}

func (p poolOptions) target() observer.Target {
	return observer.Target{PID: p.PID, PIDFile: p.PIDFile, Name: p.Name}
}

// poolSpec is a checked poolOptions.
type poolSpec struct {
	target observer.Target
	addr   statsock.Addr
	opts   poolOptions
	mode   os.FileMode
}

// check validates a pool's options. where names the pool in messages, and
// targetWhere the options that name its master.
func (p poolOptions) check(where, targetWhere string) (poolSpec, error) {
	t := p.target()
	if err := t.Valid(); err != nil {
		return poolSpec{}, fmt.Errorf("%s: %w", targetWhere, err)
	}
	if p.Stats == "" {
		return poolSpec{}, fmt.Errorf("%s: stats is required: the address to serve this pool's stats on", where)
	}
	addr, mode, err := p.socket()
	if err != nil {
		return poolSpec{}, fmt.Errorf("%s: %w", where, err)
	}
	return poolSpec{target: t, addr: addr, opts: p, mode: mode}, nil
}

// socket validates a pool's stats socket options: its address, and the
// mode of a Unix socket (defaultStatsChmod when unset).
func (p poolOptions) socket() (statsock.Addr, os.FileMode, error) {
	addr, err := statsock.ParseAddr(p.Stats)
	if err != nil {
		return statsock.Addr{}, 0, err
	}
	chmod := p.StatsChmod
	if chmod == "" {
		chmod = defaultStatsChmod
	}
	mode, err := strconv.ParseUint(chmod, 8, 32)
	if err != nil || mode > 0o777 {
		return statsock.Addr{}, 0, fmt.Errorf("stats-chmod %q is not an octal file mode such as 600 or 660", chmod)
	}
	return addr, os.FileMode(mode), nil
}

// configFile is serve's --config: daemon-wide settings, which the command
// line's flags override, and one [[pool]] table per pool; or, with
// discover = true, no [[pool]] and the one stats socket at the top.
type configFile struct {
	Discover         bool         `toml:"discover"`
	DiscoverInterval tomlDuration `toml:"discover-interval"`
	MaxPools         int          `toml:"max-pools"`
	// With discover: its one stats socket, as a [[pool]]'s.
	Stats         string `toml:"stats"`
	StatsMinified bool   `toml:"stats-minified"`
	StatsChmod    string `toml:"stats-chmod"`
	StatsChown    string `toml:"stats-chown"`

	Mode          string        `toml:"mode"`
	Hooks         string        `toml:"hooks"`
	BPFStats      bool          `toml:"bpf-stats"`
	Requests      *bool         `toml:"requests"`
	RequestVars   string        `toml:"request-vars"`
	MaxConns      int           `toml:"max-connections"`
	MaxWorkers    int           `toml:"max-workers"`
	MaxTransfers  int           `toml:"max-transfers"`
	CaptureRing   int           `toml:"capture-ring"` // ignored, as --capture-ring is
	StatsMaxConns int           `toml:"stats-max-conns"`
	StatsTimeout  tomlDuration  `toml:"stats-timeout"`
	StatsMaxAge   tomlDuration  `toml:"stats-max-age"`
	Kubeconfig    string        `toml:"kubeconfig"`
	NodeName      string        `toml:"node-name"`
	MetricsLabels []string      `toml:"metrics-labels"`
	Pools         []poolOptions `toml:"pool"`
}

// tomlDuration reads "5s"-style durations, as the flags take them.
type tomlDuration struct {
	time.Duration
	set bool
}

func (d *tomlDuration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("%q is not a duration such as 100ms or 5s", b)
	}
	d.Duration, d.set = v, true
	return nil
}

// loadConfig reads a --config file. Unknown keys are errors: a misspelt key
// silently ignored would watch the wrong thing.
func loadConfig(path string) (configFile, error) {
	var c configFile
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return c, fmt.Errorf("config %s: line %d: %s", path, pe.Position.Line, pe.Message)
		}
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return c, fmt.Errorf("config %s: unknown key %s (known: %s, and in [[pool]]: %s)", path,
			strings.Join(keys, ", "), strings.Join(tomlKeys(configFile{}), ", "), strings.Join(tomlKeys(poolOptions{}), ", "))
	}
	return c, nil
}

// checkConfig says what in config path c contradicts whether the daemon
// discovers its pools (from the config, or --discover): [[pool]]s, or
// their absence; discover's own keys without it.
func checkConfig(path string, c configFile, discover bool) error {
	switch {
	case discover && len(c.Pools) > 0:
		return fmt.Errorf("config %s: discover and [[pool]] exclude each other: pick one (discover watches every pool on the node, [[pool]] the ones it names)", path)
	case discover:
		return nil
	case len(c.Pools) == 0:
		return fmt.Errorf("config %s has no [[pool]]: add one with a pid, pidfile or name and a stats address, or set discover = true to watch every pool", path)
	case c.Stats != "" || c.StatsMinified || c.StatsChmod != "" || c.StatsChown != "":
		return fmt.Errorf("config %s: stats keys at the top are discover's one socket: put them in each [[pool]], or set discover = true", path)
	case c.DiscoverInterval.set || c.MaxPools != 0:
		return fmt.Errorf("config %s: discover-interval and max-pools go with discover = true: set it, or drop them", path)
	}
	return nil
}

// tomlKeys lists the keys a config table takes, from v's struct tags: the
// one list of them, so a key added to the file's structs is in every
// message that names them. Tables within it ([[pool]]) are left out.
func tomlKeys(v any) []string {
	t := reflect.TypeOf(v)
	var keys []string
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if key == "" || key == "-" || f.Type.Kind() == reflect.Slice && f.Type.Elem().Kind() == reflect.Struct {
			continue
		}
		keys = append(keys, key)
	}
	return keys
}

// checkPools validates a config's pools and that no two share a stats
// address; from names the config in messages.
func checkPools(pools []poolOptions, from string) ([]poolSpec, error) {
	specs := make([]poolSpec, 0, len(pools))
	seen := map[string]int{}
	for i, p := range pools {
		where := fmt.Sprintf("%s[[pool]] %d", from, i+1)
		s, err := p.check(where, where)
		if err != nil {
			return nil, err
		}
		key := s.addr.Network + " " + s.addr.Address
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("%s: stats %s is already pool %d's: each pool needs its own stats socket", where, p.Stats, j+1)
		}
		seen[key] = i
		specs = append(specs, s)
	}
	return specs, nil
}
