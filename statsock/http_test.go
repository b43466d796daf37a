package statsock

// HTTP mode, request by request, over real Unix sockets.

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// httpServer serves src in HTTP mode on a fresh Unix socket and returns its
// path.
func httpServer(t testing.TB, s *Server) string {
	t.Helper()
	path := sockPath(t)
	ln := listen(t, path, ListenOptions{})
	s.HTTP = true
	startServer(t, s, ln)
	return path
}

// ask sends req to the Unix socket at path, half-closes, and returns the
// whole answer.
func ask(t testing.TB, path, req string) []byte {
	t.Helper()
	return exchange(t, "unix", path, []byte(req), true)
}

// unixHTTPClient is an http.Client whose every request goes to the Unix
// socket at path.
func unixHTTPClient(path string) *http.Client {
	return &http.Client{
		Timeout: deadline,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		},
	}
}

// The answer to GET / is byte for byte uWSGI's --stats-http answer: its
// exact head, then the JSON, whatever the form of the request.
func TestHTTPGetRootExactHeaders(t *testing.T) {
	head := fixture(t, fixtureHeaders)
	dump := fixture(t, fixtureJSON)
	path := httpServer(t, &Server{Source: fixed(dump)})
	want := append(append([]byte{}, head...), dump...)
	for _, req := range []string{
		"GET / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: localhost:1717\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
		"GET /?pretty=1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://localhost:1717/ HTTP/1.1\r\nHost: localhost:1717\r\n\r\n",
		"GET / HTTP/1.0\n\n", // bare LF line ends, as netcat users type them
	} {
		t.Run(strconv.Quote(req), func(t *testing.T) {
			got := ask(t, path, req)
			if !bytes.Equal(got, want) {
				t.Errorf("answer differs from uWSGI's:\n got %q\nwant %q", clip(got), clip(want))
			}
		})
	}
	// A stock HTTP client understands it.
	resp, err := unixHTTPClient(path).Get("http://stats/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || !bytes.Equal(body, dump) {
		t.Errorf("http.Client got %s %v and %d bytes", resp.Status, resp.Header, len(body))
	}
}

func TestHTTPHeadRoot(t *testing.T) {
	head := fixture(t, fixtureHeaders)
	path := httpServer(t, &Server{Source: fixed(fixture(t, fixtureJSON))})
	for _, req := range []string{"HEAD / HTTP/1.0\r\n\r\n", "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"} {
		if got := ask(t, path, req); !bytes.Equal(got, head) {
			t.Errorf("%q answered\n %q\nwant the head alone\n %q", req, clip(got), head)
		}
	}
}

// checkErrorResponse checks an error answer is a complete, well-formed
// HTTP/1.0 response with the given status, a text body and a right
// Content-Length.
func checkErrorResponse(t *testing.T, raw []byte, codes ...int) *http.Response {
	t.Helper()
	resp, body := parseResponse(t, raw, "GET")
	ok := false
	for _, c := range codes {
		ok = ok || resp.StatusCode == c
	}
	if !ok {
		t.Errorf("status %s, want one of %v; answer %q", resp.Status, codes, clip(raw))
		return resp
	}
	if !bytes.HasPrefix(raw, []byte("HTTP/1.0 "+strconv.Itoa(resp.StatusCode)+" "+http.StatusText(resp.StatusCode)+"\r\n")) {
		t.Errorf("status line of %q", clip(raw))
	}
	if got := resp.Header.Values("Connection"); len(got) != 1 || got[0] != "close" {
		t.Errorf("Connection headers %q, want one close", got)
	}
	if got := resp.Header.Get("Content-Type"); !strings.HasPrefix(got, "text/plain") {
		t.Errorf("Content-Type %q", got)
	}
	if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length %q for %d bytes of body", cl, len(body))
	}
	if want := http.StatusText(resp.StatusCode) + "\n"; string(body) != want {
		t.Errorf("body %q, want %q", body, want)
	}
	return resp
}

