package observer

import (
	"testing"

	"golang.org/x/sys/unix"
)

// A container's mountinfo: its own root (an overlay), the host's /run/app
// bind-mounted at /srv/run, a tmpfs over /tmp, and /srv/run/hidden
// overmounted.
const containerMountinfo = `800 700 0:60 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
801 800 254:0 /run/app /srv/run rw,relatime - ext4 /dev/vda rw
802 800 0:61 / /tmp rw,nosuid - tmpfs tmpfs rw
803 801 0:62 / /srv/run/hidden rw - tmpfs tmpfs rw
804 800 254:0 /home/a\040b /mnt/with\040space rw - ext4 /dev/vda rw
`

func TestParseMountinfo(t *testing.T) {
	ms := parseMountinfo([]byte(containerMountinfo + "garbage\n1 2 x:y / / rw\n"))
	if len(ms) != 5 {
		t.Fatalf("%d mounts, want 5: %+v", len(ms), ms)
	}
	if m := ms[1]; m.dev != unix.Mkdev(254, 0) || m.root != "/run/app" || m.point != "/srv/run" {
		t.Errorf("bind mount %+v", m)
	}
	if m := ms[4]; m.root != "/home/a b" || m.point != "/mnt/with space" {
		t.Errorf("escaped paths %+v", m)
	}
}

// A container sees a host file where a mount of its filesystem holds it
// and nothing is mounted above; not where its mounts do not reach, nor
// under an overmount.
func TestSeesIn(t *testing.T) {
	ms := parseMountinfo([]byte(containerMountinfo))
	vda := unix.Mkdev(254, 0)
	for _, c := range []struct {
		w    where
		want bool
	}{
		{where{vda, "/run/app/uwsgi.pid"}, true},         // at /srv/run/uwsgi.pid
		{where{vda, "/run/app"}, true},                   // the bind mount's own root
		{where{vda, "/run/other/uwsgi.pid"}, false},      // outside what is bound
		{where{vda, "/run/app/hidden/uwsgi.pid"}, false}, // under the tmpfs on /srv/run/hidden
		{where{vda, "/home/a b/x.pid"}, true},            // escaped names
		{where{unix.Mkdev(0, 99), "/run/app/uwsgi.pid"}, false},
	} {
		if got := seesIn(ms, c.w); got != c.want {
			t.Errorf("sees %+v: %v, want %v", c.w, got, c.want)
		}
	}
}

func TestWithin(t *testing.T) {
	for _, c := range []struct {
		path, dir, rest string
		ok              bool
	}{
		{"/a/b", "/", "/a/b", true},
		{"/a/b", "/a", "/b", true},
		{"/a", "/a", "/", true},
		{"/ab", "/a", "", false},
	} {
		if rest, ok := within(c.path, c.dir); rest != c.rest || ok != c.ok {
			t.Errorf("within(%q, %q) = %q, %v", c.path, c.dir, rest, ok)
		}
	}
}

// A mountinfo file is the kernel's, its paths anyone's: parsing never
// panics, whatever the bytes.
func FuzzParseMountinfo(f *testing.F) {
	f.Add([]byte(containerMountinfo))
	f.Add([]byte(`1 2 3:4 \ \\ \0 x`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ms := parseMountinfo(b)
		seesIn(ms, where{unix.Mkdev(254, 0), "/run/app/x"})
	})
}
