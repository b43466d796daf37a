package ebpfkernel

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A pool of the tests' own around listeners a test makes (in another
// network namespace, say): the test binary re-executed as a master that
// holds the listeners it is handed (fds 3 on) and forks, when asked,
// workers that hold them too (in a PID namespace of their own if asked),
// accept on some and close others on SIGUSR2. forkpool's pool listens on
// one socket of its own making.

const (
	heldRoleEnv   = "WORKERSTATS_TEST_HELD_ROLE"
	heldFilesEnv  = "WORKERSTATS_TEST_HELD_FILES"  // how many fds from 3 the master holds
	heldAcceptEnv = "WORKERSTATS_TEST_HELD_ACCEPT" // the fds a worker accepts on, comma-separated
	heldCloseEnv  = "WORKERSTATS_TEST_HELD_CLOSE"  // the fds a worker closes on SIGUSR2
)

// runHeld runs the held pool's master or worker when the test binary was
// started as one, and exits; in the test process itself it returns.
func runHeld() {
	switch os.Getenv(heldRoleEnv) {
	case "master":
		heldMaster()
	case "worker":
		heldWorker()
	default:
		return
	}
	os.Exit(0)
}

// heldMaster reads commands, one a line, answering each with a line:
// "fork" or "forkns" (a worker in a new PID namespace) with the worker's
// pid, "close FD" with "ok" once it closed its fd FD.
func heldMaster() {
	n, _ := strconv.Atoi(os.Getenv(heldFilesEnv))
	files := make([]*os.File, n)
	for i := range files {
		files[i] = os.NewFile(uintptr(3+i), "listener")
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd := strings.Fields(in.Text())
		switch {
		case len(cmd) == 1 && (cmd[0] == "fork" || cmd[0] == "forkns"):
			w := exec.Command(os.Args[0])
			w.Env = append(os.Environ(), heldRoleEnv+"=worker")
			w.ExtraFiles = files
			w.Stderr = os.Stderr
			w.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if cmd[0] == "forkns" {
				w.SysProcAttr.Cloneflags = syscall.CLONE_NEWPID
			}
			if err := w.Start(); err != nil {
				fmt.Println("ERR", err)
				continue
			}
			go w.Wait()
			fmt.Println(w.Process.Pid)
		case len(cmd) == 2 && cmd[0] == "close":
			fd, _ := strconv.Atoi(cmd[1])
			if i := fd - 3; i >= 0 && i < len(files) && files[i] != nil {
				files[i].Close()
				files[i] = nil
			}
			fmt.Println("ok")
		default:
			fmt.Println("ERR", in.Text())
		}
	}
}

// heldWorker accepts on the fds heldAcceptEnv lists, closing each
// connection at once, and closes those heldCloseEnv lists on SIGUSR2.
func heldWorker() {
	for _, fd := range fdList(heldAcceptEnv) {
		go func() {
			for {
				c, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
				if err == unix.EINTR || err == unix.ECONNABORTED {
					continue
				}
				if err != nil {
					return
				}
				unix.Close(c)
			}
		}()
	}
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	for range usr2 {
		for _, fd := range fdList(heldCloseEnv) {
			unix.Close(fd)
		}
	}
}

func fdList(env string) []int {
	var fds []int
	for _, s := range strings.Split(os.Getenv(env), ",") {
		if fd, err := strconv.Atoi(s); err == nil {
			fds = append(fds, fd)
		}
	}
	return fds
}

// heldPool is a running held pool.
type heldPool struct {
	Master int
	in     io.Writer
	out    *bufio.Reader
}

// startHeld starts a master holding files (fds 3 on), whose workers
// accept on the files of index accept and close those of index closing on
// SIGUSR2. It is killed, its workers with it, when t ends.
func startHeld(t testing.TB, files []*os.File, accept, closing []int) *heldPool {
	t.Helper()
	fds := func(idx []int) string {
		var s []string
		for _, i := range idx {
			s = append(s, strconv.Itoa(3+i))
		}
		return strings.Join(s, ",")
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), heldRoleEnv+"=master", fmt.Sprintf("%s=%d", heldFilesEnv, len(files)),
		heldAcceptEnv+"="+fds(accept), heldCloseEnv+"="+fds(closing))
	cmd.ExtraFiles = files
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
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return &heldPool{Master: cmd.Process.Pid, in: in, out: bufio.NewReader(out)}
}

// ask sends the master a command and returns its answer.
func (p *heldPool) ask(t testing.TB, command string) string {
	t.Helper()
	if _, err := fmt.Fprintln(p.in, command); err != nil {
		t.Fatal(err)
	}
	line, err := p.out.ReadString('\n')
	if err != nil || strings.HasPrefix(line, "ERR") {
		t.Fatalf("held pool, %q: %q %v", command, line, err)
	}
	return strings.TrimSpace(line)
}

