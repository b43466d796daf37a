package ebpfkernel

import (
	"fmt"

	"github.com/workerstats/workerstats/bpf"
)

// pidLimit is the programs' PID_LIMIT, which sizes the watched bitmap: the
// kernel's PID_MAX_LIMIT on 64-bit, which no pid reaches.
const pidLimit = int(bpf.ObserverPidLimitPID_LIMIT)

// The watched bitmap's layout (enum key_layout): a bit per pid in words of
// wordBits, each word of userspace's beside the kernel's.
const (
	wordBits = int(bpf.ObserverKeyLayoutWATCHED_WORD_BITS)
	halves   = int(bpf.ObserverKeyLayoutWATCHED_HALVES)
)

// markWatched sets (on) or clears pid's bit in userspace's half of the
// watched bitmap, the filter every per-event program runs first (see
// watched in bpf/lib/maps.h): a worker added here is counted only once its
// bit is set. The kernel's half, set at fork and cleared at exit, is never
// written here, so neither side overwrites the other's bits.
func (k *Kernel) markWatched(pid int, on bool) error {
	if pid <= 0 || pid >= pidLimit {
		return fmt.Errorf("pid %d is outside 1..%d", pid, pidLimit-1)
	}
	key := uint32(pid / wordBits * halves)
	bit := uint64(1) << (pid % wordBits)
	k.bitsMu.Lock()
	defer k.bitsMu.Unlock()
	var word uint64
	if err := k.objs.Watched.Lookup(key, &word); err != nil {
		return fmt.Errorf("read the watched bitmap: %w", err)
	}
	next := word &^ bit
	if on {
		next = word | bit
	}
	if next == word {
		return nil
	}
	if err := k.objs.Watched.Put(key, next); err != nil {
		return fmt.Errorf("write the watched bitmap: %w", err)
	}
	return nil
}
