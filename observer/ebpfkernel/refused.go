package ebpfkernel

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/observer"
)

// Connection attempts a watched listener's full accept queue refused (see
// bpf/refused.c): under the fentry set the kernel counts each where it is
// made; under the others, where the kfree_skb tracepoint names the socket
// a packet was dropped on, it counts the listener's drops that were none,
// which its sk_drops less are its refusals. Elsewhere the listener's
// sk_drops stand for them, with the stray segments it also counts.

// textRange is where a function is in the kernel's text.
type textRange struct{ at, len uint64 }

// receivers are tcp_v4_rcv's and tcp_v6_rcv's ranges (a zero one for a
// kernel without IPv6).
type receivers [2]textRange

// probeListenerDrops says where tcp_v4_rcv and tcp_v6_rcv are, for
// on_listener_drop to run; or why it cannot: the kfree_skb tracepoint
// names no socket before 6.11, and without kallsyms' addresses (the
// daemon not root, kptr_restrict=2) the drops on a listener are not told
// from the rest.
func probeListenerDrops(spec *btf.Spec) (receivers, error) {
	if !kfreeSkbNamesSocket(spec) {
		return receivers{}, errors.New("the kfree_skb tracepoint names no socket here (it does from Linux 6.11)")
	}
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return receivers{}, fmt.Errorf("read the kernel's symbols: %w", err)
	}
	defer f.Close()
	r, err := textRanges(f, "tcp_v4_rcv", "tcp_v6_rcv")
	if err != nil {
		return receivers{}, err
	}
	if r[0].len == 0 {
		return receivers{}, errors.New("/proc/kallsyms shows no address for tcp_v4_rcv (kernel.kptr_restrict hides them)")
	}
	return receivers{r[0], r[1]}, nil
}

// kfreeSkbNamesSocket reports whether the kfree_skb tracepoint's last
// argument is the socket a packet was dropped on: (void *, skb, location,
// reason, struct sock *rx_sk).
func kfreeSkbNamesSocket(spec *btf.Spec) bool {
	var td *btf.Typedef
	if spec.TypeByName("btf_trace_kfree_skb", &td) != nil {
		return false
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return false
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	if !ok || len(proto.Params) != 5 {
		return false
	}
	sk, ok := btf.UnderlyingType(proto.Params[4].Type).(*btf.Pointer)
	if !ok {
		return false
	}
	st, ok := btf.UnderlyingType(sk.Target).(*btf.Struct)
	return ok && st.Name == "sock"
}

// textRanges reads kallsyms (lines "address type name [module]") for where
// each of names starts and how long it is: up to the next symbol of the
// kernel's or a module's text. A name not found, or found at address 0
// (hidden), has a zero range.
func textRanges(kallsyms io.Reader, names ...string) ([]textRange, error) {
	out := make([]textRange, len(names))
	var text []uint64
	sc := bufio.NewScanner(kallsyms)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || (f[1] != "t" && f[1] != "T") {
			continue // data's
		}
		at, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil || at == 0 {
			continue
		}
		text = append(text, at)
		for i, n := range names {
			if f[2] == n {
				out[i].at = at
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read the kernel's symbols: %w", err)
	}
	for i := range out {
		if out[i].at == 0 {
			continue
		}
		next := uint64(0)
		for _, at := range text {
			if at > out[i].at && (next == 0 || at < next) {
				next = at
			}
		}
		if next != 0 {
			out[i].len = next - out[i].at
		}
	}
	return out, nil
}

// exactRefusals says whether the kernel side counts refusals: under the
// fentry set, or where on_listener_drop runs.
func (k *Kernel) exactRefusals() bool {
	return k.hooks == HooksFentry && !k.noRefusals || k.listenerDrops
}

// refusalPrograms are the fentry set's programs that count refusals.
var refusalPrograms = map[string]bool{
	bpf.ObserverProgOnSynRefused: true, bpf.ObserverProgOnAckRefused: true, bpf.ObserverProgOnAckRefused6: true,
}

// refusedProgram finds the program a load error names.
var refusedProgram = regexp.MustCompile(`program (\w+): `)

// leaveOut says whether load error err is a verifier's refusal of a
// program that counts refusals, which the rest can do without: those
// programs are left out of the next load (listen_queue_errors are then
// the listeners' sk_drops), and it says so in one line. Each is left out
// once: a second refusal is the load's error.
func (k *Kernel) leaveOut(err error) bool {
	var ve *ebpf.VerifierError
	m := refusedProgram.FindStringSubmatch(err.Error())
	if !errors.As(err, &ve) || m == nil {
		return false
	}
	switch {
	case m[1] == bpf.ObserverProgOnListenerDrop && k.listenerDrops:
		k.listenerDrops = false
	case refusalPrograms[m[1]] && !k.noRefusals:
		k.noRefusals = true
	default:
		return false
	}
	k.log.Warn("the kernel's verifier refused a program that counts listen refusals: left out, listen_queue_errors are the listeners' drops",
		"program", m[1], "verifier", ve.Error())
	return true
}

// ListenErrors implements observer.RefusalCounter: the connection attempts
// s's full accept queue refused since the kernel side first watched it;
// false where it cannot tell them from s's other drops.
func (k *Kernel) ListenErrors(s observer.Socket) (uint64, bool) {
	key, ok := k.listenKey(s)
	if !ok || !k.exactRefusals() {
		return 0, false
	}
	v, ok := k.queueCounts(key)
	if !ok {
		return 0, false
	}
	if k.hooks == HooksFentry {
		return v.Refused, true
	}
	n := uint64(0)
	if s.Drops > v.Strays {
		n = s.Drops - v.Strays
	}
	// sk_drops was read before the strays: a stray since then makes the
	// difference smaller for a moment, never larger. A counter does not
	// go back.
	k.queueMu.Lock()
	defer k.queueMu.Unlock()
	if k.refusedSeen == nil {
		k.refusedSeen = map[listenKey]uint64{}
	}
	n = max(n, k.refusedSeen[key])
	k.refusedSeen[key] = n
	return n, true
}

// probeRefusals sets k.listenerDrops where a hook set other than fentry
// can count refusals, and says once where listen_queue_errors are the
// listeners' sk_drops instead.
func (k *Kernel) probeRefusals() {
	if k.hooks == HooksFentry {
		return
	}
	var err error
	k.rcv, err = listenerDropsHere()
	k.listenerDrops = err == nil
	if err != nil {
		k.log.Info("listen_queue_errors are the listeners' dropped packets, which a load that closes its connections inflates with stray segments", "why", err)
	}
}

// listenerDropsHere is probeListenerDrops on the running kernel.
func listenerDropsHere() (receivers, error) {
	spec, err := kernelBTF()
	if err != nil {
		return receivers{}, err
	}
	return probeListenerDrops(spec)
}

// RefusalsCounted says why, under hooks, listen_queue_errors are not the
// refusals alone; nil where they are.
func RefusalsCounted(hooks string) error {
	if hooks == HooksFentry {
		return nil
	}
	_, err := listenerDropsHere()
	return err
}
