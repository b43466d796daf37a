package statsock

// Every --stats address form, in raw and HTTP mode, read back with Read, an
// http:// URL, a stock HTTP client or a hand-written HTTP request.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
)

// ipv6Loopback reports whether [::1] can be listened on here.
func ipv6Loopback() (bool, error) {
	ln, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		return false, err
	}
	ln.Close()
	return true, nil
}

func randomName() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func TestEveryAddressForm(t *testing.T) {
	dump := fixture(t, fixtureJSON)
	head := fixture(t, fixtureHeaders)
	v6, v6err := ipv6Loopback()
	forms := []struct {
		name     string
		addr     func(t *testing.T) string
		wildcard bool
		needV6   bool
	}{
		{name: "IPv4 loopback", addr: func(*testing.T) string { return "127.0.0.1:0" }},
		{name: "IPv6 loopback", addr: func(*testing.T) string { return "[::1]:0" }, needV6: true},
		{name: "all interfaces", addr: func(*testing.T) string { return ":0" }, wildcard: true},
		{name: "Unix path", addr: func(t *testing.T) string { return sockPath(t) }},
		{name: "abstract", addr: func(*testing.T) string { return "@workerstats-test-" + randomName() }},
	}
	for _, form := range forms {
		for _, httpMode := range []bool{false, true} {
			mode := "raw"
			if httpMode {
				mode = "http"
			}
			t.Run(form.name+"/"+mode, func(t *testing.T) {
				if form.needV6 && !v6 {
					testutil.SkipOrFail(t, "IPv6 loopback unavailable here: %v", v6err)
				}
				addr := form.addr(t)
				a := mustParse(t, addr)
				if a.Wildcard != form.wildcard {
					t.Errorf("ParseAddr(%q).Wildcard = %v", addr, a.Wildcard)
				}
				ln, _ := serve(t, addr, fixed(dump), httpMode)
				// The targets a client may use: the listener's own address
				// and, for all interfaces, the bare ":port" form and each
				// loopback.
				targets := []string{target(ln)}
				if a.Network == "tcp" {
					_, port, _ := net.SplitHostPort(target(ln))
					if form.wildcard {
						targets = []string{":" + port, "127.0.0.1:" + port}
						if v6 {
							targets = append(targets, "[::1]:"+port)
						}
					}
				}
				if tcp, ok := ln.Addr().(*net.TCPAddr); ok && tcp.IP.IsUnspecified() != form.wildcard {
					t.Errorf("listening on %q bound %v", addr, tcp)
				}
				if a.Network == "unix" && target(ln) != addr {
					t.Errorf("listening on %q, clients would dial %q", addr, target(ln))
				}
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				for _, tgt := range targets {
					tgtAddr := mustParse(t, tgt)
					if !httpMode {
						b, err := Read(ctx, tgt)
						if err != nil || !bytes.Equal(b, dump) {
							t.Errorf("Read(%s) = %d bytes, %v; want the %d of the dump", tgt, len(b), err, len(dump))
						}
						continue
					}
					// By hand: uWSGI's exact bytes.
					raw := exchange(t, tgtAddr.Network, tgtAddr.Address, []byte("GET / HTTP/1.1\r\nHost: stats\r\n\r\n"), false)
					if want := append(append([]byte{}, head...), dump...); !bytes.Equal(raw, want) {
						t.Errorf("GET / on %s answered %q", tgt, clip(raw))
					}
					if tgtAddr.Network == "tcp" {
						u := "http://" + tgt + "/"
						if tgtAddr.Wildcard {
							continue // ":port" is no URL host
						}
						b, err := Read(ctx, u)
						if err != nil || !bytes.Equal(b, dump) {
							t.Errorf("Read(%s) = %d bytes, %v", u, len(b), err)
						}
						if _, err := Read(ctx, "http://"+tgt+"/nope"); err == nil {
							t.Errorf("Read of a 404 on %s succeeded", tgt)
						}
						continue
					}
					// A stock HTTP client dialling the Unix socket.
					resp, err := unixHTTPClient(tgtAddr.Address).Get("http://stats/")
					if err != nil {
						t.Errorf("http.Client on %s: %v", tgt, err)
						continue
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK || !bytes.Equal(b, dump) {
						t.Errorf("http.Client on %s: %s, %d bytes", tgt, resp.Status, len(b))
					}
				}
			})
		}
	}
}
