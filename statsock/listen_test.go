package statsock

// Listen: Unix socket files (mode, owner, stale files, refusals, removal),
// and the errors of TCP listening.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
)

// withUmask runs the test under a umask; with 0 a socket would be created
// world-writable, so what Listen does to its mode shows.
func withUmask(t *testing.T, mask int) {
	t.Helper()
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

func statOwner(t *testing.T, path string) (mode os.FileMode, uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return fi.Mode(), int(st.Uid), int(st.Gid)
}

// onlyFile fails unless dir holds exactly the file name: no temporary
// socket is left behind.
func onlyFile(t *testing.T, dir, name string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	want := []string{}
	if name != "" {
		want = []string{name}
	}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("%s holds %q, want %q", dir, names, want)
	}
}

func TestListenUnixDefaultMode0600(t *testing.T) {
	withUmask(t, 0)
	path := sockPath(t)
	ln := listen(t, path, ListenOptions{})
	// Checked right after Listen returns: the file was never seen at this
	// path with another mode, since it was moved here after its chmod.
	mode, uid, gid := statOwner(t, path)
	if mode&os.ModeSocket == 0 {
		t.Fatalf("%s is %v, not a socket", path, mode)
	}
	if mode.Perm() != 0o600 {
		t.Errorf("socket mode %#o, want 0600", mode.Perm())
	}
	if uid != os.Geteuid() || gid != os.Getegid() {
		t.Errorf("socket owned by %d:%d, want the daemon's %d:%d", uid, gid, os.Geteuid(), os.Getegid())
	}
	onlyFile(t, filepath.Dir(path), filepath.Base(path))
	// It serves.
	startServer(t, &Server{Source: counting()}, ln)
	if got := string(read(t, path)); got != `{"dump": 1}` {
		t.Errorf("read %q", got)
	}
}

func TestListenUnixMode(t *testing.T) {
	withUmask(t, 0o077) // a strict umask does not narrow the mode asked for
	for _, m := range []os.FileMode{0, 0o600, 0o660, 0o666, 0o700, 0o640} {
		t.Run(fmt.Sprintf("%#o", m), func(t *testing.T) {
			path := sockPath(t)
			ln := listen(t, path, ListenOptions{Mode: m})
			want := m
			if want == 0 {
				want = 0o600
			}
			if mode, _, _ := statOwner(t, path); mode.Perm() != want || mode&os.ModeSocket == 0 {
				t.Errorf("socket mode %v, want socket %#o", mode, want)
			}
			onlyFile(t, filepath.Dir(path), filepath.Base(path))
			ln.Close()
		})
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t, "give a file away (chown) and test access as another user")
}