func TestHTTPRefusals(t *testing.T) {
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up 1\n") })
	withMetrics := httpServer(t, &Server{Source: fixed([]byte("{}")), Metrics: metrics})
	withoutMetrics := httpServer(t, &Server{Source: fixed([]byte("{}"))})
	pad := func(n int) string { return strings.Repeat("a", n) }
	manyHeaders := func() string {
		var b strings.Builder
		b.WriteString("GET / HTTP/1.1\r\nHost: x\r\n")
		for i := 0; b.Len() < 2*MaxRequestBytes; i++ {
			fmt.Fprintf(&b, "X-Header-%d: %s\r\n", i, pad(40))
		}
		b.WriteString("\r\n")
		return b.String()
	}
	tests := []struct {
		name   string
		req    string
		noMet  bool // ask the server without a Metrics handler
		codes  []int
		header [2]string
	}{
		{name: "POST", req: "POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}", codes: []int{405}, header: [2]string{"Allow", "GET, HEAD"}},
		{name: "PUT", req: "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", codes: []int{405}, header: [2]string{"Allow", "GET, HEAD"}},
		{name: "DELETE metrics", req: "DELETE /metrics HTTP/1.0\r\n\r\n", codes: []int{405}, header: [2]string{"Allow", "GET, HEAD"}},
		{name: "OPTIONS", req: "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", codes: []int{405}, header: [2]string{"Allow", "GET, HEAD"}},
		{name: "lower-case get", req: "get / HTTP/1.0\r\n\r\n", codes: []int{405}, header: [2]string{"Allow", "GET, HEAD"}},
		{name: "unknown method", req: "BREW / HTTP/1.0\r\n\r\n", codes: []int{405}, header: [2]string{"Allow", "GET, HEAD"}},
		{name: "CONNECT", req: "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", codes: []int{405, 400}},
		{name: "unknown path", req: "GET /nope HTTP/1.0\r\n\r\n", codes: []int{404}},
		{name: "index.html", req: "GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", codes: []int{404}},
		{name: "double slash", req: "GET // HTTP/1.0\r\n\r\n", codes: []int{404}},
		{name: "metrics slash", req: "GET /metrics/ HTTP/1.0\r\n\r\n", codes: []int{404}},
		{name: "metrics without handler", req: "GET /metrics HTTP/1.0\r\n\r\n", noMet: true, codes: []int{404}},
		{name: "asterisk", req: "GET * HTTP/1.1\r\nHost: x\r\n\r\n", codes: []int{404, 400}},
		{name: "words", req: "hello there\r\n\r\n", codes: []int{400}},
		{name: "HTTP/0.9", req: "GET /\r\n\r\n", codes: []int{400}},
		{name: "bad version", req: "GET / FTP/1.0\r\n\r\n", codes: []int{400}},
		{name: "bad header line", req: "GET / HTTP/1.0\r\nno colon here\r\n\r\n", codes: []int{400}},
		{name: "bad Content-Length", req: "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", codes: []int{400}},
		{name: "NUL bytes", req: "GET /\x00 HTTP/1.0\r\n\r\n", codes: []int{400, 404}},
		{name: "TLS hello", req: "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + pad(40), codes: []int{400}},
		{name: "HTTP/2 preface", req: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", codes: []int{400, 405, 505}},
		{name: "unfinished head then EOF", req: "GET / HTTP/1.0\r\nHost: x\r\n", codes: []int{400}},
		{name: "head over the limit", req: "GET / HTTP/1.0\r\nX-Pad: " + pad(MaxRequestBytes) + "\r\n\r\n", codes: []int{431}},
		{name: "request line over the limit", req: "GET /" + pad(MaxRequestBytes) + " HTTP/1.0\r\n\r\n", codes: []int{431, 414}},
		{name: "many headers", req: manyHeaders(), codes: []int{431}},
		{name: "1 MiB without a newline", req: pad(1 << 20), codes: []int{431, 400}},
		{name: "head one byte over", req: "GET / HTTP/1.0\r\nX-Pad: " + pad(MaxRequestBytes-len("GET / HTTP/1.0\r\nX-Pad: \r\n\r\n")+1) + "\r\n\r\n", codes: []int{431}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := withMetrics
			if tt.noMet {
				path = withoutMetrics
			}
			resp := checkErrorResponse(t, ask(t, path, tt.req), tt.codes...)
			if tt.header[0] != "" {
				if got := resp.Header.Get(tt.header[0]); got != tt.header[1] {
					t.Errorf("%s: %q, want %q", tt.header[0], got, tt.header[1])
				}
			}
		})
	}
	// A head of exactly MaxRequestBytes is still served.
	req := "GET / HTTP/1.0\r\nX-Pad: " + pad(MaxRequestBytes-len("GET / HTTP/1.0\r\nX-Pad: \r\n\r\n")) + "\r\n\r\n"
	if len(req) != MaxRequestBytes {
		t.Fatalf("built a %d-byte head", len(req))
	}
	if resp, body := parseResponse(t, ask(t, withMetrics, req), "GET"); resp.StatusCode != 200 || string(body) != "{}" {
		t.Errorf("a head of exactly MaxRequestBytes got %s %q", resp.Status, body)
	}
	// And the server is still there after all that.
	if resp, body := parseResponse(t, ask(t, withMetrics, "GET / HTTP/1.0\r\n\r\n"), "GET"); resp.StatusCode != 200 || string(body) != "{}" {
		t.Errorf("after the refusals GET / got %s %q", resp.Status, body)
	}
}

// A HEAD request never gets a body, not even with an error status.
func TestHTTPHeadErrorHasNoBody(t *testing.T) {
	var fail atomic.Bool
	src := SourceFunc(func(ctx context.Context) ([]byte, error) {
		if fail.Load() {
			return nil, fmt.Errorf("no")
		}
		return []byte("{}"), nil
	})
	path := httpServer(t, &Server{Source: src})
	for _, req := range []string{"HEAD /nope HTTP/1.0\r\n\r\n", "HEAD /metrics HTTP/1.0\r\n\r\n"} {
		raw := ask(t, path, req)
		if !bytes.HasSuffix(raw, []byte("\r\n\r\n")) {
			t.Errorf("%q answered %q: a body after the head", req, raw)
		}
	}
	fail.Store(true)
	if raw := ask(t, path, "HEAD / HTTP/1.0\r\n\r\n"); !bytes.HasSuffix(raw, []byte("\r\n\r\n")) {
		t.Errorf("HEAD / with a failed dump answered %q: a body after the head", raw)
	}
}

// A request trickling in, byte by byte, within the timeout, is served.
func TestHTTPRequestInPieces(t *testing.T) {
	dump := fixture(t, fixtureJSON)
	path := httpServer(t, &Server{Source: fixed(dump), Timeout: 5 * time.Second})
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(deadline))
	for _, b := range []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n") {
		if _, err := c.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	raw, err := readAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := append(fixture(t, fixtureHeaders), dump...); !bytes.Equal(raw, want) {
		t.Errorf("got %q", clip(raw))
	}
}

