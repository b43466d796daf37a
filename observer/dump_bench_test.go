package observer

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
)

// dumpWorkers is the pool size of BenchmarkDump1024Workers.
const dumpWorkers = 1024

// BenchmarkDump1024Workers measures what one stats dump of a 1,024-worker
// pool costs: Pool.Snapshot rebuilt from the kernel's counters every time
// (MaxAge 0; a fake kernel, a procfs fixture tree whose per-worker memory
// figures are real file reads), MarshalStats in uWSGI's layout, and the
// bytes written to a loopback TCP connection whose other end reads and
// discards them. The goal is under 2 ms per dump.
//
// "procfs" is the fixture alone: the master has no fd table there, so the
// listening sockets are not looked up. "sock_diag" gives the master and
// its first worker an fd table holding this process's own loopback
// listener, so each dump also runs the real sock_diag lookups of
// ListeningSockets, whose cost grows with every TCP and Unix socket on the
// host (the figure depends on the machine's socket count, reported as
// "host-tcp-sockets").
func BenchmarkDump1024Workers(b *testing.B) {
	for _, withSockets := range []bool{false, true} {
		name := "procfs"
		if withSockets {
			name = "sock_diag"
		}
		b.Run(name, func(b *testing.B) { benchDump(b, withSockets) })
	}
}

func benchDump(b *testing.B, withSockets bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	received := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			received <- -1
			return
		}
		defer c.Close()
		// A client reading big: io.Discard's own ReadFrom would read
		// 8 KiB at a time, and time its syscalls as the dump's.
		var n int64
		buf := make([]byte, 1<<20)
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		received <- n
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	var listenerInode uint64
	if withSockets {
		listenerInode = socketInodeOf(b, ln.(*net.TCPListener))
	}
	p := dumpPool(b, dumpWorkers, listenerInode)
	ctx := context.Background()

	// One dump outside the timing: its shape, and its size.
	st, err := p.Snapshot(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if len(st.Workers) != dumpWorkers || st.Load == 0 || st.Workers[dumpWorkers-1].RSS == 0 {
		b.Fatalf("dump has %d workers, load %d, last worker's rss %d", len(st.Workers), st.Load, st.Workers[dumpWorkers-1].RSS)
	}
	if withSockets && (len(st.Sockets) != 1 || st.Sockets[0].Name != ln.Addr().String()) {
		b.Fatalf("sockets = %+v, want the benchmark's listener %s", st.Sockets, ln.Addr())
	}
	first, err := MarshalStats(st, false)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Write(first); err != nil {
		b.Fatal(err)
	}
	sent := int64(len(first))

	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		st, err := p.Snapshot(ctx)
		if err != nil {
			b.Fatal(err)
		}
		buf, err := MarshalStats(st, false)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := conn.Write(buf); err != nil {
			b.Fatal(err)
		}
		sent += int64(len(buf))
	}
	// The last dump is sent once the reader has it all.
	conn.(*net.TCPConn).CloseWrite()
	got := <-received
	b.StopTimer()
	if got != sent {
		b.Fatalf("reader got %d bytes, %d were sent", got, sent)
	}
	b.ReportMetric(float64(len(first)), "dump-bytes")
	perDump := b.Elapsed() / time.Duration(b.N)
	what := "from procfs"
	if withSockets {
		b.ReportMetric(float64(hostTCPSockets()), "host-tcp-sockets")
		what = "with its sockets from sock_diag"
	}
	send := sendOnly(b, first)
	b.ReportMetric(float64(send.Microseconds())/1000, "send-only-ms")
	testutil.BenchRow(b, fmt.Sprintf("dump of %d workers, %s, sent over loopback", dumpWorkers, what), "< 2 ms",
		fmt.Sprintf("%.2f ms (%d bytes; sending them alone takes %.2f ms here)",
			float64(perDump.Microseconds())/1000, len(first), float64(send.Microseconds())/1000),
		perDump < 2*time.Millisecond)
}

// sendOnly is what sending dump's bytes over loopback to a reader costs by
// itself, per dump: the floor under the dump benchmark on this machine.
func sendOnly(b *testing.B, dump []byte) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	const n = 200
	start := time.Now()
	for range n {
		if _, err := conn.Write(dump); err != nil {
			b.Fatal(err)
		}
	}
	conn.(*net.TCPConn).CloseWrite()
	<-done
	conn.Close()
	return time.Since(start) / n
}

