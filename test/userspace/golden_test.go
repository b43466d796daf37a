package userspace

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
	"github.com/workerstats/workerstats/observer/ebpfkernel"
	"github.com/workerstats/workerstats/test/harness"
)

// The golden tests hold workerstats' dump to uWSGI's own, object by object:
// every key uWSGI has must be in ours, with the same JSON type (every uWSGI
// number an integer in ours), in the same relative order. Ours may add keys.

// goldenFixture is uWSGI 2.0.21's stats for an http-socket pool of 4 workers.
const goldenFixture = "testdata/uwsgi-2.0.21-http-socket-4-workers.json"

// jsonObject is a decoded JSON object that remembers its key order.
type jsonObject struct {
	keys []string
	vals map[string]any
}

// decodeOrdered decodes one JSON document with numbers as json.Number and
// objects as *jsonObject. A duplicate key or trailing data is an error.
func decodeOrdered(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := decodeOrderedValue(dec)
	if err != nil {
		return nil, err
	}
	if tok, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("data after the JSON document: %v %v", tok, err)
	}
	return v, nil
}

func decodeOrderedValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil // string, json.Number, bool or nil
	}
	switch d {
	case '{':
		o := &jsonObject{vals: map[string]any{}}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, err
			}
			k, ok := kt.(string)
			if !ok {
				return nil, fmt.Errorf("object key %v is not a string", kt)
			}
			if _, dup := o.vals[k]; dup {
				return nil, fmt.Errorf("duplicate key %q", k)
			}
			v, err := decodeOrderedValue(dec)
			if err != nil {
				return nil, err
			}
			o.keys = append(o.keys, k)
			o.vals[k] = v
		}
		if _, err := dec.Token(); err != nil { // '}'
			return nil, err
		}
		return o, nil
	case '[':
		arr := []any{}
		for dec.More() {
			v, err := decodeOrderedValue(dec)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		if _, err := dec.Token(); err != nil { // ']'
			return nil, err
		}
		return arr, nil
	}
	return nil, fmt.Errorf("unexpected delimiter %v", d)
}

func jsonType(v any) string {
	switch v := v.(type) {
	case *jsonObject:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case json.Number:
		return "number"
	case bool:
		return "bool"
	case nil:
		return "null"
	default:
		return fmt.Sprintf("%T", v)
	}
}

func isInteger(n json.Number) bool { return !strings.ContainsAny(n.String(), ".eE") }

func childPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func showPath(path string) string {
	if path == "" {
		return "top level"
	}
	return path
}

// schemaDiffs compares ours with uWSGI's (theirs) and returns every
// difference, each prefixed with its JSON path.
func schemaDiffs(ours, theirs any) []string {
	var diffs []string
	compareSchema("", ours, theirs, &diffs)
	return diffs
}

func compareSchema(path string, ours, theirs any, diffs *[]string) {
	add := func(format string, args ...any) {
		*diffs = append(*diffs, showPath(path)+": "+fmt.Sprintf(format, args...))
	}
	if ot, tt := jsonType(ours), jsonType(theirs); ot != tt {
		add("ours is %s, uWSGI's is %s", ot, tt)
		return
	}
	switch tv := theirs.(type) {
	case *jsonObject:
		ov := ours.(*jsonObject)
		for _, k := range tv.keys {
			p := childPath(path, k)
			o, ok := ov.vals[k]
			if !ok {
				*diffs = append(*diffs, fmt.Sprintf("%s: missing (uWSGI has a %s)", p, jsonType(tv.vals[k])))
				continue
			}
			if path == "" && k == "locks" {
				compareLocks(p, o, diffs)
				continue
			}
			compareSchema(p, o, tv.vals[k], diffs)
		}
		compareKeyOrder(path, ov, tv, diffs)
	case []any:
		ov := ours.([]any)
		if len(tv) == 0 {
			return
		}
		if len(ov) == 0 {
			add("empty, uWSGI's has %d elements", len(tv))
			return
		}
		for i, e := range ov {
			compareSchema(path+"["+strconv.Itoa(i)+"]", e, tv[0], diffs)
		}
	case json.Number:
		if o := ours.(json.Number); !isInteger(o) {
			add("%s is not a JSON integer", o)
		}
	}
}