// Clients that connect and say nothing, say half a request, or never read
// their answer, are dropped at the Timeout: not before, not much after.
func TestHTTPTimeouts(t *testing.T) {
	const timeout = 300 * time.Millisecond
	dump := bigJSON(2 << 20) // more than an unread Unix socket buffers
	path := httpServer(t, &Server{Source: fixed(dump), Timeout: timeout})
	tests := []struct {
		name, send string
		read       bool // read as it comes (else only after the timeout)
	}{
		{name: "idle", read: true},
		{name: "half a request line", send: "GET / HT", read: true},
		{name: "head without its end", send: "GET / HTTP/1.1\r\nHost: x\r\n", read: true},
		{name: "never reads its answer", send: "GET / HTTP/1.0\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			if tt.send != "" {
				io.WriteString(c, tt.send)
			}
			if !tt.read {
				time.Sleep(timeout + 500*time.Millisecond)
			}
			c.SetReadDeadline(time.Now().Add(deadline))
			got, err := readAll(c)
			elapsed := time.Since(start)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			if elapsed < timeout*8/10 {
				t.Errorf("dropped after %v, before the %v timeout", elapsed, timeout)
			}
			if tt.read && elapsed > timeout+time.Second {
				t.Errorf("held %v, timeout %v", elapsed, timeout)
			}
			if !tt.read {
				if len(got) >= len(dump) {
					t.Errorf("the non-reading client still got all %d bytes after the timeout: not dropped", len(got))
				}
				return
			}
			// Whatever was sent, if anything, is a 408.
			if len(got) > 0 {
				if resp, _ := parseResponse(t, got, "GET"); resp.StatusCode != http.StatusRequestTimeout {
					t.Errorf("a timed-out request got %s", resp.Status)
				}
			}
		})
	}
}

