package requests

import (
	"slices"
	"testing"

	"github.com/workerstats/workerstats/observer/proto"
)

const ms = uint64(1e6)

func httpGet(path string) []byte {
	return []byte("GET " + path + " HTTP/1.1\r\nHost: app.example\r\nCookie: session=secret\r\n\r\n")
}

func httpStatus(code string) []byte {
	return []byte("HTTP/1.1 " + code + " X\r\nContent-Length: 0\r\n\r\n")
}

// TestKeepAliveRequestsEnd: two requests on one kept-alive connection, a
// 200 and a 500, then the close: each ends by its class, the first when
// the second began (at its last response byte), the second at the close;
// their durations are first request byte to last response byte.
func TestKeepAliveRequestsEnd(t *testing.T) {
	var tr Tracker
	tr.Add(Head{Conn: 1, PID: 10, Kind: Request, TimeNs: 100 * ms, Data: httpGet("/a")})
	tr.Add(Head{Conn: 1, PID: 10, Kind: Response, TimeNs: 103 * ms, Data: httpStatus("200")})
	tr.Add(Head{Conn: 1, PID: 10, Kind: Request, TimeNs: 200 * ms, LastTxNs: 104 * ms, Data: httpGet("/b")})
	tr.Add(Head{Conn: 1, PID: 10, Kind: Response, TimeNs: 260 * ms, LastTxNs: 104 * ms, Data: httpStatus("500")})
	if w := tr.Worker(10); len(w.InFlight) != 1 || !w.InFlight[0].Answered || w.InFlight[0].Status != 500 {
		t.Fatalf("before the close: in flight %+v, want /b answered 500", w.InFlight)
	}
	tr.Add(Head{Conn: 1, PID: 10, Kind: Close, TimeNs: 300 * ms, LastTxNs: 270 * ms, Answered: true})
	w := tr.Worker(10)
	if w.Ended[Status2xx] != 1 || w.Ended[Status5xx] != 1 || w.Exceptions() != 1 || len(w.InFlight) != 0 {
		t.Errorf("ended %v, exceptions %d, in flight %d; want one 2xx, one 5xx, 1 exception, none in flight", w.Ended, w.Exceptions(), len(w.InFlight))
	}
	if w.Durations.Count != 2 || w.Durations.SumNs != 4*ms+70*ms || w.Durations.Counts[0] != 1 || w.Durations.Counts[4] != 1 {
		t.Errorf("durations %+v, want 4 ms (bucket 5 ms) and 70 ms (bucket 100 ms)", w.Durations)
	}
}

// TestInFlightShowsVars: a request not answered yet is in flight with its
// vars as uWSGI names them, credentials left out.
func TestInFlightShowsVars(t *testing.T) {
	var tr Tracker
	tr.Add(Head{Conn: 7, PID: 11, Kind: Request, TimeNs: 5 * ms, Data: httpGet("/slow?x=1")})
	w := tr.Worker(11)
	if len(w.InFlight) != 1 {
		t.Fatalf("in flight %+v, want one", w.InFlight)
	}
	r := proto.Request{Vars: w.InFlight[0].Vars}
	if r.Var("REQUEST_METHOD") != "GET" || r.Var("PATH_INFO") != "/slow" || r.Var("QUERY_STRING") != "x=1" || r.Var("HTTP_HOST") != "app.example" {
		t.Errorf("vars %v", w.InFlight[0].Vars)
	}
	if r.Var("HTTP_COOKIE") != "" {
		t.Errorf("the cookie is shown: %v", w.InFlight[0].Vars)
	}
	if w.InFlight[0].StartNs != 5*ms || w.InFlight[0].Kind != proto.HTTP || w.InFlight[0].Answered {
		t.Errorf("in flight %+v", w.InFlight[0])
	}
}

// TestUnansweredIsAnException: a connection closed before any response
// byte (an app that raised, under uWSGI) ends its request unanswered.
func TestUnansweredIsAnException(t *testing.T) {
	var tr Tracker
	tr.Add(Head{Conn: 3, PID: 12, Kind: Request, TimeNs: 1 * ms, Data: httpGet("/boom")})
	tr.Add(Head{Conn: 3, PID: 12, Kind: Close, TimeNs: 9 * ms})
	w := tr.Worker(12)
	if w.Ended[Unanswered] != 1 || w.Exceptions() != 1 || w.Durations.Count != 0 || len(w.InFlight) != 0 {
		t.Errorf("ended %v, exceptions %d, durations %d, in flight %d", w.Ended, w.Exceptions(), w.Durations.Count, len(w.InFlight))
	}
}