func lookupIDs(t *testing.T, userName, groupName string) (uid, gid, userGid int) {
	t.Helper()
	u, err := user.Lookup(userName)
	if err != nil {
		testutil.SkipOrFail(t, "no user %q on this host: %v", userName, err)
	}
	g, err := user.LookupGroup(groupName)
	if err != nil {
		testutil.SkipOrFail(t, "no group %q on this host: %v", groupName, err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(g.Gid)
	userGid, _ = strconv.Atoi(u.Gid)
	return uid, gid, userGid
}

func TestListenUnixOwner(t *testing.T) {
	requireRoot(t)
	withUmask(t, 0)
	nobody, nogroup, nobodyGid := lookupIDs(t, "nobody", "nogroup")
	me, myGroup := os.Geteuid(), os.Getegid()
	tests := []struct {
		owner    string
		uid, gid int
	}{
		{"nobody", nobody, myGroup},    // a user alone leaves the group, as chown(1)
		{"nobody:", nobody, nobodyGid}, // "user:" takes the user's login group
		{strconv.Itoa(nobody) + ":", nobody, nobodyGid},
		{"nobody:nogroup", nobody, nogroup},
		{":nogroup", me, nogroup},
		{strconv.Itoa(nobody), nobody, myGroup},
		{fmt.Sprintf("%d:%d", nobody, nogroup), nobody, nogroup},
		{fmt.Sprintf(":%d", nogroup), me, nogroup},
		{"nobody:" + strconv.Itoa(nogroup), nobody, nogroup},
		{strconv.Itoa(nobody) + ":nogroup", nobody, nogroup},
		{"54321:54322", 54321, 54322}, // ids with no name are fine
	}
	for _, tt := range tests {
		t.Run(tt.owner, func(t *testing.T) {
			path := sockPath(t)
			ln := listen(t, path, ListenOptions{Owner: tt.owner, Mode: 0o660})
			mode, uid, gid := statOwner(t, path)
			if uid != tt.uid || gid != tt.gid {
				t.Errorf("owner %d:%d, want %d:%d", uid, gid, tt.uid, tt.gid)
			}
			if mode.Perm() != 0o660 {
				t.Errorf("mode %#o, want 0660", mode.Perm())
			}
			onlyFile(t, filepath.Dir(path), filepath.Base(path))
			ln.Close()
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("socket file left after Close: %v", err)
			}
		})
	}
}

// "nobody" and its numeric id are two spellings of one owner.
func TestListenUnixOwnerNumericLikeName(t *testing.T) {
	requireRoot(t)
	nobody, _, _ := lookupIDs(t, "nobody", "nogroup")
	var owners [2][2]int
	for i, o := range []string{"nobody", strconv.Itoa(nobody)} {
		path := sockPath(t)
		ln := listen(t, path, ListenOptions{Owner: o})
		_, owners[i][0], owners[i][1] = statOwner(t, path)
		ln.Close()
	}
	if owners[0] != owners[1] {
		t.Errorf("Owner \"nobody\" gives %d:%d, Owner \"%d\" gives %d:%d", owners[0][0], owners[0][1], nobody, owners[1][0], owners[1][1])
	}
}

func TestListenUnixBadOwner(t *testing.T) {
	for _, owner := range []string{"no-such-user-workerstats", ":no-such-group-workerstats", "nobody:no-such-group-workerstats", "no-such-user-workerstats:nogroup"} {
		t.Run(owner, func(t *testing.T) {
			path := sockPath(t)
			ln, err := Listen(mustParse(t, path), ListenOptions{Owner: owner})
			if err == nil {
				ln.Close()
				t.Fatalf("Listen with Owner %q succeeded", owner)
			}
			if !strings.Contains(err.Error(), strconv.Quote(owner)) || !strings.Contains(err.Error(), "no such") {
				t.Errorf("error %q does not say which owner is wrong", err)
			}
			onlyFile(t, filepath.Dir(path), "")
		})
	}
}

// A non-root daemon cannot give its socket away: Listen fails with a clear
// error and leaves nothing behind.
func TestListenUnixChownFailure(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may chown; the failure needs an unprivileged user")
	}
	path := sockPath(t)
	ln, err := Listen(mustParse(t, path), ListenOptions{Owner: "54321"})
	if err == nil {
		ln.Close()
		t.Fatal("an unprivileged chown succeeded")
	}
	if !strings.Contains(err.Error(), "owner") {
		t.Errorf("error %q", err)
	}
	onlyFile(t, filepath.Dir(path), "")
}

// dialAs connects to the Unix socket at path from a thread whose file
// system ids are uid:gid, so the kernel checks the socket file's mode as it
// would for that user. The thread is never handed back to the runtime.
func dialAs(uid, gid int, path string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread exits with this goroutine
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETFSGID, uintptr(gid), 0, 0); e != 0 {
			errc <- e
			return
		}
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETFSUID, uintptr(uid), 0, 0); e != 0 {
			errc <- e
			return
		}
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer syscall.Close(fd)
		errc <- syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
	}()
	return <-errc
}