// scrapeAccept is the Accept header Prometheus 3 sends when it scrapes.
const scrapeAccept = "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=underscores;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"

// /metrics goes to a real promhttp handler, content negotiation included.
func TestHTTPMetricsPromhttp(t *testing.T) {
	reg := prometheus.NewRegistry()
	reqs := prometheus.NewCounter(prometheus.CounterOpts{Name: "workerstats_test_requests_total", Help: "Requests."})
	reqs.Add(3)
	reg.MustRegister(reqs)
	path := httpServer(t, &Server{
		Source:  fixed([]byte("{}")),
		Metrics: promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}),
	})
	get := func(t *testing.T, req string) (*http.Response, []byte) {
		t.Helper()
		method, _, _ := strings.Cut(req, " ")
		raw := ask(t, path, req)
		resp, body := parseResponse(t, raw, method)
		if resp.StatusCode != 200 {
			t.Fatalf("%s", resp.Status)
		}
		if !bytes.HasPrefix(raw, []byte("HTTP/1.0 200 OK\r\n")) {
			t.Errorf("status line of %q", clip(raw))
		}
		if got := resp.Header.Values("Connection"); len(got) != 1 || got[0] != "close" {
			t.Errorf("Connection headers %q, want one close", got)
		}
		if got := resp.Header.Values("Content-Length"); len(got) != 1 || (method == "GET" && got[0] != strconv.Itoa(len(body))) {
			t.Errorf("Content-Length %q for %d bytes", got, len(body))
		}
		return resp, body
	}
	t.Run("plain", func(t *testing.T) {
		resp, body := get(t, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Errorf("Content-Type %q, want text/plain; version=0.0.4", ct)
		}
		if !strings.Contains(string(body), "\nworkerstats_test_requests_total 3\n") {
			t.Errorf("body %q", body)
		}
	})
	t.Run("openmetrics", func(t *testing.T) {
		resp, body := get(t, "GET /metrics HTTP/1.1\r\nHost: x\r\nUser-Agent: Prometheus/3.0.0\r\nAccept: "+scrapeAccept+"\r\n\r\n")
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
			t.Errorf("Content-Type %q, want application/openmetrics-text", ct)
		}
		if !strings.HasSuffix(string(body), "# EOF\n") || !strings.Contains(string(body), "workerstats_test_requests_total 3") {
			t.Errorf("body %q is not OpenMetrics", body)
		}
		if vary := resp.Header.Values("Vary"); len(vary) == 0 {
			t.Errorf("the handler's Vary header was lost: %v", resp.Header)
		}
	})
	t.Run("gzip", func(t *testing.T) {
		resp, body := get(t, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
		if ce := resp.Header.Get("Content-Encoding"); ce != "gzip" {
			t.Fatalf("Content-Encoding %q, want gzip", ce)
		}
		zr, err := gzip.NewReader(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		plain, err := io.ReadAll(zr)
		if err != nil || !strings.Contains(string(plain), "workerstats_test_requests_total 3") {
			t.Errorf("gunzipped body %q, %v", plain, err)
		}
	})
	t.Run("HEAD", func(t *testing.T) {
		_, full := get(t, "GET /metrics HTTP/1.0\r\n\r\n")
		raw := ask(t, path, "HEAD /metrics HTTP/1.0\r\n\r\n")
		resp, body := parseResponse(t, raw, "HEAD")
		if resp.StatusCode != 200 || len(body) != 0 || !bytes.HasSuffix(raw, []byte("\r\n\r\n")) {
			t.Errorf("HEAD /metrics got %s and a body %q", resp.Status, raw)
		}
		if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(full)) {
			t.Errorf("HEAD Content-Length %q, GET body %d bytes", cl, len(full))
		}
	})
	t.Run("scraped by http.Client", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://stats/metrics", nil)
		req.Header.Set("Accept", scrapeAccept)
		resp, err := unixHTTPClient(path).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/openmetrics-text") || !strings.HasSuffix(string(body), "# EOF\n") {
			t.Errorf("got %s %v %q", resp.Status, resp.Header, body)
		}
	})
}