// TestUnknownProtocolIsCountedNotParsed: TLS bytes are a request of no
// protocol, with no vars, answered with no status to read.
func TestUnknownProtocolIsCountedNotParsed(t *testing.T) {
	var tr Tracker
	tls := []byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc}
	tr.Add(Head{Conn: 4, PID: 13, Kind: Request, TimeNs: 1 * ms, Data: tls})
	if w := tr.Worker(13); len(w.InFlight) != 1 || w.InFlight[0].Kind != proto.Unknown || len(w.InFlight[0].Vars) != 0 {
		t.Fatalf("in flight %+v", w.InFlight)
	}
	tr.Add(Head{Conn: 4, PID: 13, Kind: Response, TimeNs: 2 * ms, Data: []byte{0x16, 0x03, 0x03}})
	tr.Add(Head{Conn: 4, PID: 13, Kind: Close, TimeNs: 3 * ms, LastTxNs: 2 * ms, Answered: true})
	if w := tr.Worker(13); w.Ended[StatusOther] != 1 || w.Exceptions() != 0 {
		t.Errorf("ended %v", w.Ended)
	}
}

// TestTrackerBounded: connections beyond MaxConns are not followed, and
// said; a socket address taken by another worker's connection starts
// afresh; a worker forgotten leaves nothing.
func TestTrackerBounded(t *testing.T) {
	tr := Tracker{MaxConns: 2}
	for c := range uint64(3) {
		tr.Add(Head{Conn: c, PID: 20, Kind: Request, TimeNs: c, Data: httpGet("/")})
	}
	if n := len(tr.Worker(20).InFlight); n != 2 || tr.Lost() != 1 {
		t.Errorf("%d in flight, %d lost; want 2 and 1", n, tr.Lost())
	}
	tr.Add(Head{Conn: 0, PID: 21, Kind: Request, TimeNs: 9, Data: httpGet("/new")})
	if n, m := len(tr.Worker(20).InFlight), len(tr.Worker(21).InFlight); n != 1 || m != 1 {
		t.Errorf("after the address is reused: %d and %d in flight, want 1 and 1", n, m)
	}
	tr.Forget(20)
	tr.Forget(21)
	if len(tr.conns) != 0 || len(tr.byPID) != 0 || len(tr.workers) != 0 {
		t.Errorf("left %d connections (%d workers of them), %d workers", len(tr.conns), len(tr.byPID), len(tr.workers))
	}
}

