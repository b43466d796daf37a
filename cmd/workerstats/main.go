// Command workerstats observes the worker processes of a pre-fork server
// from outside and serves what it sees as uWSGI stats-server JSON.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=..." (the
// Makefile does). Left at "dev", main replaces it with what the Go
// toolchain recorded in the binary (see buildVersion).
var version = "dev"

func main() {
	bi, _ := debug.ReadBuildInfo()
	version = buildVersion(version, bi)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := newRootCmd().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "workerstats:", err)
		os.Exit(1)
	}
}

// buildVersion returns the version to report: the one set with -ldflags
// when there is one, else the main module's version the toolchain recorded
// (a tag or pseudo-version for `go install ...@v1.2.3`, and since Go 1.24
// for `go build` in a checkout too, with "+dirty" for uncommitted changes),
// else the VCS revision the toolchain stamped, else "dev".
func buildVersion(ldflags string, bi *debug.BuildInfo) string {
	if ldflags != "" && ldflags != "dev" {
		return ldflags
	}
	if bi == nil {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v := "dev-" + rev
	if modified == "true" {
		v += "+dirty"
	}
	return v
}
