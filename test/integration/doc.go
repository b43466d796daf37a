// Package integration holds the black-box tests whose numbers come through
// the kernel side: each runs a real server (uWSGI, gunicorn, nginx,
// PHP-FPM, or a pool of its own) and the workerstats binary on it, loads
// the eBPF programs, drives traffic, and holds the daemon's counts to the
// server's own accounts or the clients'. Restarts and pins, the listen
// queue, what a worker is serving, how workers end (exits, OOM), the
// privileges the daemon keeps, and a soak under mixed load are here too.
//
// What the kernel sees differs from one kernel to the next (hook sets,
// tracepoints, helpers), so make vm-test runs this package's tests on every
// kernel it boots. Every test starts with testutil.RequireEBPF (or
// RequireRoot): run without privileges they all skip, saying so.
//
// The tests are in the _test.go files; the helpers they share with the
// other black-box packages are in test/harness.
package integration
