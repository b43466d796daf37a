// Package soak holds TestSoakMixedLoad: one daemon watching uWSGI and
// gunicorn for minutes (WORKERSTATS_SOAK, 2 by default; make soak runs
// 10) under load, worker kills, reloads and daemon restarts, with readers
// on every kind of stats socket, ending with every count equal to the
// servers' own and the daemon's memory and open files flat.
//
// It is its own package so that it runs on the host only: what it proves
// is the daemon's staying power, which no kernel changes, and it takes the
// minutes it is given, far more under make vm-test's emulation. The
// kernel-by-kernel proof of the same counts is test/integration's.
package soak
