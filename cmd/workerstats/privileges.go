package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"
	"kernel.org/pub/linux/libs/security/libcap/cap"
)

// hostOptions are serve's flags for what the daemon does to the host:
// pinning its kernel objects, and the user and capabilities it keeps.
type hostOptions struct {
	pinPath string
	noPin   bool
	user    string
}

func (h *hostOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&h.pinPath, "pin-path", defaultPinPath, "bpffs directory where the kernel maps and links are pinned, so counting goes on while the daemon is stopped or restarted ('workerstats cleanup' removes them)")
	f.BoolVar(&h.noPin, "no-pin", false, "pin nothing: the programs detach and the counts are gone when the daemon stops")
	f.StringVar(&h.user, "user", "", "once the programs are attached and the sockets bound, run as this user (name or uid) with only the capabilities the daemon still needs")
}

// resolve checks the flags and returns the pin directory ("" for --no-pin)
// and the account --user names (nil without --user). pinPathSet says
// whether --pin-path was given on the command line.
func (h hostOptions) resolve(pinPathSet bool) (pin string, as *account, err error) {
	if h.noPin {
		if pinPathSet {
			return "", nil, errors.New("--no-pin and --pin-path exclude each other")
		}
	} else {
		pin = h.pinPath
	}
	if h.user != "" {
		if as, err = lookupAccount(h.user); err != nil {
			return "", nil, err
		}
	}
	return pin, as, nil
}

// account is the user --user names.
type account struct {
	name     string
	uid, gid int
	groups   []int // supplementary groups, from the group database
}

func lookupAccount(name string) (*account, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			u, err = user.LookupId(name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("--user %q: no such user: name an existing one (nobody, or a system user made with 'useradd --system workerstats')", name)
	}
	a := &account{name: u.Username}
	if a.uid, err = strconv.Atoi(u.Uid); err != nil {
		return nil, fmt.Errorf("--user %q: uid %q: %w", name, u.Uid, err)
	}
	if a.gid, err = strconv.Atoi(u.Gid); err != nil {
		return nil, fmt.Errorf("--user %q: gid %q: %w", name, u.Gid, err)
	}
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("--user %q: groups: %w", name, err)
	}
	for _, g := range gids {
		if n, err := strconv.Atoi(g); err == nil && n != a.gid {
			a.groups = append(a.groups, n)
		}
	}
	return a, nil
}

// checkRemovable checks, before anything is bound, that every Unix stats
// socket can still be removed at shutdown by the user the daemon will run
// as (as; nil keeps its uid), without the capabilities it drops.
func checkRemovable(specs []poolSpec, as *account) error {
	for _, s := range specs {
		if !s.addr.Path() {
			continue
		}
		if err := removableAfterDrop(s.addr.Address, as, s.opts.StatsChown); err != nil {
			return err
		}
	}
	return nil
}

