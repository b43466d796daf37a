package ebpfkernel

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/workerstats/workerstats/internal/testutil"
	"github.com/workerstats/workerstats/internal/testutil/forkpool"
)

// TestWatchedBitmapFollowsWorkers: the filter every per-event program runs
// first has a worker's bit set for as long as it is a worker, by whichever
// side added it (userspace at Watch, the kernel at fork), and cleared when
// it exits or is forgotten, so a counted process is never filtered out and
// an unwatched one never pays the hash lookup.
func TestWatchedBitmapFollowsWorkers(t *testing.T) {
	testutil.RequireEBPF(t)
	pool := forkpool.Start(t, 2, "")
	k, _ := loadFor(t, hookSets(t)[0], pool)
	bits := func(pid int) [2]bool {
		t.Helper()
		user, forked, err := k.watchedBits(pid)
		if err != nil {
			t.Fatal(err)
		}
		return [2]bool{user, forked}
	}
	first := pool.WaitWorkers(t, 2)
	for _, pid := range first {
		if got := bits(pid); got != [2]bool{true, false} {
			t.Errorf("worker %d added by Watch: bits [user forked] %v, want [true false]", pid, got)
		}
	}
	for _, pid := range []int{pool.Master, os.Getpid()} {
		if got := bits(pid); got != [2]bool{} {
			t.Errorf("pid %d (not a worker): bits %v, want none", pid, got)
		}
	}

	syscall.Kill(pool.Master, syscall.SIGUSR1)
	forked := pool.WaitWorkers(t, 3)[2]
	if got := bits(forked); got != [2]bool{false, true} {
		t.Errorf("worker %d forked while watched: bits %v, want [false true]", forked, got)
	}
	syscall.Kill(forked, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for bits(forked)[1] {
		if time.Now().After(deadline) {
			t.Fatalf("worker %d killed: its kernel bit is still set after 10 s", forked)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if err := k.Forget(first[0]); err != nil {
		t.Fatal(err)
	}
	if got := bits(first[0]); got != [2]bool{} {
		t.Errorf("worker %d forgotten: bits %v, want none", first[0], got)
	}
	if got := bits(first[1]); got != [2]bool{true, false} {
		t.Errorf("worker %d beside it: bits %v, want [true false] (a word is shared by 64 pids)", first[1], got)
	}
}

// watchedBits returns pid's bits in the bitmap: userspace's and the
// kernel's.
func (k *Kernel) watchedBits(pid int) (user, forked bool, err error) {
	var words [2]uint64
	for i := range words {
		if err := k.objs.Watched.Lookup(uint32(pid/64*2+i), &words[i]); err != nil {
			return false, false, fmt.Errorf("read the watched bitmap: %w", err)
		}
	}
	bit := uint64(1) << (pid % 64)
	return words[0]&bit != 0, words[1]&bit != 0, nil
}
