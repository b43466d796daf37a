package ebpfkernel

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/workerstats/workerstats/bpf"
)

// Pinning keeps the kernel side running while the daemon is stopped.
//
// The maps and the links (program attachments) are pinned in one bpffs
// directory per daemon, by name. A pinned link holds its program, and the
// program holds its maps, so the programs go on counting with no process
// holding a descriptor; a restart finds the same maps and links by name and
// carries on from what they hold. Only `workerstats cleanup` (RemovePins)
// removes the pins, which detaches the programs and frees the maps.

// BPFFSDir is where workerstats expects (and, as root, mounts) the bpf
// filesystem.
const BPFFSDir = "/sys/fs/bpf"

// DefaultPinRoot holds the pin directories of the daemons on a host, one
// per daemon: DefaultPinRoot/NAME.
const DefaultPinRoot = BPFFSDir + "/workerstats"

// DefaultPinPath is the pin directory of a daemon started without a name.
var DefaultPinPath = filepath.Join(DefaultPinRoot, "default")

// ErrNothingPinned is returned by RemovePins when the directory holds no
// pinned objects.
var ErrNothingPinned = errors.New("nothing is pinned")

// PinPathError is a pin directory to change (not on bpffs, relative, in use
// by another daemon): a setting to fix, unlike a kernel that cannot load the
// programs, so no reason to fall back to procfs. Err says what is wrong with
// Path and what to do.
type PinPathError struct {
	Path string
	Err  error
}

func (e *PinPathError) Error() string { return "pin directory " + e.Path + ": " + e.Err.Error() }
func (e *PinPathError) Unwrap() error { return e.Err }

// linkPinPrefix starts the file name of every pinned link. bpffs refuses
// names with a dot, so names use underscores only.
const linkPinPrefix = "link_"

// retiredMaps are maps earlier versions pinned that this one has not:
// "swept" (how many connections their sweeps removed), beside the C
// file's, and "heads", the ring request heads went through. A load
// removes their pins, and cleanup too.
var retiredMaps = []string{"swept", "heads"}

// onBPFFS reports whether path, or the nearest of its ancestors that
// exists, is on a bpf filesystem.
func onBPFFS(path string) (bool, error) {
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
		}
		if !errors.Is(err, unix.ENOENT) || p == filepath.Dir(p) {
			return false, fmt.Errorf("statfs %s: %w", p, err)
		}
	}
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// ensureBPFFS makes sure pinPath can hold pins: it must be on a bpf
// filesystem. When it is under BPFFSDir and nothing is mounted there, the
// bpf filesystem is mounted at BPFFSDir, as systemd does at boot.
func ensureBPFFS(pinPath string) error {
	ok, err := onBPFFS(pinPath)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	if !within(pinPath, BPFFSDir) {
		return &PinPathError{pinPath, fmt.Errorf("not on a bpf filesystem: use a path under %s, or mount one with 'mount -t bpf bpf DIR'", BPFFSDir)}
	}
	if err := unix.Mount("bpf", BPFFSDir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("the bpf filesystem is not mounted and mounting it at %s failed (%w): run as root, or mount it with 'mount -t bpf bpf %s'", BPFFSDir, err, BPFFSDir)
	}
	return nil
}

// pinDir is a daemon's pin directory, locked (flock) for as long as the
// daemon uses it, so two daemons never share maps and links.
type pinDir struct {
	path string
	lock *os.File
}

// errPinsBusy is what lockPinDir returns when another process holds the
// lock.
var errPinsBusy = errors.New("in use by another workerstats")

// lockPinDir opens dir and takes its lock without waiting.
func lockPinDir(dir string) (*pinDir, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errPinsBusy
		}
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	// A cleanup may have removed the directory between open and lock.
	held, err1 := f.Stat()
	now, err2 := os.Stat(dir)
	if err1 != nil || err2 != nil || !os.SameFile(held, now) {
		f.Close()
		return nil, fmt.Errorf("%s was removed while workerstats opened it: try again", dir)
	}
	return &pinDir{path: dir, lock: f}, nil
}

