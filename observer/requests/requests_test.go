package requests

import (
	"bytes"
	"slices"
	"testing"

	"github.com/workerstats/workerstats/observer/proto"
)

func httpGet(path string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: app.example\r\nCookie: session=secret\r\n\r\n")
}

// TestParseShowsVars: a request's head gives its vars as uWSGI names them,
// credentials left out.
func TestParseShowsVars(t *testing.T) {
	vars, truncated := Parse(httpGet("/slow?x=1"), false, AllVars)
	r := proto.Request{Vars: vars}
	if r.Var("REQUEST_METHOD") != "GET" || r.Var("PATH_INFO") != "/slow" || r.Var("QUERY_STRING") != "x=1" || r.Var("HTTP_HOST") != "app.example" {
		t.Errorf("vars %v", vars)
	}
	if r.Var("HTTP_COOKIE") != "" {
		t.Errorf("the cookie is shown: %v", vars)
	}
	if truncated {
		t.Error("a whole head said to be truncated")
	}
}

// TestUnknownProtocolIsNotParsed: TLS bytes are a request of no protocol,
// with no vars.
func TestUnknownProtocolIsNotParsed(t *testing.T) {
	tls := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc}
	if vars, _ := Parse(tls, false, AllVars); len(vars) != 0 {
		t.Errorf("vars %v from TLS bytes", vars)
	}
}

// FuzzParse: any bytes, cut or not, neither panic nor give vars larger
// than a few times the first HeadMax of them, nor a credential.
func FuzzParse(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), false)
	f.Add(bytes.Repeat([]byte("GET /x HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaaaaaa\r\n"), 40), true)
	f.Fuzz(func(t *testing.T, head []byte, cut bool) {
		vars, _ := Parse(head, cut, AllVars)
		first := head[:min(len(head), HeadMax)]
		size := 0
		for _, v := range vars {
			if proto.Secret(v.Key) {
				t.Fatalf("credential %s kept", v.Key)
			}
			size += len(v.Value)
		}
		// A URI's bytes appear in up to three vars, and a head too short
		// to say its protocol gets HTTP/0.9.
		if size > 3*len(first)+16 {
			t.Fatalf("vars of %d bytes from a head of %d: %v", size, len(first), vars)
		}
	})
}

// TestVarsPolicy: NoQuery leaves out query strings wherever they are
// (QUERY_STRING, the URI's, a referer's), NoVars every var; credentials
// are never kept, whatever the policy.
func TestVarsPolicy(t *testing.T) {
	head := []byte("GET /search?q=private HTTP/1.1\r\nHost: app.example\r\nReferer: https://app.example/a?token=x\r\n" +
		"Authorization: Basic c2VjcmV0\r\nCookie: s=1\r\n\r\n")
	for _, tc := range []struct {
		vars Vars
		want []proto.Var
	}{
		{AllVars, []proto.Var{{Key: "REQUEST_METHOD", Value: "GET"}, {Key: "PATH_INFO", Value: "/search"}, {Key: "REQUEST_URI", Value: "/search?q=private"},
			{Key: "QUERY_STRING", Value: "q=private"}, {Key: "SERVER_PROTOCOL", Value: "HTTP/1.1"}, {Key: "HTTP_HOST", Value: "app.example"},
			{Key: "HTTP_REFERER", Value: "https://app.example/a?token=x"}}},
		{NoQuery, []proto.Var{{Key: "REQUEST_METHOD", Value: "GET"}, {Key: "PATH_INFO", Value: "/search"}, {Key: "REQUEST_URI", Value: "/search"},
			{Key: "SERVER_PROTOCOL", Value: "HTTP/1.1"}, {Key: "HTTP_HOST", Value: "app.example"}, {Key: "HTTP_REFERER", Value: "https://app.example/a"}}},
		{NoVars, nil},
	} {
		if vars, _ := Parse(head, false, tc.vars); !slices.Equal(vars, tc.want) {
			t.Errorf("%s: vars %v, want %v", tc.vars, vars, tc.want)
		}
		if got, err := ParseVars(tc.vars.String()); err != nil || got != tc.vars {
			t.Errorf("ParseVars(%q) = %v, %v", tc.vars.String(), got, err)
		}
	}
	if _, err := ParseVars("some"); err == nil {
		t.Error("ParseVars took \"some\"")
	}
}

// TestHeadInSeveralReads: PHP-FPM reads a FastCGI request record by
// record, each header apart; the kernel side keeps those reads one after
// the other, and the whole gives the request's vars. A head longer than
// HeadMax is read that far, and said to be truncated.
func TestHeadInSeveralReads(t *testing.T) {
	rec := func(typ byte, content []byte) []byte {
		return append([]byte{1, typ, 0, 1, byte(len(content) >> 8), byte(len(content)), 0, 0}, content...)
	}
	pair := func(k, v string) []byte { return append([]byte{byte(len(k)), byte(len(v))}, k+v...) }
	params := append(pair("REQUEST_METHOD", "GET"), pair("SCRIPT_FILENAME", "/srv/slow.php")...)
	params = append(params, pair("REQUEST_URI", "/slow.php?ms=3")...)
	head := slices.Concat(rec(1, []byte{0, 1, 0, 0, 0, 0, 0, 0}), rec(4, params), rec(4, nil))
	want := []proto.Var{{Key: "REQUEST_METHOD", Value: "GET"}, {Key: "SCRIPT_FILENAME", Value: "/srv/slow.php"}, {Key: "REQUEST_URI", Value: "/slow.php?ms=3"}}
	if vars, truncated := Parse(head, false, AllVars); !slices.Equal(vars, want) || truncated {
		t.Errorf("FastCGI head: vars %v (truncated %v), want %v", vars, truncated, want)
	}

	long := append([]byte("GET /x HTTP/1.1\r\nHost: a\r\n"), bytes.Repeat([]byte("X-Long: aaaaaaaaaaaaaaaaaaaa\r\n"), 40)...)
	vars, truncated := Parse(long, false, AllVars)
	if !truncated || len(vars) == 0 || vars[0].Value != "GET" {
		t.Errorf("a head of %d bytes: vars %v, truncated %v; want its first ones, truncated", len(long), vars, truncated)
	}
}
