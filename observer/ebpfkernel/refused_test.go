package ebpfkernel

import (
	"strings"
	"testing"
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