// openPinDir prepares dir for the daemon's pins: mounts bpffs when needed,
// creates the directory (0700) and locks it.
func openPinDir(dir string) (*pinDir, error) {
	if !filepath.IsAbs(dir) {
		return nil, &PinPathError{dir, errors.New("must be an absolute path")}
	}
	dir = filepath.Clean(dir)
	// Without the privilege to mount or create, eBPF would not load either:
	// that is said as such. Anything else is the pin path's problem.
	setting := func(err error) error {
		var pe *PinPathError
		if errors.Is(err, fs.ErrPermission) || errors.As(err, &pe) {
			return err
		}
		return &PinPathError{dir, err}
	}
	if err := ensureBPFFS(dir); err != nil {
		return nil, setting(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, setting(fmt.Errorf("create it: %w: choose another", err))
	}
	p, err := lockPinDir(dir)
	if errors.Is(err, errPinsBusy) {
		return nil, &PinPathError{dir, errors.New("another workerstats daemon is running with these pins: give each daemon its own")}
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (p *pinDir) file(name string) string { return filepath.Join(p.path, name) }

func (p *pinDir) close() error {
	if p == nil || p.lock == nil {
		return nil
	}
	err := p.lock.Close()
	p.lock = nil
	return err
}

// pinnedLinks lists the names of the links pinned in the directory.
func (p *pinDir) pinnedLinks() ([]string, error) {
	ents, err := os.ReadDir(p.path)
	if err != nil {
		return nil, fmt.Errorf("read pin directory: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), linkPinPrefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// dropIncompatibleMaps removes the pins of retired maps, and of maps whose
// layout no longer matches spec (an upgrade changed a key, a value or a
// size), so loading creates them afresh. A hash map whose values or size
// only grew (an upgrade added counters at their end, a larger table was
// asked for) has its entries carried over, any new fields zero: restore
// writes them into the new map. Any other map's counts are lost, and it
// says so.
func (p *pinDir) dropIncompatibleMaps(spec *ebpf.CollectionSpec, log *slog.Logger) (carried, error) {
	out := carried{}
	for _, name := range retiredMaps {
		if os.Remove(p.file(name)) == nil {
			log.Info("removed the pin of a map this version does not use", "map", name)
		}
	}
	for name, ms := range spec.Maps {
		if ms.Pinning == ebpf.PinNone {
			continue
		}
		m, err := ebpf.LoadPinnedMap(p.file(name), nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, p.foreign(name, "map", err)
		}
		incompatible := ms.Compatible(m)
		var entries []entry
		if incompatible != nil && grownValues(ms, m) {
			entries, err = readEntries(m, ms.ValueSize)
		}
		m.Close()
		switch {
		case incompatible == nil:
			continue
		case err != nil:
			return nil, fmt.Errorf("read pinned map %s to carry it over: %w", p.file(name), err)
		case entries != nil:
			log.Info("a pinned map grew (larger values in this version, or more entries asked for): carrying its entries over", "map", name, "entries", len(entries))
			out[name] = entries
		default:
			log.Warn("a pinned map does not fit this version's layout: replacing it, its counts are lost", "map", name, "change", incompatible.Error())
		}
		if err := os.Remove(p.file(name)); err != nil {
			return nil, fmt.Errorf("remove incompatible pinned map %s: %w", p.file(name), err)
		}
	}
	return out, nil
}

// carried are the entries of pinned maps replaced by dropIncompatibleMaps,
// by map name, to write into their new maps.
type carried map[string][]entry

type entry struct{ key, value []byte }

// grownValues says pinned hash (or LRU) map m fits in spec's: its values no
// larger (an upgrade added fields), its entries no more (a larger table
// asked for: --max-workers, say).
func grownValues(spec *ebpf.MapSpec, m *ebpf.Map) bool {
	hash := spec.Type == ebpf.Hash || spec.Type == ebpf.LRUHash
	return hash && m.Type() == spec.Type && m.KeySize() == spec.KeySize &&
		m.ValueSize() <= spec.ValueSize && m.MaxEntries() <= spec.MaxEntries
}

// readEntries reads every entry of m, its values zero-extended to size.
func readEntries(m *ebpf.Map, size uint32) ([]entry, error) {
	entries := []entry{}
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		e := entry{key: slices.Clone(k), value: make([]byte, size)}
		copy(e.value, v)
		entries = append(entries, e)
	}
	return entries, it.Err()
}

// restore writes the carried entries into the maps just created.
func (c carried) restore(maps map[string]*ebpf.Map) error {
	for name, entries := range c {
		m := maps[name]
		if m == nil {
			continue
		}
		for _, e := range entries {
			if err := m.Update(e.key, e.value, ebpf.UpdateNoExist); err != nil {
				return fmt.Errorf("carry an entry of pinned map %s over: %w", name, err)
			}
		}
	}
	return nil
}

// ownPins returns a test for whether a file in a pin directory is one
// workerstats pins: a link, or a map of the C file's (or a retired one).
func ownPins() (func(name string) bool, error) {
	spec, err := bpf.LoadObserver()
	if err != nil {
		return nil, err
	}
	return func(name string) bool {
		_, isMap := spec.Maps[name]
		return isMap || slices.Contains(retiredMaps, name) || strings.HasPrefix(name, linkPinPrefix)
	}, nil
}

// RemovePins removes what a daemon pinned in dir: the links, which
// detaches the programs, and the maps, which frees them once nothing holds
// them; then the directory itself, and DefaultPinRoot when that is left
// empty. It refuses while a daemon uses dir. It returns how many objects it
// unpinned, or ErrNothingPinned. Files workerstats did not pin are left,
// with the directory, and reported.
func RemovePins(dir string) (int, error) {
	dir = filepath.Clean(dir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, ErrNothingPinned
	}
	if err != nil {
		return 0, fmt.Errorf("read pin directory %s: %w", dir, err)
	}
	if ok, err := onBPFFS(dir); err != nil || !ok {
		return 0, fmt.Errorf("%s is not on a bpf filesystem, so it holds no pins", dir)
	}
	p, err := lockPinDir(dir)
	if errors.Is(err, errPinsBusy) {
		return 0, fmt.Errorf("a workerstats daemon is running with the pins in %s: stop it first", dir)
	}
	if err != nil {
		return 0, err
	}
	defer p.close()
	n, err := p.unpinAll(ents)
	if err != nil {
		return n, err
	}
	if err := os.Remove(dir); err != nil {
		return n, fmt.Errorf("remove pin directory: %w", err)
	}
	if filepath.Dir(dir) == DefaultPinRoot {
		os.Remove(DefaultPinRoot) // only when empty: another daemon's pins stay
	}
	if n == 0 {
		return 0, ErrNothingPinned
	}
	return n, nil
}

// unpinAll removes the pins among ents, links first so that the programs
// stop before their maps go, and returns how many went. Files workerstats
// did not pin are an error that names them.
func (p *pinDir) unpinAll(ents []os.DirEntry) (int, error) {
	own, err := ownPins()
	if err != nil {
		return 0, err
	}
	slices.SortStableFunc(ents, func(a, b os.DirEntry) int {
		la, lb := strings.HasPrefix(a.Name(), linkPinPrefix), strings.HasPrefix(b.Name(), linkPinPrefix)
		switch {
		case la && !lb:
			return -1
		case lb && !la:
			return 1
		}
		return 0
	})
	var (
		n       int
		foreign []string
		errs    []error
	)
	for _, e := range ents {
		if !own(e.Name()) || e.IsDir() {
			foreign = append(foreign, e.Name())
			continue
		}
		if err := os.Remove(p.file(e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("unpin %s: %w", p.file(e.Name()), err))
			continue
		}
		n++
	}
	if len(errs) > 0 {
		return n, errors.Join(errs...)
	}
	if len(foreign) > 0 {
		return n, fmt.Errorf("%s also holds %s, which workerstats did not pin: left them and the directory in place", p.path, strings.Join(foreign, ", "))
	}
	return n, nil
}

// PinDirs lists the pin directories under DefaultPinRoot.
func PinDirs() ([]string, error) {
	ents, err := os.ReadDir(DefaultPinRoot)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, e := range ents {
		if e.IsDir() {
			dirs = append(dirs, filepath.Join(DefaultPinRoot, e.Name()))
		}
	}
	return dirs, nil
}

// foreign is the error for a pin this daemon cannot have made: what is
// at name is not the object (a map, a link) it pins there, or cannot be
// read as one. Nothing of it is taken, and nothing replaces it: it may be
// another program's.
func (p *pinDir) foreign(name, want string, err error) error {
	return &PinPathError{p.path, fmt.Errorf("%s is not a %s this daemon pinned (%w): move it away, or pin in another directory", name, want, err)}
}
