// Package bench holds the benchmarks that start real servers or the
// workerstats binary: stats reads against uWSGI's own stats server and a
// floor server in C (BenchmarkStatsReads), what an observed server loses
// when workerstats watches it (BenchmarkServerCost), and the daemon's own
// footprint under load (BenchmarkDaemonFootprint). They need root (eBPF,
// wrk installed by make bench) and add their figures to make bench's table;
// they have no tests, so make test runs none of them.
package bench
