// Package userspace holds the black-box tests of what the daemon does in
// userspace alone: the terminal UI (top, in a terminal under tmux) and the
// demo, the dump's shape held to uWSGI's own (the golden tests), finding a
// pool's master by pidfile or name and following it across a restart, a
// config of several pools, and gunicorn's HUP reload, whose slots are kept
// in userspace (the kernel's side of a reload, forks and exits, is uWSGI's
// graceful reload and respawn tests', in package integration).
//
// They run real servers and the workerstats binary, as root, but what they
// check is the same on every kernel: the counts they see come through the
// kernel side that package integration proves on each. So make vm-test
// leaves them out of its guests, where they took 164 s of 6.1's 981 s under
// emulation, and make test runs them here. Every test that starts a server,
// the daemon or a terminal starts with testutil.RequireEBPF or RequireRoot:
// run without privileges they skip, saying so.
package userspace