// The metrics handler's status and headers come through; the server owns
// Connection and Content-Length.
func TestHTTPMetricsStatusAndHeaders(t *testing.T) {
	type seen struct {
		method, path, accept string
		ctx                  bool
	}
	got := make(chan seen, 16)
	tests := []struct {
		name    string
		handler http.HandlerFunc
		status  int
		headers map[string][]string
		body    string
	}{
		{
			name: "503 with headers",
			handler: func(w http.ResponseWriter, r *http.Request) {
				got <- seen{r.Method, r.URL.Path, r.Header.Get("Accept"), r.Context() != nil}
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.Header().Set("Retry-After", "5")
				w.Header().Add("X-Multi", "one")
				w.Header().Add("X-Multi", "two")
				w.WriteHeader(http.StatusServiceUnavailable)
				io.WriteString(w, "collecting\n")
			},
			status:  503,
			headers: map[string][]string{"Content-Type": {"text/plain; charset=utf-8"}, "Retry-After": {"5"}, "X-Multi": {"one", "two"}},
			body:    "collecting\n",
		},
		{
			name:    "implicit 200",
			handler: func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up 1\n") },
			status:  200,
			body:    "up 1\n",
		},
		{
			name:    "nothing written",
			handler: func(w http.ResponseWriter, r *http.Request) {},
			status:  200,
			headers: map[string][]string{"Content-Length": {"0"}},
		},
		{
			name: "second WriteHeader ignored",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusTeapot)
				w.WriteHeader(http.StatusOK)
				io.WriteString(w, "short and stout\n")
			},
			status: 418,
			body:   "short and stout\n",
		},
		{
			name: "handler's Connection and Content-Length overridden",
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Connection", "keep-alive")
				w.Header().Set("Content-Length", "999")
				io.WriteString(w, "x 1\n")
			},
			status:  200,
			headers: map[string][]string{"Connection": {"close"}, "Content-Length": {"4"}},
			body:    "x 1\n",
		},
		{
			name: "500",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "gather failed", http.StatusInternalServerError)
			},
			status:  500,
			headers: map[string][]string{"X-Content-Type-Options": {"nosniff"}},
			body:    "gather failed\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := httpServer(t, &Server{Source: fixed([]byte("{}")), Metrics: tt.handler})
			raw := ask(t, path, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n")
			resp, body := parseResponse(t, raw, "GET")
			if resp.StatusCode != tt.status || string(body) != tt.body {
				t.Errorf("got %s %q, want %d %q", resp.Status, body, tt.status, tt.body)
			}
			if !bytes.HasPrefix(raw, []byte(fmt.Sprintf("HTTP/1.0 %d %s\r\n", tt.status, http.StatusText(tt.status)))) {
				t.Errorf("status line of %q", clip(raw))
			}
			for k, want := range tt.headers {
				if got := resp.Header.Values(k); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s: %q, want %q", k, got, want)
				}
			}
			if got := resp.Header.Values("Connection"); len(got) != 1 || got[0] != "close" {
				t.Errorf("Connection %q, want one close", got)
			}
			if got := resp.Header.Values("Content-Length"); len(got) != 1 || got[0] != strconv.Itoa(len(body)) {
				t.Errorf("Content-Length %q for %d bytes", got, len(body))
			}
		})
	}
	select {
	case s := <-got:
		if s != (seen{"GET", "/metrics", "text/plain", true}) {
			t.Errorf("the handler saw %+v", s)
		}
	default:
		t.Error("the handler never ran")
	}
}

