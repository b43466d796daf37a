package bench

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/workerstats/workerstats/internal/testutil"
)

// floorServer is the least a stats server can do per read, in C: a
// blocking accept, one write of a fixed dump, close. Its CPU per read is
// the kernel's TCP work, which every stats server pays and no code of
// ours can go under.
const floorServer = `#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
	FILE *f = fopen(argv[1], "r");
	static char buf[1 << 22];
	size_t n = fread(buf, 1, sizeof buf, f);
	int ln = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(ln, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof a;
	if (bind(ln, (struct sockaddr *)&a, sizeof a) || listen(ln, 4096) || getsockname(ln, (struct sockaddr *)&a, &len))
		return 1;
	printf("127.0.0.1:%d\n", ntohs(a.sin_port));
	fflush(stdout);
	for (;;) {
		int c = accept(ln, 0, 0);
		if (c < 0)
			continue;
		for (size_t off = 0; off < n;) {
			ssize_t w = write(c, buf + off, n - off);
			if (w <= 0)
				break;
			off += w;
		}
		close(c);
	}
}
`

// startFloorServer builds floorServer with gcc and starts it serving
// dump; it returns its address and pid. It stops when b ends.
func startFloorServer(b *testing.B, dump []byte) (string, int) {
	b.Helper()
	gcc := testutil.RequireCommand(b, "gcc", "gcc")
	dir := b.TempDir()
	src, bin, data := filepath.Join(dir, "floor.c"), filepath.Join(dir, "floor"), filepath.Join(dir, "dump.json")
	if err := os.WriteFile(src, []byte(floorServer), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(data, dump, 0o644); err != nil {
		b.Fatal(err)
	}
	if out, err := exec.Command(gcc, "-O2", "-o", bin, src).CombinedOutput(); err != nil {
		b.Fatalf("gcc: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, data)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatalf("floor server: %v", err)
	}
	return strings.TrimSpace(addr), cmd.Process.Pid
}
