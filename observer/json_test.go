package observer

import (
	"bytes"
	"encoding/json"
	"testing"
)

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