// dumpPool starts a Pool over a fake kernel counting n live workers (every
// 8th busy) of a master in a procfs fixture tree. With listenerInode set,
// the master and its first worker hold that socket.
func dumpPool(b *testing.B, n int, listenerInode uint64) *Pool {
	b.Helper()
	const master = 100000
	root := b.TempDir()
	writeBenchStat(b, root)
	kids := make([]int, n)
	for i := range kids {
		kids[i] = master + 1 + i
	}
	addBenchProc(b, root, fakeProc{pid: master, ppid: 1, comm: "uwsgi (master)", startTicks: 900,
		rssPages: 2000, vszPages: 30000, uid: 33, gid: 33, cwd: "/srv/app",
		tasks: map[int][]int{master: kids}}, listenerInode)
	for i, pid := range kids {
		ino := uint64(0)
		if i == 0 {
			ino = listenerInode
		}
		addBenchProc(b, root, fakeProc{pid: pid, ppid: master, comm: "uwsgi (worker)", startTicks: 1000 + uint64(i),
			rssPages: 3000 + uint64(i), vszPages: 40000 + uint64(i), uid: 33, gid: 33}, ino)
	}
	k := newFakeKernel()
	p := &Pool{Target: Target{PID: master}, Proc: Procfs{Root: root}, Kernel: k, Log: testutil.NewLog(b).Logger, MaxAge: 0}
	if err := p.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	for i, pid := range kids {
		r := uint64(1000 + 37*i)
		c := Counters{PID: pid, Master: master, Start: TicksToNs(1000 + uint64(i)),
			Accepts: r + 1, Requests: r, Closes: r, RX: r * 180, TX: r * 16543,
			RunNs: r * 812_345, AvgRTNs: 734_567 + uint64(i)}
		if i%8 == 0 {
			c.InProgress = 1
		}
		k.set(c)
	}
	return p
}

// writeBenchStat writes <root>/stat as the kernel formats it.
func writeBenchStat(b *testing.B, root string) {
	b.Helper()
	writeBenchFile(b, filepath.Join(root, "stat"), "cpu  4946 0 2771 96671 267 0 65 17 0 0\n"+
		"intr 1043356 9 0 0 0\nctxt 2013452\nbtime "+strconv.Itoa(fixtureBtime)+"\n"+
		"processes 6040\nprocs_running 1\nprocs_blocked 0\n")
	writeBenchFile(b, filepath.Join(root, "uptime"), "350.51 690.12\n")
}

// addBenchProc is addProc (procfs_test.go) for a benchmark; with inode set,
// the process's fd 3 is that socket.
func addBenchProc(b *testing.B, root string, p fakeProc, inode uint64) {
	b.Helper()
	dir := filepath.Join(root, strconv.Itoa(p.pid))
	writeBenchFile(b, filepath.Join(dir, "stat"), statLine(p))
	writeBenchFile(b, filepath.Join(dir, "statm"), statmText(p))
	writeBenchFile(b, filepath.Join(dir, "status"), statusText(p))
	tasks := p.tasks
	if len(tasks) == 0 {
		tasks = map[int][]int{p.pid: nil}
	}
	for tid, kids := range tasks {
		var s strings.Builder
		for _, k := range kids {
			s.WriteString(strconv.Itoa(k) + " ")
		}
		writeBenchFile(b, filepath.Join(dir, "task", strconv.Itoa(tid), "children"), s.String())
	}
	if p.cwd != "" {
		if err := os.Symlink(p.cwd, filepath.Join(dir, "cwd")); err != nil {
			b.Fatal(err)
		}
	}
	if inode != 0 {
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			b.Fatal(err)
		}
		for fd, target := range map[string]string{"0": "/dev/null", "3": fmt.Sprintf("socket:[%d]", inode)} {
			if err := os.Symlink(target, filepath.Join(dir, "fd", fd)); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func writeBenchFile(b *testing.B, path, s string) {
	b.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		b.Fatal(err)
	}
}

// socketInodeOf returns the inode of a listener's socket.
func socketInodeOf(b *testing.B, ln *net.TCPListener) uint64 {
	b.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var st syscall.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.Fstat(int(fd), &st) }); err != nil {
		b.Fatal(err)
	}
	if serr != nil {
		b.Fatal(serr)
	}
	return st.Ino
}

// hostTCPSockets counts the TCP sockets of this network namespace, every
// state: what a sock_diag TCP dump walks.
func hostTCPSockets() int {
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		raw, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		n += max(0, strings.Count(string(raw), "\n")-1)
	}
	return n
}