// FuzzTracker: any sequence of heads, with any bytes, neither panics nor
// follows more than MaxConns connections, and every request ends once.
func FuzzTracker(f *testing.F) {
	f.Add([]byte("\x00\x01\x0aGET / HTTP/1.1\r\n\r\n\x01\x01\x0aHTTP/1.1 200 OK\r\n\x02\x01\x01"))
	f.Fuzz(func(t *testing.T, in []byte) {
		tr := Tracker{MaxConns: 4}
		started := 0
		for len(in) >= 3 {
			kind, conn, n := Kind(in[0]%4), uint64(in[1]%8), int(in[2])
			in = in[3:]
			n = min(n, len(in))
			data := in[:n]
			in = in[n:]
			before := tr.Lost()
			tr.Add(Head{Conn: conn, PID: int(conn % 3), Kind: kind, TimeNs: uint64(len(in)), Data: data, Answered: n%2 == 0})
			if kind == Request && tr.Lost() == before {
				started++
			}
			if len(tr.conns) > 4 {
				t.Fatalf("%d connections followed", len(tr.conns))
			}
			for k, c := range tr.conns {
				if len(c.head) > DefaultHeadMax {
					t.Fatalf("connection %d keeps a head of %d bytes", k, len(c.head))
				}
			}
			byPID := 0
			for _, mine := range tr.byPID {
				byPID += len(mine)
			}
			if byPID != len(tr.conns) {
				t.Fatalf("%d connections, %d by worker", len(tr.conns), byPID)
			}
		}
		ended, inFlight := uint64(0), 0
		for pid := range 3 {
			w := tr.Worker(pid)
			for _, n := range w.Ended {
				ended += n
			}
			inFlight += len(w.InFlight)
		}
		dropped := started - int(ended) - inFlight // reused addresses drop theirs
		if dropped < 0 {
			t.Fatalf("%d requests started, %d ended, %d in flight", started, ended, inFlight)
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
		tr := Tracker{Vars: tc.vars}
		tr.Add(Head{Conn: 1, PID: 10, Kind: Request, TimeNs: ms, Data: head})
		w := tr.Worker(10)
		if len(w.InFlight) != 1 || !slices.Equal(w.InFlight[0].Vars, tc.want) {
			t.Errorf("%s: in flight %+v, want vars %v", tc.vars, w.InFlight, tc.want)
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
// record, each header apart, so its head comes in several captures: the
// vars are read once the head is whole, and a head that never completes
// is kept to HeadMax bytes and no more.
func TestHeadInSeveralReads(t *testing.T) {
	rec := func(typ byte, content []byte) []byte {
		return append([]byte{1, typ, 0, 1, byte(len(content) >> 8), byte(len(content)), 0, 0}, content...)
	}
	pair := func(k, v string) []byte { return append([]byte{byte(len(k)), byte(len(v))}, k+v...) }
	params := append(pair("REQUEST_METHOD", "GET"), pair("SCRIPT_FILENAME", "/srv/slow.php")...)
	params = append(params, pair("REQUEST_URI", "/slow.php?ms=3")...)
	begin := rec(1, []byte{0, 1, 0, 0, 0, 0, 0, 0})
	p := rec(4, params)
	// As FPM reads them: a header, its content, and so on.
	reads := [][]byte{begin[:8], begin[8:], p[:8], p[8:], rec(4, nil)}
	var tr Tracker
	tr.Add(Head{Conn: 1, PID: 10, Kind: Request, TimeNs: ms, Data: reads[0]})
	for _, r := range reads[1:] {
		tr.Add(Head{Conn: 1, PID: 10, Kind: More, TimeNs: 2 * ms, Data: r})
	}
	w := tr.Worker(10)
	want := []proto.Var{{Key: "REQUEST_METHOD", Value: "GET"}, {Key: "SCRIPT_FILENAME", Value: "/srv/slow.php"}, {Key: "REQUEST_URI", Value: "/slow.php?ms=3"}}
	if len(w.InFlight) != 1 || w.InFlight[0].Kind != proto.FastCGI || !slices.Equal(w.InFlight[0].Vars, want) || w.InFlight[0].StartNs != ms {
		t.Fatalf("in flight %+v, want the FastCGI request's vars %v from its first read's time", w.InFlight, want)
	}
	if c := tr.conns[1]; c.head != nil {
		t.Errorf("the complete head is still kept: %d bytes", len(c.head))
	}

	// An HTTP head that never ends: kept to HeadMax, parsed that far.
	endless(t, &tr)
	endless(t, &Tracker{HeadMax: 64})
}

// endless sends tr an HTTP head that never ends, checking what it keeps
// of it after each read: at most its HeadMax, and none once it is over.
func endless(t *testing.T, tr *Tracker) {
	t.Helper()
	tr.Add(Head{Conn: 2, PID: 10, Kind: Request, TimeNs: ms, Data: []byte("GET /x HTTP/1.1\r\nHost: a\r\n")})
	for range 40 {
		tr.Add(Head{Conn: 2, PID: 10, Kind: More, TimeNs: ms, Data: []byte("X-Long: aaaaaaaaaaaaaaaaaaaa\r\n")})
		if c := tr.conns[2]; len(c.head) > tr.headMax() {
			t.Fatalf("HeadMax %d: an endless head kept to %d bytes", tr.HeadMax, len(c.head))
		}
	}
	if c := tr.conns[2]; c.head != nil || !c.truncated || !c.cur.Truncated || c.cur.Vars[0].Value != "GET" {
		t.Errorf("HeadMax %d: an endless head: kept %d bytes, truncated %v, vars %v; want none kept past %d, truncated", tr.HeadMax, len(c.head), c.truncated, c.cur.Vars, tr.headMax())
	}
}