// compareLocks checks ours "locks": uWSGI's lock names differ from any we
// could have, so only the shape is held: objects of name -> integer.
func compareLocks(path string, ours any, diffs *[]string) {
	arr, ok := ours.([]any)
	if !ok {
		*diffs = append(*diffs, fmt.Sprintf("%s: ours is %s, uWSGI's is array", path, jsonType(ours)))
		return
	}
	for i, e := range arr {
		p := path + "[" + strconv.Itoa(i) + "]"
		o, ok := e.(*jsonObject)
		if !ok {
			*diffs = append(*diffs, fmt.Sprintf("%s: ours is %s, uWSGI's locks are objects", p, jsonType(e)))
			continue
		}
		for _, k := range o.keys {
			n, ok := o.vals[k].(json.Number)
			if !ok || !isInteger(n) {
				*diffs = append(*diffs, fmt.Sprintf("%s: ours is %s %v, uWSGI's lock values are integers", childPath(p, k), jsonType(o.vals[k]), o.vals[k]))
			}
		}
	}
}

// compareKeyOrder checks that the keys both objects have come in uWSGI's
// relative order in ours.
func compareKeyOrder(path string, ours, theirs *jsonObject, diffs *[]string) {
	var shared []string // in uWSGI's order
	for _, k := range theirs.keys {
		if _, ok := ours.vals[k]; ok {
			shared = append(shared, k)
		}
	}
	var oursOrder []string
	for _, k := range ours.keys {
		if _, ok := theirs.vals[k]; ok {
			oursOrder = append(oursOrder, k)
		}
	}
	if strings.Join(shared, ",") != strings.Join(oursOrder, ",") {
		*diffs = append(*diffs, fmt.Sprintf("%s: key order differs: uWSGI has %v, ours has %v", showPath(path), shared, oursOrder))
	}
}

// valueDiffs returns the leaves of theirs whose value differs in ours, or
// which ours lacks. Arrays are compared element by element (not "locks").
func valueDiffs(path string, ours, theirs any, diffs *[]string) {
	switch tv := theirs.(type) {
	case *jsonObject:
		ov, ok := ours.(*jsonObject)
		if !ok {
			return // a type difference, reported by compareSchema
		}
		for _, k := range tv.keys {
			if path == "" && k == "locks" {
				continue
			}
			if o, ok := ov.vals[k]; ok {
				valueDiffs(childPath(path, k), o, tv.vals[k], diffs)
			}
		}
	case []any:
		ov, ok := ours.([]any)
		if !ok {
			return
		}
		if len(ov) != len(tv) {
			*diffs = append(*diffs, fmt.Sprintf("%s: %d elements, uWSGI's has %d", showPath(path), len(ov), len(tv)))
			return
		}
		for i := range tv {
			valueDiffs(path+"["+strconv.Itoa(i)+"]", ov[i], tv[i], diffs)
		}
	default:
		if fmt.Sprint(ours) != fmt.Sprint(theirs) {
			*diffs = append(*diffs, fmt.Sprintf("%s: ours is %v, uWSGI's is %v", showPath(path), ours, theirs))
		}
	}
}

func reportDiffs(t *testing.T, what string, diffs []string) {
	t.Helper()
	if len(diffs) > 0 {
		t.Errorf("%s: %d differences from uWSGI:\n\t%s", what, len(diffs), strings.Join(diffs, "\n\t"))
	}
}

// TestGoldenFixturesKeyOrder marshals the numbers of a real uWSGI dump
// through the observer types and holds the result to that dump: keys, types
// and order, values, and uWSGI's layout; and the minified form to compact
// JSON of the same value. No root needed.
func TestGoldenFixturesKeyOrder(t *testing.T) {
	raw, err := os.ReadFile(goldenFixture)
	if err != nil {
		t.Fatalf("uWSGI fixture: %v", err)
	}
	theirs, err := decodeOrdered(raw)
	if err != nil {
		t.Fatalf("decode the fixture: %v", err)
	}

	// The observer types carry the fixture's numbers: whatever key they do
	// not have is lost here and shows as missing below.
	var st observer.Stats
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatalf("fixture into observer.Stats: %v", err)
	}
	st.Observer = observer.ObserverInfo{Mode: "ebpf", Hooks: ebpfkernel.HooksSock, Dropped: map[string]uint64{"conns": 0}}
	if len(st.Workers) != 4 || len(st.Sockets) != 1 || len(st.Locks) != 8 {
		t.Fatalf("fixture decoded to %d workers, %d sockets, %d locks; want 4, 1, 8", len(st.Workers), len(st.Sockets), len(st.Locks))
	}

	pretty, err := observer.MarshalStats(&st, false)
	if err != nil {
		t.Fatal(err)
	}
	ours, err := decodeOrdered(pretty)
	if err != nil {
		t.Fatalf("MarshalStats(st, false) is not valid JSON: %v\n%s", err, pretty)
	}
	reportDiffs(t, "schema", schemaDiffs(ours, theirs))
	var vdiffs []string
	valueDiffs("", ours, theirs, &vdiffs)
	reportDiffs(t, "values", vdiffs)
	// Lock names and values are uWSGI's in this dump, and must survive.
	locks, _ := json.Marshal(st.Locks)
	if want := `[{"user 0":0},{"signal":0},{"filemon":0},{"timer":0},{"rbtimer":0},{"cron":0},{"rpc":0},{"snmp":0}]`; string(locks) != want {
		t.Errorf("locks = %s, want %s", locks, want)
	}

	t.Run("layout", func(t *testing.T) {
		checkUWSGILayout(t, pretty)
	})

	t.Run("minified", func(t *testing.T) {
		mini, err := observer.MarshalStats(&st, true)
		if err != nil {
			t.Fatal(err)
		}
		if !json.Valid(mini) {
			t.Fatalf("MarshalStats(st, true) is not valid JSON: %s", harness.Truncate(mini))
		}
		var compact bytes.Buffer
		if err := json.Compact(&compact, mini); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(compact.Bytes(), mini) {
			t.Errorf("minified output is not compact: %d bytes, %d once compacted", len(mini), compact.Len())
		}
		var a, b any
		if err := json.Unmarshal(mini, &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(pretty, &b); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("minified and uWSGI-style outputs decode to different values:\n%v\n%v", a, b)
		}
		m, err := decodeOrdered(mini)
		if err != nil {
			t.Fatal(err)
		}
		reportDiffs(t, "minified schema", schemaDiffs(m, theirs))
		if len(mini) >= len(pretty) {
			t.Errorf("minified is %d bytes, uWSGI-style %d", len(mini), len(pretty))
		}
	})
}