// Read takes http:// URLs; a status other than 200 is an error.
func TestReadHTTPURL(t *testing.T) {
	dump := fixture(t, fixtureJSON)
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up 1\n") })
	ln := listen(t, "127.0.0.1:0", ListenOptions{})
	startServer(t, &Server{Source: fixed(dump), HTTP: true, Metrics: metrics}, ln)
	base := "http://" + target(ln)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for u, want := range map[string]string{base + "/": string(dump), base: string(dump), base + "/metrics": "up 1\n"} {
		if b, err := Read(ctx, u); err != nil || string(b) != want {
			t.Errorf("Read(%s) = %q, %v", u, clip(b), err)
		}
	}
	for _, u := range []string{base + "/nope", base + "/metrics/"} {
		b, err := Read(ctx, u)
		if err == nil || !strings.Contains(err.Error(), "404") || !strings.Contains(err.Error(), u) {
			t.Errorf("Read(%s) = %q, %v; want an error naming the URL and the 404", u, clip(b), err)
		}
	}
}

var statusLine = regexp.MustCompile(`^HTTP/1\.0 ([1-5][0-9][0-9]) [^\r\n]*\r\n`)

// requestOf is what the request line of raw asks for, read independently
// of net/http: the method and the path of the target.
func requestOf(raw []byte) (method, path string, ok bool) {
	line, _, found := bytes.Cut(raw, []byte("\n"))
	if !found {
		return "", "", false
	}
	line = bytes.TrimSuffix(line, []byte("\r"))
	m, rest, found := strings.Cut(string(line), " ")
	if !found {
		return "", "", false
	}
	tgt, _, found := strings.Cut(rest, " ")
	if !found {
		return "", "", false
	}
	u, err := url.ParseRequestURI(tgt)
	if err != nil {
		return "", "", false
	}
	return m, u.Path, true
}

// FuzzServeHTTP feeds arbitrary bytes as the request to two Servers in
// HTTP mode on Unix sockets, one with a Source and one with a Catalog,
// then half-closes. Neither may panic (a panic in a connection's goroutine
// kills the fuzzing process); each must close or answer a well-formed
// HTTP/1.0 response with a known status, and may answer 200 only for GET
// or HEAD of a path it serves: /, a catalog's /pools/ID, /metrics.
func FuzzServeHTTP(f *testing.F) {
	dump := fixture(f, fixtureJSON)
	head := fixture(f, fixtureHeaders)
	metricsBody := "# TYPE up gauge\nup 1\n"
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		io.WriteString(w, metricsBody)
	})
	list := []byte(`[{"id":"uwsgi-0a1b2c3d","path":"/pools/uwsgi-0a1b2c3d"}]`)
	servers := []struct {
		path   string
		routes map[string][]byte // the dumps served, by path
	}{
		{httpServer(f, &Server{Source: fixed(dump), Metrics: metrics, Timeout: 200 * time.Millisecond}), map[string][]byte{"/": dump}},
		{httpServer(f, &Server{Catalog: &fakeCatalog{list: list, pools: map[string][]byte{"uwsgi-0a1b2c3d": dump}}, Metrics: metrics, Timeout: 200 * time.Millisecond}),
			map[string][]byte{"/": list, "/pools/uwsgi-0a1b2c3d": dump}},
	}
	for _, s := range []string{
		"GET / HTTP/1.0\r\n\r\n",
		"HEAD / HTTP/1.0\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: " + scrapeAccept + "\r\n\r\n",
		"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://x/metrics?a=b HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
		"GET /nope HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\nX: " + strings.Repeat("a", MaxRequestBytes) + "\r\n\r\n",
		"\x16\x03\x01\x00\xa5\x01\x00",
		"GET /\r\n\r\n",
		"",
		"\r\n",
		"\r\nGET / HTTP/1.0\r\n\r\n",
		"GET  / HTTP/1.0\r\n\r\n",
		"GET / HTTP/1.0 \r\n\r\n",
		"GET /%2e%2e/ HTTP/1.0\r\n\r\n",
		"GET /metrics%00 HTTP/1.0\r\n\r\n",
		"GET /pools/uwsgi-0a1b2c3d HTTP/1.0\r\n\r\n",
		"HEAD /pools/uwsgi-0a1b2c3d HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET http://x/pools/uwsgi-0a1b2c3d?x=1 HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /pools/%75wsgi-0a1b2c3d HTTP/1.0\r\n\r\n",
		"GET /pools/uwsgi-0a1b2c3d/ HTTP/1.0\r\n\r\n",
		"GET /pools/uwsgi-0a1b2c3d%2f HTTP/1.0\r\n\r\n",
		"GET /pools/ HTTP/1.0\r\n\r\n",
		"GET /pools HTTP/1.0\r\n\r\n",
		"GET /pools/nope HTTP/1.0\r\n\r\n",
		"GET /pools/../metrics HTTP/1.0\r\n\r\n",
		"DELETE /pools/uwsgi-0a1b2c3d HTTP/1.0\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		for _, s := range servers {
			checkFuzzAnswer(t, s.path, req, head, s.routes, metricsBody)
		}
	})
}

