package main

import (
	"net"
	"strings"
	"testing"
)

// Every mistake a user can make on the command line ends in one line on
// stderr that says what is wrong and what to do, and a non-zero exit.
func TestCommandLineMistakesAreOneClearLine(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no pid", []string{"serve"}, "--pid is required"},
		{"missing pid", []string{"serve", "--pid", "999999999"}, "no process with pid 999999999"},
		{"bad pid", []string{"serve", "--pid", "abc"}, `invalid argument "abc" for "--pid"`},
		{"unknown flag", []string{"serve", "--pdi", "1"}, "unknown flag: --pdi"},
		{"bad mode", []string{"serve", "--pid", "1", "--mode", "kernel"}, `--mode "kernel" is not one of auto, ebpf, procfs`},
		{"bad hooks", []string{"serve", "--pid", "1", "--hooks", "kprobe"}, `--hooks "kprobe" is not one of auto, sock, syscall`},
		{"bad stats address", []string{"serve", "--pid", "1", "--stats", "localhost"}, "neither host:port nor a socket path"},
		{"address in use", []string{"serve", "--pid", "1", "--stats", busy.Addr().String()}, "already in use"},
		{"read nothing there", []string{"read", deadAddr}, "connect to stats socket " + deadAddr},
		{"read no address", []string{"read"}, "accepts 1 arg(s), received 0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, err := runCommand(c.args...)
			if err == nil {
				t.Fatalf("exit 0, want an error; output %q", out)
			}
			if lines := strings.Count(out, "\n") + 1; lines != 1 {
				t.Errorf("%d lines, want one:\n%s", lines, out)
			}
			if !strings.HasPrefix(out, "workerstats: ") || !strings.Contains(out, c.want) {
				t.Errorf("got %q, want a line containing %q", out, c.want)
			}
		})
	}
}
