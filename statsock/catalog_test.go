package statsock

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// A Catalog's routes: its list at /, each pool's dump at /pools/ID with
// uWSGI's exact head, 404 for an unknown pool, /metrics as ever.

// fakeCatalog serves a fixed list and fixed dumps by pool ID.
type fakeCatalog struct {
	list  []byte
	pools map[string][]byte
}

func (c *fakeCatalog) List(context.Context) ([]byte, error) { return c.list, nil }

func (c *fakeCatalog) Pool(id string) (Source, bool) {
	b, ok := c.pools[id]
	if !ok {
		return nil, false
	}
	return fixed(b), true
}

func testCatalog(t testing.TB) (*fakeCatalog, []byte) {
	dump := fixture(t, fixtureJSON)
	return &fakeCatalog{
		list:  []byte(`[{"id":"uwsgi-0a1b2c3d","path":"/pools/uwsgi-0a1b2c3d"},{"id":"nginx-4e5f6a7b","path":"/pools/nginx-4e5f6a7b"}]`),
		pools: map[string][]byte{"uwsgi-0a1b2c3d": dump, "nginx-4e5f6a7b": []byte(`{"workers":[]}`)},
	}, dump
}

func TestCatalogRoutes(t *testing.T) {
	head := fixture(t, fixtureHeaders)
	cat, dump := testCatalog(t)
	metrics := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "up 1\n") })
	path := httpServer(t, &Server{Catalog: cat, Metrics: metrics})
	for req, want := range map[string][]byte{
		"GET / HTTP/1.0\r\n\r\n":                                             append(append([]byte{}, head...), cat.list...),
		"GET /pools/uwsgi-0a1b2c3d HTTP/1.0\r\n\r\n":                         append(append([]byte{}, head...), dump...),
		"GET /pools/nginx-4e5f6a7b?x=1 HTTP/1.1\r\nHost: x\r\n\r\n":          append(append([]byte{}, head...), `{"workers":[]}`...),
		"GET http://x:1717/pools/uwsgi-0a1b2c3d HTTP/1.1\r\nHost: x\r\n\r\n": append(append([]byte{}, head...), dump...),
		"HEAD /pools/uwsgi-0a1b2c3d HTTP/1.0\r\n\r\n":                        head,
	} {
		if got := ask(t, path, req); !bytes.Equal(got, want) {
			t.Errorf("%q answered\n %q\nwant\n %q", req, clip(got), clip(want))
		}
	}
	for _, p := range []string{"/pools/nope", "/pools/", "/pools", "/pools/uwsgi-0a1b2c3d/", "/pools/uwsgi-0a1b2c3d/x", "/uwsgi-0a1b2c3d", "/pools/uwsgi-0a1b2c3d%2fx"} {
		checkErrorResponse(t, ask(t, path, "GET "+p+" HTTP/1.0\r\n\r\n"), http.StatusNotFound)
	}
	resp := checkErrorResponse(t, ask(t, path, "POST /pools/uwsgi-0a1b2c3d HTTP/1.0\r\n\r\n"), http.StatusMethodNotAllowed)
	if resp.Header.Get("Allow") != "GET, HEAD" {
		t.Errorf("405 without Allow: %v", resp.Header)
	}
	if got := ask(t, path, "GET /metrics HTTP/1.0\r\n\r\n"); !bytes.HasSuffix(got, []byte("\r\n\r\nup 1\n")) {
		t.Errorf("/metrics answered %q", clip(got))
	}
	// Without a Catalog, no pool paths.
	plain := httpServer(t, &Server{Source: fixed(dump)})
	checkErrorResponse(t, ask(t, plain, "GET /pools/uwsgi-0a1b2c3d HTTP/1.0\r\n\r\n"), http.StatusNotFound)
}

// Read, and so `workerstats read` and top, take a pool's URL.
func TestCatalogReadPoolURL(t *testing.T) {
	cat, dump := testCatalog(t)
	ln := listen(t, "127.0.0.1:0", ListenOptions{})
	startServer(t, &Server{Catalog: cat, HTTP: true}, ln)
	base := "http://" + target(ln)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	for u, want := range map[string][]byte{base + "/": cat.list, base: cat.list, base + "/pools/uwsgi-0a1b2c3d": dump} {
		if b, err := Read(ctx, u); err != nil || !bytes.Equal(b, want) {
			t.Errorf("Read(%s) = %q, %v", u, clip(b), err)
		}
	}
	if _, err := Read(ctx, base+"/pools/gone"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("Read of a pool gone: %v, want a 404", err)
	}
}

// In raw mode a Catalog's list is written.
func TestCatalogRawWritesList(t *testing.T) {
	cat, _ := testCatalog(t)
	ln := listen(t, sockPath(t), ListenOptions{})
	startServer(t, &Server{Catalog: cat}, ln)
	if got := read(t, target(ln)); !bytes.Equal(got, cat.list) {
		t.Errorf("raw mode wrote %q, want the list", clip(got))
	}
}
