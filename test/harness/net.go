package harness

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"
)

// FreePort returns a TCP port free on 127.0.0.1, never one it returned
// before in this test binary.
func FreePort(t testing.TB) int {
	t.Helper()
	given.mu.Lock()
	defer given.mu.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		// The kernel may hand a port it just freed out again: two calls
		// for one server (its app and its stats socket) must differ.
		if !given.ports[port] {
			given.ports[port] = true
			return port
		}
	}
}

// given is every port FreePort has returned in this test binary.
var given = struct {
	mu    sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreeAddr is 127.0.0.1:FreePort(t).
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}

// DialFunc connects to addr on network: net.Dial, or a Container's Dial
// from inside its network namespace.
type DialFunc func(network, addr string) (net.Conn, error)

// IdleConn connects to addr and closes the connection without sending a
// byte; slow holds it open 5 ms first, like a slow health checker.
func IdleConn(network, addr string, slow bool) error {
	return IdleConnWith(nil, network, addr, slow)
}

// IdleConnWith is IdleConn connecting with dial (net.Dial when nil).
func IdleConnWith(dial DialFunc, network, addr string, slow bool) error {
	if dial == nil {
		dial = net.Dial
	}
	c, err := dial(network, addr)
	if err != nil {
		return fmt.Errorf("idle connect: %w", err)
	}
	if slow {
		time.Sleep(5 * time.Millisecond)
	}
	return c.Close()
}

// CountingConn counts every byte read from the connection.
type CountingConn struct {
	net.Conn
	N int64
}

// Read reads from the connection and counts what it read in N.
func (c *CountingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.N += int64(n)
	return n, err
}
