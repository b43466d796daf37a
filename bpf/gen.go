// Package bpf holds workerstats' eBPF programs and their generated loaders.
//
// The programs are in observer.c. bpf2go compiles them and writes
// observer_bpfel.go and observer_bpfel.o, which are committed so that
// `go build` needs no clang; `make generate` regenerates them.
package bpf

//go:generate go tool bpf2go -cc ${BPF2GO_CC} -cflags ${BPF2GO_CFLAGS} -target bpfel -type worker -type conn -type queue_wait -type slot_of -type listener_scan -type counter -type role Observer observer.c -- -I./headers
