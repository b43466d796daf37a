package ebpfkernel

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/workerstats/workerstats/bpf"
	"github.com/workerstats/workerstats/internal/testutil"
)

// The drops on_listener_drop counts are those made inside tcp_v4_rcv or
// tcp_v6_rcv: each function's range runs to the next symbol of the
// kernel's text, whatever order kallsyms lists them in (a module's too),
// and neither data nor hidden addresses count.
func TestTextRangesFromKallsyms(t *testing.T) {
	kallsyms := `ffffffff81a00000 T tcp_v4_do_rcv
ffffffff81a01200 T tcp_v4_rcv
ffffffff81a00800 t tcp_v4_fill_cb
ffffffff81a02000 D some_data_after
ffffffff81a02400 t tcp_v4_early_demux
ffffffffc0001000 t tcp_v6_rcv	[ipv6]
ffffffffc0002000 t other	[ipv6]
`
	got, err := textRanges(strings.NewReader(kallsyms), "tcp_v4_rcv", "tcp_v6_rcv")
	if err != nil {
		t.Fatal(err)
	}
	if want := (textRange{at: 0xffffffff81a01200, len: 0x1200}); got[0] != want {
		t.Errorf("tcp_v4_rcv: %+v, want %+v (up to the next text symbol, not the data one)", got[0], want)
	}
	if want := (textRange{at: 0xffffffffc0001000, len: 0x1000}); got[1] != want {
		t.Errorf("tcp_v6_rcv in a module: %+v, want %+v", got[1], want)
	}
	hidden, err := textRanges(strings.NewReader("0000000000000000 T tcp_v4_rcv\n0000000000000000 T tcp_v4_early_demux\n"), "tcp_v4_rcv")
	if err != nil {
		t.Fatal(err)
	}
	if hidden[0] != (textRange{}) {
		t.Errorf("with addresses hidden: %+v, want none", hidden[0])
	}
}

// TestRefusedRefusalProgramsLeftOut: a verifier's refusal of a program
// that counts listen refusals leaves it out of the next load, said in one
// line, with its hooks and the exactness of listen_queue_errors; each
// group once. A refusal of any other program is the load's error.
func TestRefusedRefusalProgramsLeftOut(t *testing.T) {
	refused := func(prog string) error {
		return fmt.Errorf("program %s: load program: %w", prog,
			&ebpf.VerifierError{Cause: errors.New("permission denied"), Log: []string{"func 'tcp_v6_syn_recv_sock' arg6 type FUNC_PROTO is not a struct"}})
	}
	log := testutil.NewLog(t)
	k := &Kernel{hooks: HooksFentry, listenerDrops: true, log: log.Logger}
	if k.leaveOut(refused(bpf.ObserverProgOnInetSend)) {
		t.Error("a byte-counting program left out")
	}
	if !k.leaveOut(refused(bpf.ObserverProgOnAckRefused6)) || !k.exactRefusals() {
		t.Error("on_ack_refused6 not left out, or listen errors no longer exact with on_listener_drop running")
	}
	for _, h := range k.fentryHooks() {
		if refusalPrograms[h.name] {
			t.Errorf("%s still attached", h.name)
		}
	}
	if k.leaveOut(refused(bpf.ObserverProgOnSynRefused)) {
		t.Error("the refusal programs left out twice")
	}
	if !k.leaveOut(refused(bpf.ObserverProgOnListenerDrop)) || k.exactRefusals() {
		t.Error("on_listener_drop not left out, or listen errors still said exact")
	}
	if n := strings.Count(log.String(), "left out"); n != 2 {
		t.Errorf("said %d times, want once per program left out:\n%s", n, log.String())
	}
	if k.leaveOut(errors.New("program on_syn_refused: map queue_waits: no such file")) {
		t.Error("a load error that is no verifier's refusal taken as one")
	}
}
