package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/observer"
)

// TestListenQueueErrorsCountDrops: a pool of one slow worker behind an
// accept queue of one, and 8 clients at once. The connections the full
// queue refused (their handshake's last ACK dropped; the clients' SYNs
// are answered again later) are the pool's listen_queue_errors, as the
// kernel counts them for the host (TcpExt ListenDrops), and on /metrics.
func TestListenQueueErrorsCountDrops(t *testing.T) {
	before := listenDrops(t)
	p := startGunicorn(t, 1, "--backlog", "1")
	d := startDaemon(t, "--pid", strconv.Itoa(p.pid), "--stats", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--stats-http")
	parallel(t, 8, 8, func(i int) error {
		_, err := getOnce(p.addr, "/sleep/50")
		return err
	})
	drops := listenDrops(t) - before
	st := waitStats(t, d.addr, 5*time.Second, "listen_queue_errors to be the host's drops", func(st *observer.Stats) error {
		if st.ListenQueueErrors != drops || drops == 0 {
			return fmt.Errorf("listen_queue_errors %d, the host dropped %d", st.ListenQueueErrors, drops)
		}
		return nil
	})
	body := metricsText(t, d)
	if want := fmt.Sprintf("workerstats_listen_queue_errors_total %d\n", drops); !strings.Contains(body, want) {
		t.Errorf("/metrics lacks %q", want)
	}
	t.Logf("8 clients at once on an accept queue of 1: listen_queue_errors %d (host's ListenDrops %+d)", st.ListenQueueErrors, drops)
}

// listenDrops reads TcpExt's ListenDrops from /proc/net/netstat.
func listenDrops(t *testing.T) uint64 {
	t.Helper()
	f, err := os.Open("/proc/net/netstat")
	if err != nil {
		testutil.SkipOrFail(t, "no /proc/net/netstat: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		names := strings.Fields(sc.Text())
		if !sc.Scan() {
			break
		}
		values := strings.Fields(sc.Text())
		if len(names) == 0 || names[0] != "TcpExt:" {
			continue
		}
		for i, n := range names {
			if n == "ListenDrops" && i < len(values) {
				v, err := strconv.ParseUint(values[i], 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
	}
	t.Fatal("no TcpExt ListenDrops in /proc/net/netstat")
	return 0
}