// fork has the master fork a worker, in a PID namespace of its own when
// newPIDNS, and returns its pid.
func (p *heldPool) fork(t testing.TB, newPIDNS bool) int {
	t.Helper()
	command := "fork"
	if newPIDNS {
		command = "forkns"
	}
	pid, err := strconv.Atoi(p.ask(t, command))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// closeListener has the master and worker close the listener of index i
// (the worker must close it on SIGUSR2), and waits until the worker has.
func (p *heldPool) closeListener(t testing.TB, worker, i int) {
	t.Helper()
	p.ask(t, fmt.Sprintf("close %d", 3+i))
	if err := unix.Kill(worker, unix.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	fd := fmt.Sprintf("/proc/%d/fd/%d", worker, 3+i)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Lstat(fd); os.IsNotExist(err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker %d still holds %s", worker, fd)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// netNS is a network namespace of the test's own, its loopback up, with a
// thread in it that runs what run is given: the sockets made there are
// that namespace's.
type netNS struct {
	inode uint32
	do    chan func()
}

func newNetNS(t testing.TB) *netNS {
	t.Helper()
	ns := &netNS{do: make(chan func())}
	errc := make(chan error)
	go func() {
		// Never unlocked: the thread ends with the goroutine, and
		// takes the namespace with it.
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			errc <- errors.New("a new network namespace on the main thread would be the process's: TestMain keeps it")
			return
		}
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare a network namespace: %w", err)
			return
		}
		var st unix.Stat_t
		err := unix.Stat(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), &st)
		ns.inode = uint32(st.Ino)
		if err == nil {
			err = loopbackUp()
		}
		errc <- err
		if err != nil {
			return
		}
		for f := range ns.do {
			f()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(ns.do) })
	return ns
}

// run runs f in the namespace.
func (ns *netNS) run(f func()) {
	done := make(chan struct{})
	ns.do <- func() { f(); close(done) }
	<-done
}

// loopbackUp brings up the current network namespace's loopback.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo's flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

// sockaddr is addr as a socket address, with its family.
func sockaddr(addr netip.AddrPort) (int, unix.Sockaddr) {
	if addr.Addr().Is6() {
		return unix.AF_INET6, &unix.SockaddrInet6{Addr: addr.Addr().As16(), Port: int(addr.Port())}
	}
	return unix.AF_INET, &unix.SockaddrInet4{Addr: addr.Addr().As4(), Port: int(addr.Port())}
}

// tcpListen makes a TCP listener on addr (port 0: any) with backlog, in
// the calling thread's network namespace, and says its port.
func tcpListen(addr netip.AddrPort, backlog int) (*os.File, uint16, error) {
	family, sa := sockaddr(addr)
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, 0, err
	}
	f := os.NewFile(uintptr(fd), "tcp listener "+addr.String())
	err = unix.Bind(fd, sa)
	if err == nil {
		err = unix.Listen(fd, backlog)
	}
	var bound unix.Sockaddr
	if err == nil {
		bound, err = unix.Getsockname(fd)
	}
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("listen on %s: %w", addr, err)
	}
	switch b := bound.(type) {
	case *unix.SockaddrInet4:
		return f, uint16(b.Port), nil
	case *unix.SockaddrInet6:
		return f, uint16(b.Port), nil
	}
	f.Close()
	return nil, 0, fmt.Errorf("listen on %s: bound to %v", addr, bound)
}

// listenTCP is tcpListen in the test's namespace (in ns when not nil);
// the listener is closed when t ends.
func listenTCP(t testing.TB, ns *netNS, addr netip.AddrPort, backlog int) (*os.File, uint16) {
	t.Helper()
	var (
		f    *os.File
		port uint16
		err  error
	)
	in(ns, func() { f, port, err = tcpListen(addr, backlog) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, port
}

// in runs f in ns, or where it is called when ns is nil.
func in(ns *netNS, f func()) {
	if ns == nil {
		f()
		return
	}
	ns.run(f)
}

// listenUnix makes a Unix stream listener bound to name ("@..." for an
// abstract one); closed when t ends.
func listenUnix(t testing.TB, name string, backlog int) *os.File {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "unix listener "+name)
	t.Cleanup(func() { f.Close() })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: name}); err != nil {
		t.Fatalf("bind %s: %v", name, err)
	}
	if err := unix.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	return f
}

// connect opens n connections to addr from the test's network namespace
// (ns when not nil), kept open until t ends.
func connect(t testing.TB, ns *netNS, addr netip.AddrPort, n int) {
	t.Helper()
	family, sa := sockaddr(addr)
	for range n {
		var (
			fd  int
			err error
		)
		in(ns, func() {
			if fd, err = unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
				err = unix.Connect(fd, sa)
			}
		})
		if fd > 0 {
			t.Cleanup(func() { unix.Close(fd) })
		}
		if err != nil {
			t.Fatalf("connect to %s: %v", addr, err)
		}
	}
}
