package observer

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
	"github.com/cilium/ebpf/link"
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

// PinPathError is a --pin-path to change (not on bpffs, relative, in use by
// another daemon): a setting to fix, unlike a kernel that cannot load the
// programs, so no reason to fall back to procfs.
type PinPathError struct{ Err error }

func (e *PinPathError) Error() string { return e.Err.Error() }
func (e *PinPathError) Unwrap() error { return e.Err }

// linkPinPrefix starts the file name of every pinned link. bpffs refuses
// names with a dot, so names use underscores only.
const linkPinPrefix = "link_"

// sweptMapName is the pinned map in which the daemon keeps how many
// connections its sweeps removed, so a restart still tells them from the
// connections the LRU evicted.
const sweptMapName = "swept"

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
		return &PinPathError{fmt.Errorf("--pin-path %s is not on a bpf filesystem: use a path under %s, or mount one with 'mount -t bpf bpf DIR'", pinPath, BPFFSDir)}
	}
	if err := unix.Mount("bpf", BPFFSDir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("the bpf filesystem is not mounted and mounting it at %s failed (%w): run as root, mount it with 'mount -t bpf bpf %s', or pass --no-pin", BPFFSDir, err, BPFFSDir)
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
		return nil, &PinPathError{fmt.Errorf("--pin-path %q must be an absolute path", dir)}
	}
	dir = filepath.Clean(dir)
	// Without the privilege to mount or create, eBPF would not load either:
	// that is said as such. Anything else is the pin path's problem.
	setting := func(err error) error {
		var pe *PinPathError
		if errors.Is(err, fs.ErrPermission) || errors.As(err, &pe) {
			return err
		}
		return &PinPathError{err}
	}
	if err := ensureBPFFS(dir); err != nil {
		return nil, setting(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, setting(fmt.Errorf("create pin directory %s: %w: choose another --pin-path, or pass --no-pin", dir, err))
	}
	p, err := lockPinDir(dir)
	if errors.Is(err, errPinsBusy) {
		return nil, &PinPathError{fmt.Errorf("another workerstats daemon is running with the pins in %s: give each daemon its own --pin-path", dir)}
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

// dropIncompatibleMaps removes the pins of maps whose layout no longer
// matches spec (an upgrade changed a key, a value or a size), so loading
// creates them afresh. Their counts are lost, and it says so.
func (p *pinDir) dropIncompatibleMaps(spec *ebpf.CollectionSpec, log *slog.Logger) error {
	for name, ms := range spec.Maps {
		m, err := ebpf.LoadPinnedMap(p.file(name), nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load pinned map %s: %w", p.file(name), err)
		}
		incompatible := ms.Compatible(m)
		m.Close()
		if incompatible == nil {
			continue
		}
		log.Warn("a pinned map does not fit this version's layout: replacing it, its counts are lost", "map", name, "change", incompatible.Error())
		if err := os.Remove(p.file(name)); err != nil {
			return fmt.Errorf("remove incompatible pinned map %s: %w", p.file(name), err)
		}
	}
	return nil
}

// ownPin reports whether a file in a pin directory is one workerstats pins.
func ownPin(name string) bool {
	switch name {
	case "workers", "conns", "fds", "inflight", "counters", sweptMapName:
		return true
	}
	return strings.HasPrefix(name, linkPinPrefix)
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
	var (
		n       int
		foreign []string
		errs    []error
	)
	// Links first: the programs stop before their maps go.
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
	for _, e := range ents {
		if !ownPin(e.Name()) || e.IsDir() {
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
		return n, fmt.Errorf("%s also holds %s, which workerstats did not pin: left them and the directory in place", dir, strings.Join(foreign, ", "))
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

// hook is one attachment of a program.
type hook struct {
	pin string // file name of its pinned link
	// prog points at the program's field in the loaded objects; when a
	// pinned link running the same program is kept, the field is set to
	// that running program so its statistics are the ones reported.
	prog   **ebpf.Program
	attach func(*ebpf.Program) (link.Link, error)
}

// keepOrReplace attaches hooks with their links pinned in e.pins.
//
// A link already pinned under a hook's name whose program has the same tag
// and uses the same maps as the one just loaded is kept: it never stopped
// counting, and attaching a second copy beside it would count every event
// twice. A pinned link running another program (after an upgrade, or when
// a map had to be replaced) is replaced, and so are links of hooks no longer
// wanted (the hook set changed). Neither tracepoint links nor raw
// tracepoint links can swap their program atomically (BPF_LINK_UPDATE does
// not support them), so replacing one opens a gap or an overlap: attaching
// the new link before detaching the old would run both programs on the
// same maps for a moment, counting those bytes and requests twice and
// upsetting the per-connection state; detaching first leaves the hook
// empty for the time of one attach (microseconds), and what happens in it
// is not counted. workerstats detaches first, links no longer wanted before
// new ones, and logs one warning naming what was replaced: a short,
// reported gap instead of numbers that are silently too high.
func (e *EBPF) keepOrReplace(hooks []hook) error {
	mapIDs, err := e.mapIDs()
	if err != nil {
		return err
	}
	pinned, err := e.pins.pinnedLinks()
	if err != nil {
		return err
	}
	wanted := map[string]bool{}
	// One program may serve several hooks: compare and attach the one just
	// loaded, and once all is done report the statistics of the program
	// that runs (see below).
	loaded := map[**ebpf.Program]*ebpf.Program{}
	running := map[**ebpf.Program]*ebpf.Program{}
	attachedLoaded := map[**ebpf.Program]bool{}
	defer func() {
		for field, r := range running {
			if attachedLoaded[field] {
				r.Close()
				continue
			}
			loaded[field].Close()
			*field = r
		}
	}()
	for _, h := range hooks {
		wanted[h.pin] = true
		loaded[h.prog] = *h.prog
	}
	var dropped []string
	for _, name := range pinned {
		if wanted[name] {
			continue
		}
		if err := os.Remove(e.pins.file(name)); err != nil {
			return fmt.Errorf("unpin link %s: %w", e.pins.file(name), err)
		}
		dropped = append(dropped, name)
	}
	var kept, replaced, added, unpinnable int
	for _, h := range hooks {
		path := e.pins.file(h.pin)
		if slices.Contains(pinned, h.pin) {
			old, err := link.LoadPinnedLink(path, nil)
			if err != nil {
				return fmt.Errorf("load pinned link %s: %w", path, err)
			}
			r, err := sameProgram(old, loaded[h.prog], mapIDs)
			if err != nil {
				old.Close()
				return fmt.Errorf("pinned link %s: %w", path, err)
			}
			if r != nil {
				if prev := running[h.prog]; prev != nil {
					prev.Close()
				}
				running[h.prog] = r
				e.links = append(e.links, old)
				kept++
				continue
			}
			// Detach: the pin and our descriptor are the link's last
			// references.
			if err := old.Unpin(); err != nil {
				old.Close()
				return fmt.Errorf("unpin link %s: %w", path, err)
			}
			old.Close()
			replaced++
		} else {
			added++
		}
		l, err := h.attach(loaded[h.prog])
		if err != nil {
			return err
		}
		attachedLoaded[h.prog] = true
		e.links = append(e.links, l)
		if err := l.Pin(path); err != nil {
			if !errors.Is(err, ebpf.ErrNotSupported) {
				return fmt.Errorf("pin link %s: %w", path, err)
			}
			// Before Linux 5.15 a tracepoint attachment is a perf event
			// ioctl, not a link: it lasts as long as the daemon.
			unpinnable++
		}
	}
	if unpinnable > 0 {
		e.log.Warn("this kernel cannot pin tracepoint attachments (Linux 5.15 and newer can): the maps are pinned, so a restart keeps the counts, but nothing is counted while the daemon is stopped",
			"unpinned", unpinnable)
	}
	switch {
	case replaced > 0 || len(dropped) > 0:
		e.log.Warn("the pinned programs differ from this version's (an upgrade, or another --hooks): replaced them; events in the microseconds between detaching an old program and attaching its successor were not counted",
			"replaced", replaced, "removed", len(dropped), "kept", kept, "added", added, "pin_path", e.pins.path)
	case kept > 0:
		e.log.Info("kept the pinned programs, which counted while the daemon was stopped", "links", kept, "added", added, "pin_path", e.pins.path)
	default:
		e.log.Info("pinned maps and links", "links", added, "pin_path", e.pins.path)
	}
	return nil
}

// sameProgram returns the program a pinned link runs when it is the one
// we loaded (same tag, so the same instructions) working on our maps, and
// nil when it is not.
func sameProgram(l link.Link, ours *ebpf.Program, mapIDs map[ebpf.MapID]bool) (*ebpf.Program, error) {
	li, err := l.Info()
	if err != nil {
		return nil, err
	}
	running, err := ebpf.NewProgramFromID(li.Program)
	if err != nil {
		return nil, fmt.Errorf("open its program %d: %w", li.Program, err)
	}
	ri, err := running.Info()
	if err != nil {
		running.Close()
		return nil, err
	}
	oi, err := ours.Info()
	if err != nil {
		running.Close()
		return nil, err
	}
	same := ri.Tag == oi.Tag && ri.Type == oi.Type
	ids, ok := ri.MapIDs()
	if !ok {
		same = false
	}
	for _, id := range ids {
		if !mapIDs[id] {
			same = false
		}
	}
	if !same {
		running.Close()
		return nil, nil
	}
	return running, nil
}

// mapIDs returns the kernel ids of the maps in use.
func (e *EBPF) mapIDs() (map[ebpf.MapID]bool, error) {
	m := e.objs.ObserverMaps
	ids := map[ebpf.MapID]bool{}
	for _, mp := range []*ebpf.Map{m.Conns, m.Counters, m.Fds, m.Inflight, m.Workers} {
		info, err := mp.Info()
		if err != nil {
			return nil, fmt.Errorf("map info: %w", err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, errors.New("this kernel does not report map ids")
		}
		ids[id] = true
	}
	return ids, nil
}

// CheckAccess performs, once, each kind of bpf(2) call the daemon makes
// while it runs (read, iterate and write the maps; read the programs'
// statistics), so a caller can find out whether they still work with fewer
// capabilities. From Linux 5.19 they need none on descriptors already held
// (seen on Debian 12's 6.1 with kernel.unprivileged_bpf_disabled=2);
// before, with kernel.unprivileged_bpf_disabled set, every bpf(2) call
// needs CAP_BPF.
func (e *EBPF) CheckAccess() error {
	var per []uint64
	if err := e.objs.Counters.Lookup(uint32(0), &per); err != nil {
		return fmt.Errorf("read counters map: %w", err)
	}
	var (
		pid uint32
		w   bpf.ObserverWorker
	)
	it := e.objs.Workers.Iterate()
	it.Next(&pid, &w)
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterate workers map: %w", err)
	}
	// pid 0 is never a worker: updating only an existing entry fails with
	// ENOENT where writing is allowed, EPERM where it is not.
	err := e.objs.Workers.Update(uint32(0), &w, ebpf.UpdateExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("write workers map: %w", err)
	}
	if e.stats != nil {
		if _, err := e.objs.OnFork.Stats(); err != nil {
			return fmt.Errorf("read program statistics: %w", err)
		}
	}
	return nil
}

// Pinned reports whether the kernel objects are pinned, and so outlive the
// daemon.
func (e *EBPF) Pinned() bool { return e.pins != nil }
