package forkpool

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// HeldConn is a client connection kept open after its request.
type HeldConn struct {
	net.Conn
	r *bufio.Reader
}

// HoldConns opens n connections to the pool, spread over the source
// addresses 127.0.0.2 to 127.0.0.6 (five ranges of ephemeral ports), and
// has one request of size bytes answered on each, counted in ts. The
// connections stay open: CloseAll closes them.
func (p *Pool) HoldConns(n, size int, ts *Tallies) ([]HeldConn, error) {
	conns := make([]HeldConn, n)
	req := fmt.Sprintf("%d 0 0\n", size)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	const dialers = 32
	for d := range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := d; i < n; i += dialers {
				if err := p.holdOne(&conns[i], i, req, ts); err != nil {
					select {
					case errs <- fmt.Errorf("connection %d: %w", i, err):
					default:
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		CloseAll(conns)
		return nil, err
	default:
	}
	return conns, nil
}

func (p *Pool) holdOne(h *HeldConn, i int, req string, ts *Tallies) error {
	dialer := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%5))}, Control: noPortAtBind}
	c, err := dialer.Dial("tcp", p.Addr)
	if err != nil {
		return err
	}
	*h = HeldConn{c, bufio.NewReader(c)}
	if _, err := io.WriteString(c, req); err != nil {
		return err
	}
	return ReadAnswer(h.r, ts, len(req))
}

// noPortAtBind leaves the choice of a source port to connect, which
// looks for a free one far faster than bind does with thousands in use.
func noPortAtBind(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	return errors.Join(err, serr)
}

// CloseAll closes the connections HoldConns opened.
func CloseAll(conns []HeldConn) {
	for _, c := range conns {
		if c.Conn != nil {
			c.Close()
		}
	}
}

const (
	holdAddrEnv = "WORKERSTATS_TEST_HOLD_ADDR"
	holdNEnv    = "WORKERSTATS_TEST_HOLD_N"
	holdSizeEnv = "WORKERSTATS_TEST_HOLD_SIZE"
)

// holder is a holding process: HoldConns, then one line per worker pid
// ("PID REQUESTS TX RX"), then "HELD"; it keeps the connections until its
// standard input closes.
func holder() {
	n, _ := strconv.Atoi(os.Getenv(holdNEnv))
	size, _ := strconv.Atoi(os.Getenv(holdSizeEnv))
	var ts Tallies
	p := &Pool{Addr: os.Getenv(holdAddrEnv)}
	conns, err := p.HoldConns(n, size, &ts)
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	for pid, t := range ts.ByPID() {
		fmt.Println(pid, t.Requests, t.TX, t.RX)
	}
	fmt.Println("HELD")
	io.Copy(io.Discard, os.Stdin)
	CloseAll(conns)
}

// Hold has procs processes hold n connections to the pool between them,
// as HoldConns does, for more connections than one process may have open
// files. It returns once every connection is answered, with the answers
// counted in ts; the connections close when t ends.
func (p *Pool) Hold(t testing.TB, procs, n, size int, ts *Tallies) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, procs)
	for i := range procs {
		share := n / procs
		if i == 0 {
			share += n % procs
		}
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), roleEnv+"=holder", holdAddrEnv+"="+p.Addr,
			fmt.Sprintf("%s=%d", holdNEnv, share), fmt.Sprintf("%s=%d", holdSizeEnv, size))
		cmd.Stderr = os.Stderr
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { in.Close(); cmd.Wait() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- readHeld(out, ts)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("holding connections: %v", err)
		}
	}
}

// readHeld adds a holder's tallies to ts, up to its "HELD".
func readHeld(out io.Reader, ts *Tallies) error {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		if line == "HELD" {
			return nil
		}
		var pid int
		var t Tally
		if _, err := fmt.Sscan(line, &pid, &t.Requests, &t.TX, &t.RX); err != nil {
			return fmt.Errorf("holder said %q", strings.TrimSpace(line))
		}
		ts.addTally(pid, t)
	}
	return fmt.Errorf("holder ended before holding its connections: %v", sc.Err())
}