// checkFuzzAnswer sends req to the server on the Unix socket at path and
// checks its answer: routes are the dumps it serves by path, each with
// uWSGI's head; /metrics answers metricsBody.
func checkFuzzAnswer(t *testing.T, path string, req, head []byte, routes map[string][]byte, metricsBody string) {
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	go func() {
		c.Write(req)
		c.(*net.UnixConn).CloseWrite()
	}()
	raw, err := readAll(c)
	if err != nil {
		t.Fatalf("the server neither answered nor closed: %v (got %q)", err, clip(raw))
	}
	if len(raw) == 0 {
		return // closed without a word: allowed
	}
	m := statusLine.FindSubmatch(raw)
	if m == nil {
		t.Fatalf("answer does not start with an HTTP/1.0 status line: %q", clip(raw))
	}
	code, _ := strconv.Atoi(string(m[1]))
	method, p, parsed := requestOf(req)
	// A HEAD answer has no body; a request the server could not parse
	// (so it cannot know it was HEAD) may get one.
	parseAs := "GET"
	if method == "HEAD" && (code == 200 || bytes.HasSuffix(raw, []byte("\r\n\r\n"))) {
		parseAs = "HEAD"
	}
	resp, body := parseResponse(t, raw, parseAs)
	switch code {
	case 200:
		dump, isDump := routes[p]
		if !parsed || (method != "GET" && method != "HEAD") || (!isDump && p != "/metrics") {
			t.Fatalf("200 for a request that is not GET or HEAD of a path served: %q", clip(req))
		}
		switch {
		case isDump && method == "GET":
			if !bytes.Equal(raw, append(append([]byte{}, head...), dump...)) {
				t.Fatalf("GET %s answered %q", p, clip(raw))
			}
		case isDump:
			if !bytes.Equal(raw, head) {
				t.Fatalf("HEAD %s answered %q", p, clip(raw))
			}
		case method == "GET":
			if string(body) != metricsBody || resp.Header.Get("Content-Length") != strconv.Itoa(len(metricsBody)) {
				t.Fatalf("GET /metrics answered %q", clip(raw))
			}
		default:
			if len(body) != 0 || resp.Header.Get("Content-Length") != strconv.Itoa(len(metricsBody)) {
				t.Fatalf("HEAD /metrics answered %q", clip(raw))
			}
		}
	case 400, 404, 405, 408, 431:
		if code == 405 && resp.Header.Get("Allow") != "GET, HEAD" {
			t.Fatalf("405 without Allow: %q", clip(raw))
		}
		cl, err := strconv.Atoi(resp.Header.Get("Content-Length"))
		if err != nil || (parseAs == "GET" && cl != len(body)) || (parseAs == "HEAD" && len(body) != 0) || resp.Header.Get("Connection") != "close" {
			t.Fatalf("error answer with bad headers: %q", clip(raw))
		}
	default:
		t.Fatalf("status %d for %q", code, clip(req))
	}
}
