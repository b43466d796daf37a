package observer

import (
	"errors"
	"fmt"
	"io/fs"
)

// ListenerScanner is a Kernel that finds, from the kernel side, which
// listening sockets a pool's workers hold: for a pool whose fd tables the
// daemon may not read, once it has dropped the privileges that takes.
// ScanListeners asks, and the next connection one of master's workers
// takes answers; ScannedListeners is the answer's socket inodes, ok false
// until it has come.
type ListenerScanner interface {
	ScanListeners(master int) error
	ScannedListeners(master int) (inodes []uint64, ok bool, err error)
}

// ListenerReader is a Kernel that reads, in the kernel, the listening
// sockets its scan found for a pool (any network namespace, no
// privilege): ok false until a scan answered for master. Each Socket is
// named as ListeningByInode names it, NetNS set; those closed since the
// scan are left out. On a kernel that cannot run the reader every call
// returns the same error, which wraps errors.ErrUnsupported: read them
// with sock_diag instead.
type ListenerReader interface {
	ReadListeners(master int) (socks []Socket, ok bool, err error)
}

// listenerState is what a pool knows of its master's listening sockets.
type listenerState struct {
	of     int             // the master they are of
	inodes map[uint64]bool // the sockets' inodes; nil while unknown
	asked  bool            // a ListenerScanner was asked, its answer not read
	stale  bool            // a worker came since they were read: ask again
	unread bool            // the fd tables may not be read
	// foreign: the master is in another network namespace than the
	// daemon, where sock_diag cannot see: only the kernel's reader can.
	foreign  bool
	noReader bool   // the kernel cannot read listeners (said once)
	cwd      string // the master's working directory, read at its adoption
	noCwd    bool   // it may not be read
}

// Why a master's figures are missing from its dump (ObserverInfo.Unknown).
const (
	whySocketsUnread  = "the daemon may not read the master's fd table (it keeps no CAP_SYS_PTRACE): they are read in the kernel at the next connection one of its workers takes"
	whySocketsForeign = "the master is in another network namespace (a container), where the daemon does not go: they are read in the kernel at the next connection one of its workers takes"
	whyBacklogForeign = "the master is in another network namespace (a container), whose listeners' backlogs and drops only the eBPF kernel reads: max_queue and listen_queue_errors are 0"
	whyCwdUnread      = "reading another user's working directory takes CAP_SYS_PTRACE, which the daemon did not hold when it found the master (it keeps none once started)"
)

// adoptListeners starts p.listen over for master m, reading its working
// directory while it may.
func (p *Pool) adoptListeners(m Proc) {
	p.listen = listenerState{of: m.PID}
	var err error
	p.listen.cwd, err = p.Proc.Cwd(m.PID)
	p.listen.noCwd = errors.Is(err, fs.ErrPermission)
	p.listen.foreign = p.Proc.OtherNetNS(m.PID)
}

// kernelListeners returns the listening sockets a ListenerReader kernel
// reads for the pool, in whichever network namespace they are, once the
// kernel's scan of a worker's fds has answered (asked here when none has,
// or a worker came since): ok false until then, or without a reader.
func (p *Pool) kernelListeners() ([]Socket, bool) {
	lr, ok := p.Kernel.(ListenerReader)
	if !ok || p.listen.noReader {
		return nil, false
	}
	if err := p.scanListeners(); err != nil {
		p.Log.Debug("cannot ask the kernel for the listeners", "master", p.master.PID, "error", err)
	}
	socks, ok, err := lr.ReadListeners(p.master.PID)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		p.listen.noReader = true
		p.Log.Info("the kernel cannot read listening sockets; sock_diag reads them, in the daemon's network namespace only", "reason", err)
		return nil, false
	case err != nil:
		p.Log.Debug("cannot read the listeners in the kernel", "master", p.master.PID, "error", err)
		return nil, false
	}
	return socks, ok
}

// listeners returns the current master's listening sockets that worker (0:
// none known) holds too, with their queues: as the kernel reads them once
// its scan has answered; else from the fd tables while the daemon may read
// them, looked up with sock_diag (the daemon's network namespace) or in
// the master's own /proc/PID/net tables (another one, without the
// kernel's reader); else from the kernel's answer, asked for here.
func (p *Pool) listeners(worker int) ([]Socket, error) {
	l := &p.listen
	if l.of != p.master.PID {
		p.adoptListeners(p.master)
	}
	if socks, ok := p.kernelListeners(); ok {
		return socks, nil
	}
	if l.foreign && p.readsListeners() {
		return nil, fmt.Errorf("listening sockets of pid %d: %s", p.master.PID, whySocketsForeign)
	}
	var with []int
	if worker != 0 {
		with = []int{worker}
	}
	inodes, err := p.Proc.SharedSocketInodes(p.master.PID, with...)
	switch {
	case err == nil:
		l.inodes, l.stale, l.unread = inodes, false, false
	case errors.Is(err, fs.ErrPermission):
		l.unread = true
		if err := p.scanListeners(); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	if l.inodes == nil {
		return nil, fmt.Errorf("listening sockets of pid %d: %s", p.master.PID, whySocketsUnread)
	}
	if l.foreign {
		return p.Proc.ListeningInNetNSOf(p.master.PID, l.inodes)
	}
	return p.Proc.ListeningByInode(l.inodes)
}

// readsListeners reports whether the kernel reads the pools' listeners
// itself (the eBPF kernel, where it can).
func (p *Pool) readsListeners() bool {
	_, ok := p.Kernel.(ListenerReader)
	return ok && !p.listen.noReader
}

// scanListeners asks the kernel side which listeners the workers hold
// when none are known or a worker came since, and takes its answer when
// it has come.
func (p *Pool) scanListeners() error {
	l := &p.listen
	ls, ok := p.Kernel.(ListenerScanner)
	if !ok {
		return nil
	}
	if !l.asked && (l.inodes == nil || l.stale) {
		if err := ls.ScanListeners(l.of); err != nil {
			return err
		}
		l.asked, l.stale = true, false
	}
	if !l.asked {
		return nil
	}
	inodes, ok, err := ls.ScannedListeners(l.of)
	if err != nil || !ok {
		return err
	}
	l.asked = false
	l.inodes = map[uint64]bool{}
	for _, ino := range inodes {
		l.inodes[ino] = true
	}
	return nil
}

// unknown says which of the master's figures its dump leaves out, and why.
func (p *Pool) unknown() map[string]string {
	out := map[string]string{}
	switch {
	case p.listen.foreign && p.listen.inodes == nil:
		out["sockets"] = whySocketsForeign
	case p.listen.foreign && !p.readsListeners():
		out["max_queue"] = whyBacklogForeign
	case p.listen.unread && p.listen.inodes == nil:
		out["sockets"] = whySocketsUnread
	}
	if p.listen.noCwd {
		out["cwd"] = whyCwdUnread
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