// searchable lets other users reach files in the directory of path.
func searchable(t *testing.T, path string) {
	for d := filepath.Dir(path); d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// The mode and owner do what they are for: who may connect.
func TestListenUnixAccess(t *testing.T) {
	requireRoot(t)
	withUmask(t, 0)
	nobody, nogroup, _ := lookupIDs(t, "nobody", "nogroup")
	other := 54321 // a user in no group of the socket
	tests := []struct {
		name    string
		o       ListenOptions
		allowed map[[2]int]bool
	}{
		{"default", ListenOptions{}, map[[2]int]bool{{nobody, nogroup}: false, {other, other}: false}},
		{"0660 :nogroup", ListenOptions{Mode: 0o660, Owner: ":nogroup"}, map[[2]int]bool{{other, nogroup}: true, {other, other}: false}},
		{"0600 nobody", ListenOptions{Owner: "nobody"}, map[[2]int]bool{{nobody, other}: true, {other, nogroup}: false}},
		{"0666", ListenOptions{Mode: 0o666}, map[[2]int]bool{{other, other}: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := sockPath(t)
			searchable(t, path)
			listen(t, path, tt.o)
			for ids, allowed := range tt.allowed {
				err := dialAs(ids[0], ids[1], path)
				if allowed && err != nil {
					t.Errorf("uid %d gid %d cannot connect: %v", ids[0], ids[1], err)
				}
				if !allowed && !errors.Is(err, syscall.EACCES) {
					t.Errorf("uid %d gid %d: connect = %v, want permission denied", ids[0], ids[1], err)
				}
			}
		})
	}
}

// No connection can arrive before the mode holds: another user spinning on
// connect to the socket's temporary name, while Listen runs under a
// permissive umask, must never get in.
func TestListenUnixNoConnectionBeforeChmod(t *testing.T) {
	requireRoot(t)
	withUmask(t, 0)
	path := sockPath(t)
	searchable(t, path)
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%s.%d.tmp", filepath.Base(path), os.Getpid()))
	stop := make(chan struct{})
	hits := make(chan int, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: the thread exits with this goroutine
		syscall.RawSyscall(syscall.SYS_SETFSGID, 54321, 0, 0)
		syscall.RawSyscall(syscall.SYS_SETFSUID, 54321, 0, 0)
		n := 0
		for {
			select {
			case <-stop:
				hits <- n
				return
			default:
			}
			for _, p := range []string{tmp, path} {
				fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
				if err != nil {
					continue
				}
				if syscall.Connect(fd, &syscall.SockaddrUnix{Name: p}) == nil {
					n++
				}
				syscall.Close(fd)
			}
		}
	}()
	a := mustParse(t, path)
	start := time.Now()
	calls := 0
	for ; time.Since(start) < 2*time.Second; calls++ {
		ln, err := Listen(a, ListenOptions{})
		if err != nil {
			close(stop)
			t.Fatal(err)
		}
		ln.Close()
	}
	close(stop)
	if n := <-hits; n > 0 {
		t.Errorf("another user connected %d times during %d Listen calls, before the socket was 0600", n, calls)
	}
}

// A path ParseAddr accepts can be listened on, up to the length limit.
func TestListenUnixLongPath(t *testing.T) {
	// A short directory of its own: t.TempDir() may already be too long.
	dir, err := os.MkdirTemp("/tmp", "ws")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for _, n := range []int{90, 100, maxUnixPath} {
		path := dir + "/" + strings.Repeat("s", n-len(dir)-1)
		a := mustParse(t, path)
		ln, err := Listen(a, ListenOptions{})
		if err != nil {
			t.Errorf("Listen on a %d-byte path: %v", len(path), err)
			continue
		}
		ln.Close()
	}
}

// An abstract name of the longest length ParseAddr accepts can be
// listened on, and leaves no file anywhere.
func TestListenAbstractLongName(t *testing.T) {
	name := fmt.Sprintf("@workerstats-test-%d-", os.Getpid())
	name += strings.Repeat("x", maxUnixPath+1-len(name))
	ln := listen(t, name, ListenOptions{})
	startServer(t, &Server{Source: counting()}, ln)
	if got := string(read(t, name)); got != `{"dump": 1}` {
		t.Errorf("read %q", got)
	}
}

func TestListenUnixAddrIsThePath(t *testing.T) {
	path := sockPath(t)
	ln := listen(t, path, ListenOptions{})
	if got := ln.Addr().String(); got != path {
		t.Errorf("Addr() = %q, want %q", got, path)
	}
	if ln.Addr().Network() != "unix" {
		t.Errorf("Addr().Network() = %q", ln.Addr().Network())
	}
}

func TestListenUnixCloseRemovesFile(t *testing.T) {
	path := sockPath(t)
	ln := listen(t, path, ListenOptions{})
	if err := ln.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file still there after Close: %v", err)
	}
	onlyFile(t, filepath.Dir(path), "")
	if err := ln.Close(); err == nil {
		t.Log("second Close returned nil") // either is fine; it must not panic
	}
	// The path is free again.
	ln = listen(t, path, ListenOptions{})
	ln.Close()
}

