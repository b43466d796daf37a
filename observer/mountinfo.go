package observer

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Whether a process in another mount namespace sees a file, with no
// privilege: /proc/PID/root takes ptrace read access, which the daemon
// keeps none of once started, but /proc/PID/mountinfo is anyone's. A file
// is on one filesystem at one place in it; a process sees it where one of
// its mounts of that filesystem holds that place and no mount above hides
// it.

// mount is one line of a mountinfo file.
type mount struct {
	dev   uint64 // unix.Mkdev(major, minor)
	root  string // the place in the filesystem that is mounted
	point string // where, in the process's root
}

// mountinfoMax bounds what is read of one mountinfo file.
const mountinfoMax = 4 << 20

// parseMountinfo reads a mountinfo file: mount ID, parent ID,
// major:minor, root, mount point, then fields this does not need. Paths
// come with spaces, tabs, newlines and backslashes octal-escaped.
func parseMountinfo(b []byte) []mount {
	var out []mount
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 1024), 64<<10)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			continue
		}
		maj, min, ok := strings.Cut(f[2], ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			continue
		}
		out = append(out, mount{dev: unix.Mkdev(uint32(ma), uint32(mi)), root: unescapeMount(f[3]), point: unescapeMount(f[4])})
	}
	return out
}

// unescapeMount undoes the kernel's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// within reports whether path is dir or below it, and the rest of it.
func within(path, dir string) (rest string, ok bool) {
	if dir == "/" {
		return path, strings.HasPrefix(path, "/")
	}
	if path == dir {
		return "/", true
	}
	if r, ok := strings.CutPrefix(path, dir+"/"); ok {
		return "/" + r, true
	}
	return "", false
}

// topMount is the mount of mounts that holds path: the last of those whose
// mount point is the longest prefix of it (a later mount on the same
// point hides an earlier one).
func topMount(mounts []mount, path string) (mount, bool) {
	best, found := mount{}, false
	for _, m := range mounts {
		if _, ok := within(path, m.point); ok && (!found || len(m.point) >= len(best.point)) {
			best, found = m, true
		}
	}
	return best, found
}

// where is a file: its filesystem and its place in it.
type where struct {
	dev   uint64
	place string
}

// locate finds where path, as the daemon sees it, is: through the
// daemon's own mountinfo.
func (p Procfs) locate(path string) (where, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return where{}, err
	}
	var st unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		return where{}, err
	}
	b, err := readBounded(filepath.Join(p.Root, "self", "mountinfo"), mountinfoMax)
	if err != nil {
		return where{}, err
	}
	m, ok := topMount(parseMountinfo(b), real)
	if !ok || m.dev != st.Dev {
		return where{}, errors.New("the file's mount is not in the daemon's mountinfo")
	}
	rest, _ := within(real, m.point)
	return where{dev: m.dev, place: filepath.Join(m.root, rest)}, nil
}

// seesIn reports whether a process whose mounts are mounts sees the file
// at w: one of its mounts of w's filesystem holds w's place, and that
// mount is the top one where the file would be.
func seesIn(mounts []mount, w where) bool {
	for _, m := range mounts {
		if m.dev != w.dev {
			continue
		}
		rest, ok := within(w.place, m.root)
		if !ok {
			continue
		}
		at := filepath.Join(m.point, rest)
		if top, ok := topMount(mounts, at); ok && top == m {
			return true
		}
	}
	return false
}

// visibility is whether a process sees a file: yes, no, or unknown (it
// could not be told).
type visibility int

const (
	visUnknown visibility = iota
	visYes
	visNo
)

// sees tells whether pid's mount namespace has the file at path (as the
// daemon sees it): the same file at the same path through /proc/PID/root
// where the daemon may look there, else anywhere through its mountinfo.
func (p Procfs) sees(pid int, path string) visibility {
	here, err := os.Stat(path)
	if err != nil {
		return visUnknown
	}
	there, err := os.Stat(filepath.Join(p.Root, strconv.Itoa(pid), "root", path))
	if err == nil && os.SameFile(here, there) {
		return visYes
	}
	if err != nil && !errors.Is(err, fs.ErrPermission) && !errors.Is(err, fs.ErrNotExist) {
		return visUnknown
	}
	w, err := p.locate(path)
	if err != nil {
		return visUnknown
	}
	b, err := readBounded(filepath.Join(p.Root, strconv.Itoa(pid), "mountinfo"), mountinfoMax)
	if err != nil {
		return visUnknown
	}
	if seesIn(parseMountinfo(b), w) {
		return visYes
	}
	return visNo
}