// removableAfterDrop returns an error when a socket created at path, owned
// by its --stats-chown user or else by the daemon, could not be unlinked by
// the daemon once it runs as a (nil: keeps its uid) without
// CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER: every directory
// above it must be searchable by it, its own directory writable, and a
// sticky directory must be its own or the socket its own. A directory with
// an ACL is left to the kernel to judge.
func removableAfterDrop(path string, a *account, chown string) error {
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil {
		return nil // binding will say what is wrong
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	uid, gids, who := dropIDs(a)
	sockUID := os.Geteuid() // bound before any switch
	if name, _, _ := strings.Cut(chown, ":"); name != "" {
		if u, err := user.Lookup(name); err == nil {
			sockUID, _ = strconv.Atoi(u.Uid)
		} else if n, err := strconv.Atoi(name); err == nil {
			sockUID = n
		}
	}
	can := allowed(dir, uid, gids, 0o2)
	if can && fi.Mode()&os.ModeSticky != 0 && uint32(uid) != st.Uid && sockUID != uid {
		return fmt.Errorf("the stats socket %s could not be removed at shutdown: %s is sticky and the socket would not be %s's: add --stats-chown %s, or use a directory %s owns", path, dir, who, who, who)
	}
	if !can {
		return fmt.Errorf("the stats socket %s could not be removed at shutdown: its directory %s is not writable by %s once the daemon drops its privileges: use a directory %s owns (install -d -o %s /run/workerstats)", path, dir, who, who, who)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if !allowed(d, uid, gids, 0o1) {
			return fmt.Errorf("the stats socket %s could not be removed at shutdown: %s is not searchable by %s once the daemon drops its privileges: use a directory %s can reach (install -d -o %s /run/workerstats)", path, d, who, who, who)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// dropIDs are the uid and groups the daemon runs as once it has dropped
// its privileges, as --user (a; nil: its own) makes them, and how to name
// that user.
func dropIDs(a *account) (uid int, gids []int, who string) {
	uid, gids = os.Geteuid(), []int{os.Getegid()}
	who = "uid " + strconv.Itoa(uid)
	if a != nil {
		return a.uid, append([]int{a.gid}, a.groups...), a.name
	}
	if g, err := os.Getgroups(); err == nil {
		gids = append(gids, g...)
	}
	return uid, gids, who
}

// allowed says whether uid (in gids) has the permission bits want (0o1
// search, 0o2 write) on dir, by its mode, without capabilities. A
// directory with an ACL, or one that cannot be read, is left to the
// kernel to judge (true).
func allowed(dir string, uid int, gids []int, want os.FileMode) bool {
	fi, err := os.Stat(dir)
	if err != nil {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return true
	}
	if _, err := unix.Getxattr(dir, "system.posix_acl_access", nil); err == nil {
		return true
	}
	perm := fi.Mode().Perm()
	switch {
	case uint32(uid) == st.Uid:
		return perm&(want<<6) != 0
	case slices.Contains(gids, int(st.Gid)):
		return perm&(want<<3) != 0
	default:
		return perm&want != 0
	}
}

// The capabilities the running daemon still needs, once its programs are
// attached and its sockets bound. Counting through eBPF, none that acts on
// another process or file:
//
//   - which listening sockets a pool's workers hold is read in the kernel,
//     from a worker's own file table, for a pool found after start-up
//     (observer.ListenerScanner); its working directory is read at its
//     adoption, while the daemon may, or left out with the reason;
//   - sock_diag dumps (the listeners' queues) need none; nor do closing
//     descriptors and removing the daemon's own socket at shutdown;
//   - CAP_BPF only where the kernel wants it for bpf(2) calls on the maps
//     it holds (before Linux 5.19, with kernel.unprivileged_bpf_disabled
//     set): reading the counters, and writing the workers map when a
//     restarted master is followed. A probe decides.
//
// procfs mode counts a worker's connections from its fd table: it keeps
// CAP_SYS_PTRACE (another user's /proc/PID/fd links) and
// CAP_DAC_READ_SEARCH (listing /proc/PID/fd, mode 0500).
var procfsCaps = []cap.Value{cap.SYS_PTRACE, cap.DAC_READ_SEARCH}

// accessChecker is the eBPF observer as dropPrivileges probes it: does
// bpf(2) on the descriptors it holds still work without CAP_BPF?
type accessChecker interface {
	CheckAccess() error
}

// dropPrivileges switches to as (--user), if given, and keeps only the
// capabilities the running daemon needs: in the effective and permitted
// sets, and in the bounding set, so nothing it could run gets the others
// back. Inheritable and ambient are cleared and no_new_privs set. libcap's
// psx applies every change to all of the Go runtime's threads, since the
// kernel keeps credentials per thread. k is the eBPF observer (nil in
// procfs mode), probed for whether it still needs CAP_BPF.
//
// The steps run in this order, each needing capabilities a later one gives
// up: the user switch needs CAP_SETUID and CAP_SETGID, the probe runs as
// that user with CAP_BPF still permitted, and shrinking the bounding set
// needs CAP_SETPCAP, which the final sets leave out.
func dropPrivileges(as *account, k accessChecker, log *slog.Logger) error {
	have := cap.GetProc()
	var keep []cap.Value
	if k == nil {
		for _, v := range procfsCaps {
			if permitted(have, v) {
				keep = append(keep, v)
			}
		}
	}
	if as != nil {
		if err := switchUser(have, as); err != nil {
			return err
		}
	}
	keep, err := keepBPFIfNeeded(have, keep, k)
	if err != nil {
		return err
	}
	if err := shrinkBounding(have, keep, log); err != nil {
		return err
	}
	if err := setFinalCaps(keep); err != nil {
		return err
	}
	logDropped(log, keep, as)
	return nil
}

// permitted says whether v is in have's permitted set.
func permitted(have *cap.Set, v cap.Value) bool {
	on, _ := have.GetFlag(cap.Permitted, v)
	return on
}

// switchUser sets the groups and the uid to as's; the capabilities
// permitted (have) must include CAP_SETUID and CAP_SETGID.
func switchUser(have *cap.Set, as *account) error {
	if !permitted(have, cap.SETUID) || !permitted(have, cap.SETGID) {
		return fmt.Errorf("--user %s needs CAP_SETUID and CAP_SETGID: run workerstats as root", as.name)
	}
	if err := cap.SetGroups(as.gid, as.groups...); err != nil {
		return fmt.Errorf("--user %s: set groups: %w", as.name, err)
	}
	if err := cap.SetUID(as.uid); err != nil {
		return fmt.Errorf("--user %s: set uid: %w", as.name, err)
	}
	return nil
}

// keepBPFIfNeeded probes k (nil in procfs mode), with only keep effective,
// and returns keep with CAP_BPF added if bpf(2) fails with EPERM without
// it. Without CAP_BPF permitted (have), there is nothing to decide.
func keepBPFIfNeeded(have *cap.Set, keep []cap.Value, k accessChecker) ([]cap.Value, error) {
	// Does bpf(2) on the descriptors held still work without CAP_BPF?
	if k == nil || !permitted(have, cap.BPF) {
		return keep, nil
	}
	if err := setCaps(have, keep, nil); err != nil {
		return nil, err
	}
	err := k.CheckAccess()
	switch {
	case err == nil:
	case errors.Is(err, unix.EPERM):
		keep = append(keep, cap.BPF)
	default:
		return nil, err
	}
	return keep, nil
}

// shrinkBounding drops from the bounding set every capability but keep,
// raising CAP_SETPCAP to do so; without CAP_SETPCAP permitted (have) the
// bounding set stays as it is.
func shrinkBounding(have *cap.Set, keep []cap.Value, log *slog.Logger) error {
	if !permitted(have, cap.SETPCAP) {
		log.Debug("no CAP_SETPCAP: the bounding set stays as it is")
		return nil
	}
	if err := setCaps(have, append(slices.Clone(keep), cap.SETPCAP), nil); err != nil {
		return err
	}
	return dropBoundExcept(keep)
}

// narrowBounding drops from the bounding set, at the daemon's start, every
// capability dropPrivileges could not keep (procfsCaps, CAP_BPF) or need
// (CAP_SETPCAP); the bounding set limits only what an execve gains, so
// nothing the daemon does before then needs them. It runs early because
// each drop is a system call on every thread of the process, and the
// daemon has a few threads at its start but a dozen once its programs are
// attached, each attachment from a thread of its own: in a 5.10 guest
// under emulation the 38 drops took 3.0 s of a 6.5 s start at the end,
// 1.4 s at the start. Without CAP_SETPCAP effective it leaves everything to
// dropPrivileges.
func narrowBounding() error {
	if on, _ := cap.GetProc().GetFlag(cap.Effective, cap.SETPCAP); !on {
		return nil
	}
	return dropBoundExcept(append(slices.Clone(procfsCaps), cap.BPF, cap.SETPCAP))
}

// dropBoundExcept drops every capability but keep from the bounding set,
// skipping those already out of it; CAP_SETPCAP must be effective.
func dropBoundExcept(keep []cap.Value) error {
	for v := cap.Value(0); v < cap.MaxBits(); v++ {
		if slices.Contains(keep, v) {
			continue
		}
		if in, err := cap.GetBound(v); err == nil && !in {
			continue
		}
		if err := cap.DropBound(v); err != nil {
			return fmt.Errorf("drop %s from the bounding set: %w", v, err)
		}
	}
	return nil
}

// setFinalCaps clears the ambient set, leaves exactly keep effective and
// permitted (inheritable empty), and sets no_new_privs.
func setFinalCaps(keep []cap.Value) error {
	if err := cap.ResetAmbient(); err != nil {
		return fmt.Errorf("clear the ambient capabilities: %w", err)
	}
	if err := setCaps(nil, keep, keep); err != nil {
		return err
	}
	if _, err := cap.Prctlw(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set no_new_privs: %w", err)
	}
	return nil
}

// logDropped logs the capabilities kept and the ids the daemon now runs
// as, with the --user name if given.
func logDropped(log *slog.Logger, keep []cap.Value, as *account) {
	names := make([]string, len(keep))
	for i, v := range keep {
		names[i] = v.String()
	}
	attrs := []any{"keep", strings.Join(names, ","), "uid", os.Geteuid(), "gid", os.Getegid()}
	if as != nil {
		attrs = append(attrs, "user", as.name)
	}
	log.Info("dropped privileges", attrs...)
}

// setCaps sets the process's capabilities on every thread: effective
// raised, permitted as in from (nil: exactly perm); inheritable empty.
func setCaps(from *cap.Set, raised, perm []cap.Value) error {
	c := cap.NewSet()
	if from != nil {
		if err := c.FillFlag(cap.Permitted, from, cap.Permitted); err != nil {
			return err
		}
	} else if err := c.SetFlag(cap.Permitted, true, perm...); err != nil {
		return err
	}
	if err := c.SetFlag(cap.Effective, true, raised...); err != nil {
		return err
	}
	if err := c.SetProc(); err != nil {
		return fmt.Errorf("set capabilities to %s: %w", c, err)
	}
	return nil
}