// Closing an old listener whose file was replaced (deleted by hand, then
// another daemon started on the same path) must not remove the new file.
func TestListenUnixCloseKeepsAnotherSocket(t *testing.T) {
	path := sockPath(t)
	first := listen(t, path, ListenOptions{})
	os.Remove(path)
	second := listen(t, path, ListenOptions{})
	startServer(t, &Server{Source: counting()}, second)
	first.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("closing the old listener removed the new one's socket: %v", err)
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	withUmask(t, 0)
	path := sockPath(t)
	// A listener that died without unlinking its socket file, left 0777.
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no stale socket file left behind: %v %v", fi, err)
	}
	ln := listen(t, path, ListenOptions{})
	if mode, _, _ := statOwner(t, path); mode.Perm() != 0o600 {
		t.Errorf("the new socket is %#o, want 0600", mode.Perm())
	}
	onlyFile(t, filepath.Dir(path), filepath.Base(path))
	startServer(t, &Server{Source: counting()}, ln)
	if got := string(read(t, path)); got != `{"dump": 1}` {
		t.Errorf("read = %q", got)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
	}{
		{"regular file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{"symlink to a stale socket", func(t *testing.T, path string) {
			target := path + ".real"
			old, err := net.ListenUnix("unix", &net.UnixAddr{Name: target, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			old.SetUnlinkOnClose(false)
			old.Close()
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
		}},
		{"fifo", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := sockPath(t)
			tt.setup(t, path)
			before, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			ln, err := Listen(mustParse(t, path), ListenOptions{})
			if err == nil {
				ln.Close()
				t.Fatalf("Listen on a %s succeeded", tt.name)
			}
			if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "not a socket") {
				t.Errorf("error %q does not name the path and say it is not a socket", err)
			}
			after, err := os.Lstat(path)
			if err != nil {
				t.Fatalf("the %s was removed: %v", tt.name, err)
			}
			if !os.SameFile(before, after) || after.Mode() != before.Mode() {
				t.Errorf("the %s was replaced", tt.name)
			}
			if tt.name == "regular file" {
				if b, _ := os.ReadFile(path); string(b) != "precious" {
					t.Errorf("file content changed to %q", b)
				}
			}
			for _, e := range mustReadDir(t, filepath.Dir(path)) {
				if strings.HasSuffix(e, ".tmp") {
					t.Errorf("temporary file %s left behind", e)
				}
			}
		})
	}
}

func mustReadDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := sockPath(t)
	first := listen(t, path, ListenOptions{})
	before, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(mustParse(t, path), ListenOptions{})
	if err == nil {
		ln.Close()
		t.Fatal("a second Listen on a live socket succeeded")
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "listening") {
		t.Errorf("error %q does not name the path and say someone listens on it", err)
	}
	after, err := os.Lstat(path)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("the live socket file was removed or replaced: %v", err)
	}
	onlyFile(t, filepath.Dir(path), filepath.Base(path))
	// The first listener still serves (the probe connection included).
	startServer(t, &Server{Source: counting()}, first)
	if got := read(t, path); len(got) == 0 {
		t.Error("the first listener no longer serves")
	}
}

// A socket whose listener is alive but not accepting, its backlog full (a
// busy daemon), is not taken over.
func TestListenRefusesBusyLiveSocket(t *testing.T) {
	path := sockPath(t)
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	full := false
	for range 16 {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			full = true
			break
		}
		defer c.Close()
	}
	if !full {
		t.Skip("could not fill the listener's backlog")
	}
	before, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if ln, err := Listen(mustParse(t, path), ListenOptions{}); err == nil {
		ln.Close()
		t.Error("Listen took over the path of a live (busy) listener")
	} else if !strings.Contains(err.Error(), path) {
		t.Errorf("error %q does not name the path", err)
	}
	if after, err := os.Lstat(path); err != nil || !os.SameFile(before, after) {
		t.Errorf("the live socket file was removed or replaced: %v", err)
	}
}

func TestListenErrors(t *testing.T) {
	t.Run("missing directory", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "no", "such", "dir", "stats.sock")
		ln, err := Listen(mustParse(t, path), ListenOptions{})
		if err == nil {
			ln.Close()
			t.Fatal("Listen in a missing directory succeeded")
		}
		if !strings.Contains(err.Error(), path) {
			t.Errorf("error %q does not name the path", err)
		}
	})
	t.Run("TCP port in use", func(t *testing.T) {
		first := listen(t, "127.0.0.1:0", ListenOptions{})
		addr := target(first)
		ln, err := Listen(mustParse(t, addr), ListenOptions{})
		if err == nil {
			ln.Close()
			t.Fatal("a second Listen on a busy port succeeded")
		}
		if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "already in use") {
			t.Errorf("error %q", err)
		}
	})
	t.Run("abstract name in use", func(t *testing.T) {
		name := fmt.Sprintf("@workerstats-test-%d-%d", os.Getpid(), time.Now().UnixNano())
		listen(t, name, ListenOptions{})
		ln, err := Listen(mustParse(t, name), ListenOptions{})
		if err == nil {
			ln.Close()
			t.Fatal("a second Listen on a busy abstract name succeeded")
		}
		if !strings.Contains(err.Error(), "already in use") {
			t.Errorf("error %q", err)
		}
	})
}
