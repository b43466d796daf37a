package ebpfkernel

import (
	"errors"
	"fmt"
	"os"
	"slices"

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
	mapIDs, err := k.mapIDs()
	if err != nil {
		return err
	}
	pinned, err := k.pins.pinnedLinks()
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
		if err := os.Remove(k.pins.file(name)); err != nil {
			return fmt.Errorf("unpin link %s: %w", k.pins.file(name), err)
		}
		dropped = append(dropped, name)
	}
	var kept, replaced, added, unpinnable int
	for _, h := range hooks {
		path := k.pins.file(h.pin)
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
				k.links = append(k.links, old)
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
		k.links = append(k.links, l)
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
		k.log.Warn("this kernel cannot pin tracepoint attachments (Linux 5.15 and newer can): the maps are pinned, so a restart keeps the counts, but nothing is counted while the daemon is stopped",
			"unpinned", unpinnable)
	}
	switch {
	case replaced > 0 || len(dropped) > 0:
		k.log.Warn("the pinned programs differ from this version's (an upgrade, or another hook set): replaced them; events in the microseconds between detaching an old program and attaching its successor were not counted",
			"replaced", replaced, "removed", len(dropped), "kept", kept, "added", added, "pin_path", k.pins.path)
	case kept > 0:
		k.log.Info("kept the pinned programs, which counted while the daemon was stopped", "links", kept, "added", added, "pin_path", k.pins.path)
	default:
		k.log.Info("pinned maps and links", "links", added, "pin_path", k.pins.path)
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
