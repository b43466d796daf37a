package observer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"testing"
)

// indentLikeUWSGI lays out compact JSON one value per line, indented with
// tabs, with "key":value and no space, as uWSGI's stats server does. Empty
// arrays and objects stay on one line.
func indentLikeUWSGI(src []byte) []byte {
	lines := bytes.Count(src, []byte{','}) + 2*bytes.Count(src, []byte{'{'}) + 2*bytes.Count(src, []byte{'['})
	return appendIndented(make([]byte, 0, len(src)+lines*8), src, 0)
}

// FuzzIndentLikeUWSGI: uWSGI's layout changes only whitespace. For any
// compact JSON, the laid-out text is valid JSON that compacts back to it
// byte for byte, nests one tab per level, and keeps empty arrays and
// objects on one line.
func FuzzIndentLikeUWSGI(f *testing.F) {
	for _, s := range []string{
		`{"version":"2.0.21","workers":[{"id":1,"apps":[],"cores":[{"id":0,"vars":[]}]}]}`,
		`{"a":"x,y{z}[\"q\\\\"],"b":{},"c":[1,2.5e3,-3,true,null]}`,
		`[]`, `"s"`, `0`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var compact bytes.Buffer
		if json.Compact(&compact, in) != nil {
			return
		}
		src := compact.Bytes()
		out := indentLikeUWSGI(src)
		var back bytes.Buffer
		if err := json.Compact(&back, out); err != nil {
			t.Fatalf("laid out %q as invalid JSON %q: %v", src, out, err)
		}
		if !bytes.Equal(back.Bytes(), src) {
			t.Fatalf("laid out %q as %q, which compacts to %q", src, out, back.Bytes())
		}
		if bytes.Contains(out, []byte("[\n")) && bytes.Contains(src, []byte("[]")) && !bytes.Contains(out, []byte("[]")) {
			t.Fatalf("an empty array of %q was split: %q", src, out)
		}
	})
}

// TestIndentLikeUWSGI: the layout of uWSGI's stats server, as in its dumps.
func TestIndentLikeUWSGI(t *testing.T) {
	in := `{"version":"2.0.21","listen_queue":0,"sockets":[],"workers":[{"id":1,"apps":[{"id":0,"requests":3}],"vars":{}}]}`
	want := "{\n\t\"version\":\"2.0.21\",\n\t\"listen_queue\":0,\n\t\"sockets\":[],\n\t\"workers\":[\n\t\t{\n\t\t\t\"id\":1,\n\t\t\t\"apps\":[\n\t\t\t\t{\n\t\t\t\t\t\"id\":0,\n\t\t\t\t\t\"requests\":3\n\t\t\t\t}\n\t\t\t],\n\t\t\t\"vars\":{}\n\t\t}\n\t]\n}"
	if got := string(indentLikeUWSGI([]byte(in))); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// referenceStats is MarshalStats as encoding/json and indentLikeUWSGI make
// it: the bytes MarshalStats must give.
func referenceStats(t testing.TB, st *Stats, minified bool) []byte {
	t.Helper()
	src, err := appendJSON(nil, st)
	if err != nil {
		t.Fatal(err)
	}
	if minified {
		return src
	}
	return indentLikeUWSGI(src)
}

// trickyStrings are strings encoding/json escapes, or does not.
var trickyStrings = []string{"", "idle", `a"b\c`, "tab\there\n", "<&>", "caf\u00e9", "\u2028", "\xff\xfe", "\x00\x1f", "/srv/app"}

// fill sets every field v reaches to a value told apart from the others
// (numbers counting up, strings from trickyStrings, slices of n elements)
// so that a field MarshalStats forgets or misplaces changes its output.
func fill(v reflect.Value, n int, seq *int) {
	*seq++
	switch v.Kind() {
	case reflect.Int, reflect.Int64:
		v.SetInt(int64(*seq) * 1_000_003)
	case reflect.Uint64:
		v.SetUint(uint64(*seq) * 1_000_000_007)
	case reflect.String:
		v.SetString(trickyStrings[*seq%len(trickyStrings)])
	case reflect.Struct:
		for i := range v.NumField() {
			fill(v.Field(i), n, seq)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), n, seq)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), n, n))
		for i := range n {
			fill(v.Index(i), n, seq)
		}
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for i := range n {
			k := reflect.New(v.Type().Key()).Elem()
			k.SetString(trickyStrings[(*seq+i)%len(trickyStrings)] + strconv.Itoa(i))
			e := reflect.New(v.Type().Elem()).Elem()
			if e.Kind() == reflect.Interface {
				e.Set(reflect.ValueOf(int64(*seq + i)))
			} else {
				fill(e, n, seq)
			}
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	}
}

// TestMarshalStatsLikeEncodingJSON: the field-by-field writer gives the
// bytes of encoding/json's encoding laid out as uWSGI lays it out, in both
// forms, with every field of the schema set, with empty and with nil
// slices and maps.
func TestMarshalStatsLikeEncodingJSON(t *testing.T) {
	for _, n := range []int{0, 1, 2} {
		var st Stats
		seq := 0
		fill(reflect.ValueOf(&st).Elem(), n, &seq)
		cases := map[string]*Stats{fmt.Sprintf("%d per slice", n): &st}
		if n == 1 {
			nils := st
			nils.Workers = []Worker{st.Workers[0]}
			nils.Workers[0].Apps, nils.Workers[0].Cores = nil, []Core{{}}
			nils.Locks, nils.Sockets = nil, nil
			cases["nil slices"] = &nils
			cases["no workers"] = &Stats{}
		}
		for name, st := range cases {
			for _, minified := range []bool{false, true} {
				got, err := MarshalStats(st, minified)
				if err != nil {
					t.Fatal(err)
				}
				if want := referenceStats(t, st, minified); !bytes.Equal(got, want) {
					t.Errorf("%s, minified %v:\ngot  %q\nwant %q", name, minified, got, want)
				}
			}
		}
	}
}

// FuzzMarshalStatsStrings: strings that come from the network (a request's
// vars, in time) are escaped as encoding/json escapes them, and the dump
// stays valid JSON whatever they hold.
func FuzzMarshalStatsStrings(f *testing.F) {
	for _, s := range trickyStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		st := &Stats{CWD: s, Workers: []Worker{{Status: s, Apps: []App{{Mountpoint: s}},
			Cores: []Core{{Vars: []string{s, "REQUEST_URI=" + s}, ReqInfo: map[string]any{s: s}}}}}}
		for _, minified := range []bool{false, true} {
			got, err := MarshalStats(st, minified)
			if err != nil {
				t.Fatal(err)
			}
			if want := referenceStats(t, st, minified); !bytes.Equal(got, want) {
				t.Fatalf("minified %v:\ngot  %q\nwant %q", minified, got, want)
			}
			if !json.Valid(got) {
				t.Fatalf("invalid JSON: %q", got)
			}
		}
	})
}