// checkUWSGILayout holds MarshalStats' default output to uWSGI's layout: one
// value per line, indented with one tab per level and never a space, and
// "key":value with nothing between the colon and the value.
func checkUWSGILayout(t *testing.T, b []byte) {
	t.Helper()
	if !bytes.HasPrefix(b, []byte("{\n\t\"version\":")) {
		t.Errorf("does not open like uWSGI's ({, newline, tab, \"version\":): %q", harness.Truncate(b))
	}
	depth := 0
	for i, line := range strings.Split(string(b), "\n") {
		body := strings.TrimLeft(line, "\t")
		indent := len(line) - len(body)
		want := depth
		if strings.HasPrefix(body, "}") || strings.HasPrefix(body, "]") {
			want--
		}
		if indent != want {
			t.Errorf("line %d: %d tabs, want %d: %q", i+1, indent, want, line)
		}
		if strings.HasPrefix(body, " ") || strings.HasSuffix(body, " ") {
			t.Errorf("line %d: space in the layout: %q", i+1, line)
		}
		if strings.HasPrefix(body, `"`) {
			if j := strings.Index(body, `":`); j > 0 {
				if rest := body[j+2:]; rest == "" || rest[0] == ' ' || rest[0] == '\t' {
					t.Errorf("line %d: not \"key\":value: %q", i+1, line)
				}
			}
		}
		// Strings in this dump hold no brackets: count them for the depth.
		depth += strings.Count(body, "{") + strings.Count(body, "[") - strings.Count(body, "}") - strings.Count(body, "]")
	}
	if depth != 0 {
		t.Errorf("brackets do not balance: depth %d at the end", depth)
	}
}

