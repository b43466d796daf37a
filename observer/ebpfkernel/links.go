package ebpfkernel

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// keepOrReplace attaches hooks with their links pinned in k.pins.
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
func (k *Kernel) keepOrReplace(hooks []hook) error {
	r, err := k.newRelink(hooks)
	if err != nil {
		return err
	}
	defer r.settlePrograms()
	if err := r.dropUnwanted(); err != nil {
		return err
	}
	for _, h := range hooks {
		if err := r.relink(h); err != nil {
			return err
		}
	}
	r.report()
	return nil
}

// relinking is one keepOrReplace pass: what it found pinned and what it
// did with it.
type relinking struct {
	k      *Kernel
	mapIDs map[ebpf.MapID]bool
	pinned []string
	wanted map[string]bool
	// One program may serve several hooks: the one just loaded is
	// compared and attached, and once all is done the field reports the
	// statistics of the program that runs (settlePrograms).
	loaded, running map[**ebpf.Program]*ebpf.Program
	attachedLoaded  map[**ebpf.Program]bool

	kept, replaced, added, unpinnable, dropped int
}

func (k *Kernel) newRelink(hooks []hook) (*relinking, error) {
	mapIDs, err := k.mapIDs()
	if err != nil {
		return nil, err
	}
	pinned, err := k.pins.pinnedLinks()
	if err != nil {
		return nil, err
	}
	r := &relinking{k: k, mapIDs: mapIDs, pinned: pinned, wanted: map[string]bool{},
		loaded: map[**ebpf.Program]*ebpf.Program{}, running: map[**ebpf.Program]*ebpf.Program{}, attachedLoaded: map[**ebpf.Program]bool{}}
	for _, h := range hooks {
		r.wanted[h.pin] = true
		r.loaded[h.prog] = *h.prog
	}
	return r, nil
}

// settlePrograms leaves in each program field the program that runs: the
// one loaded where it was attached, else the pinned one kept; the other is
// closed.
func (r *relinking) settlePrograms() {
	for field, running := range r.running {
		if r.attachedLoaded[field] {
			running.Close()
			continue
		}
		r.loaded[field].Close()
		*field = running
	}
}

// dropUnwanted unpins, and so detaches, the links of hooks no longer
// wanted.
func (r *relinking) dropUnwanted() error {
	for _, name := range r.pinned {
		if r.wanted[name] {
			continue
		}
		if err := os.Remove(r.k.pins.file(name)); err != nil {
			return fmt.Errorf("unpin link %s: %w", r.k.pins.file(name), err)
		}
		r.dropped++
	}
	return nil
}

// relink keeps h's pinned link when it runs the same program, else
// detaches it, and attaches and pins h anew.
func (r *relinking) relink(h hook) error {
	path := r.k.pins.file(h.pin)
	if slices.Contains(r.pinned, h.pin) {
		kept, err := r.keep(h, path)
		if err != nil || kept {
			return err
		}
		r.replaced++
	} else {
		r.added++
	}
	l, err := h.attach(r.loaded[h.prog])
	if err != nil {
		return err
	}
	r.attachedLoaded[h.prog] = true
	r.k.addLink(h, l)
	if err := l.Pin(path); err != nil {
		if !errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("pin link %s: %w", path, err)
		}
		// Before Linux 5.15 a tracepoint attachment is a perf event
		// ioctl, not a link: it lasts as long as the daemon.
		r.unpinnable++
	}
	return nil
}

// keep keeps the link pinned at path when it runs the program h just
// loaded, on our maps; otherwise it detaches it and reports false.
func (r *relinking) keep(h hook, path string) (bool, error) {
	old, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return false, r.k.pins.foreign(filepath.Base(path), "link", err)
	}
	running, err := sameProgram(old, r.loaded[h.prog], r.mapIDs, r.k.consts)
	if err != nil {
		old.Close()
		return false, fmt.Errorf("pinned link %s: %w", path, err)
	}
	if running != nil {
		if prev := r.running[h.prog]; prev != nil {
			prev.Close()
		}
		r.running[h.prog] = running
		r.k.addLink(h, old)
		r.kept++
		return true, nil
	}
	// Detach: the pin and our descriptor are the link's last references.
	defer old.Close()
	if err := old.Unpin(); err != nil {
		return false, fmt.Errorf("unpin link %s: %w", path, err)
	}
	return false, nil
}

// report logs what the pass did, warning of what was not counted.
func (r *relinking) report() {
	log, dir := r.k.log, r.k.pins.path
	if r.unpinnable > 0 {
		log.Warn("this kernel cannot pin tracepoint attachments (Linux 5.15 and newer can): the maps are pinned, so a restart keeps the counts, but nothing is counted while the daemon is stopped; the raw hooks, which auto picks here, can be pinned",
			"unpinned", r.unpinnable)
	}
	switch {
	case r.replaced > 0 || r.dropped > 0:
		log.Warn("the pinned programs differ from this version's (an upgrade, or another hook set): replaced them; events in the microseconds between detaching an old program and attaching its successor were not counted",
			"replaced", r.replaced, "removed", r.dropped, "kept", r.kept, "added", r.added, "pin_path", dir)
	case r.kept > 0:
		log.Info("kept the pinned programs, which counted while the daemon was stopped", "links", r.kept, "added", r.added, "pin_path", dir)
	default:
		log.Info("pinned maps and links", "links", r.added, "pin_path", dir)
	}
}

// sameProgram returns the program a pinned link runs when it is the one
// we loaded (same tag, so the same instructions) working on our maps with
// our constants (consts, .rodata), and nil when it is not.
func sameProgram(l link.Link, ours *ebpf.Program, mapIDs map[ebpf.MapID]bool, consts []byte) (*ebpf.Program, error) {
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
		if !mapIDs[id] && !sameConstants(id, consts) {
			same = false
		}
	}
	if !same {
		running.Close()
		return nil, nil
	}
	return running, nil
}

// sameConstants says whether map id is a program's constants (.rodata,
// which the kernel may name without its dot) holding consts.
func sameConstants(id ebpf.MapID, consts []byte) bool {
	m, err := ebpf.NewMapFromID(id)
	if err != nil {
		return false
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil || strings.TrimPrefix(info.Name, ".") != "rodata" || int(info.ValueSize) != len(consts) {
		return false
	}
	v := make([]byte, len(consts))
	return m.Lookup(uint32(0), v) == nil && bytes.Equal(v, consts)
}

// mapIDs returns the kernel ids of the maps in use.
func (k *Kernel) mapIDs() (map[ebpf.MapID]bool, error) {
	ids := map[ebpf.MapID]bool{}
	for _, mp := range k.maps {
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