// TestGoldenSchemaMatchesUWSGI runs real uWSGI with its own stats server and
// workerstats on the same master, and holds our dump to uWSGI's: every
// object's keys, JSON types and key order, for two pool shapes.
func TestGoldenSchemaMatchesUWSGI(t *testing.T) {
	testutil.RequireEBPF(t)
	shapes := []struct {
		name      string
		o         harness.UWSGIOptions
		wantCores int
	}{
		{"http-socket-4-workers", harness.UWSGIOptions{Processes: 4}, 1},
		// uWSGI reads UWSGI_<OPTION> from its environment: --threads 2.
		{"unix-socket-2-workers-2-threads", harness.UWSGIOptions{Processes: 2, Unix: true, Env: []string{"UWSGI_THREADS=2"}}, 2},
	}
	for _, shape := range shapes {
		t.Run(shape.name, func(t *testing.T) {
			p := harness.StartUWSGI(t, shape.o)
			d := harness.StartDaemon(t, "--pid", strconv.Itoa(p.PID), "--stats", harness.FreeAddr(t))
			res := harness.Drive(t, p, 200, 8, 0)
			harness.WaitFor(t, 20*time.Second, "both servers to count every request", func() error {
				for _, addr := range []string{p.Stats, d.Addr} {
					st, err := harness.ReadStats(addr)
					if err != nil {
						return err
					}
					if n, _, _ := harness.SumRequests(st); n != uint64(res.OK) {
						return fmt.Errorf("%s counts %d requests, clients completed %d", addr, n, res.OK)
					}
				}
				return nil
			})

			theirsRaw, oursRaw := harness.ReadRaw(t, p.Stats), harness.ReadRaw(t, d.Addr)
			theirs, err := decodeOrdered(theirsRaw)
			if err != nil {
				t.Fatalf("uWSGI's dump: %v\n%s", err, harness.Truncate(theirsRaw))
			}
			ours, err := decodeOrdered(oursRaw)
			if err != nil {
				t.Fatalf("our dump: %v\n%s", err, harness.Truncate(oursRaw))
			}
			// The pool must really have the shape under test.
			var u observer.Stats
			if err := json.Unmarshal(theirsRaw, &u); err != nil {
				t.Fatal(err)
			}
			if len(u.Workers) != shape.o.Processes || len(u.Workers[0].Cores) != shape.wantCores || len(u.Sockets) == 0 {
				t.Fatalf("uWSGI shows %d workers with %d cores, %d sockets; want %d with %d, at least 1",
					len(u.Workers), len(u.Workers[0].Cores), len(u.Sockets), shape.o.Processes, shape.wantCores)
			}
			var o observer.Stats
			if err := json.Unmarshal(oursRaw, &o); err != nil {
				t.Fatal(err)
			}
			t.Logf("uWSGI: %d bytes, %d workers x %d cores, sockets %+v", len(theirsRaw), len(u.Workers), len(u.Workers[0].Cores), u.Sockets)
			t.Logf("ours:  %d bytes, %d workers x %d cores, sockets %+v", len(oursRaw), len(o.Workers), len(o.Workers[0].Cores), o.Sockets)
			reportDiffs(t, "our dump", schemaDiffs(ours, theirs))
			if t.Failed() {
				t.Logf("our dump:\n%s", oursRaw)
			}
		})
	}
}

// ReadRaw reads one dump's bytes as a client does.

// fraction, keys out of order, an empty array, a lock that is not
// name -> integer. Keys we add and lock names are no difference.
func TestGoldenComparatorFindsDifferences(t *testing.T) {
	raw, err := os.ReadFile(goldenFixture)
	if err != nil {
		t.Fatalf("uWSGI fixture: %v", err)
	}
	theirs, err := decodeOrdered(raw)
	if err != nil {
		t.Fatal(err)
	}
	if d := schemaDiffs(theirs, theirs); len(d) != 0 {
		t.Fatalf("the fixture differs from itself: %v", d)
	}
	ours, _ := decodeOrdered(raw)
	top := ours.(*jsonObject)
	worker := func(i int) *jsonObject { return top.vals["workers"].([]any)[i].(*jsonObject) }
	core := worker(1).vals["cores"].([]any)[0].(*jsonObject)
	delete(core.vals, "in_request")
	core.keys = slices.DeleteFunc(core.keys, func(k string) bool { return k == "in_request" })
	worker(0).vals["tx"] = "5"
	worker(2).vals["avg_rt"] = json.Number("1.5")
	worker(3).keys[0], worker(3).keys[1] = worker(3).keys[1], worker(3).keys[0]
	top.vals["sockets"] = []any{}
	top.vals["locks"] = []any{&jsonObject{keys: []string{"x"}, vals: map[string]any{"x": "y"}}}
	worker(0).vals["cores"].([]any)[0].(*jsonObject).vals["req_info"] = []any{}
	// Additions and other lock names are allowed.
	top.keys = append(top.keys, "observer")
	top.vals["observer"] = &jsonObject{vals: map[string]any{}}
	worker(1).keys = append([]string{"rx"}, worker(1).keys...)
	worker(1).vals["rx"] = json.Number("1")

	got := schemaDiffs(ours, theirs)
	want := []string{
		"locks[0].x: ours is string y, uWSGI's lock values are integers",
		"sockets: empty, uWSGI's has 1 elements",
		"workers[0].tx: ours is string, uWSGI's is number",
		"workers[0].cores[0].req_info: ours is array, uWSGI's is object",
		"workers[1].cores[0].in_request: missing (uWSGI has a number)",
		"workers[2].avg_rt: 1.5 is not a JSON integer",
		"workers[3]: key order differs: uWSGI has [id pid accepting",
	}
	if len(got) != len(want) {
		t.Errorf("%d differences, want %d:\n\t%s", len(got), len(want), strings.Join(got, "\n\t"))
	}
	for _, w := range want {
		found := false
		for _, g := range got {
			found = found || strings.HasPrefix(g, w)
		}
		if !found {
			t.Errorf("difference %q not reported; got:\n\t%s", w, strings.Join(got, "\n\t"))
		}
	}
}
