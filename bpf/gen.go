// Package bpf holds workerstats' eBPF programs and their generated loaders.
//
// The programs are in the .c files, one concern a file, over the shared
// types, maps and helpers in lib/; observer.c includes them all, and
// bpf2go compiles it into one object. It writes observer_bpfel.go and
// observer_bpfel.o, which are committed so that `go build` needs no clang;
// `make generate` regenerates them.
//
// Userspace reads every record and constant it shares with the programs
// through what bpf2go generates: a map's key and value types, and the
// types -type names below (lib/types.h's struct exported puts those no map
// refers to in the object's BTF, where bpf2go finds them).
package bpf

//go:generate go tool bpf2go -cc ${BPF2GO_CC} -cflags ${BPF2GO_CFLAGS} -target bpfel -type worker -type conn -type queue_wait -type slot_of -type listener_scan -type listener_kind -type listener_read -type counter -type role -type req_head -type capture_size -type conn_state -type in_request_at -type killer -type response_idle -type table_size -type pid_limit -type key_layout -type queue_wait_bucket -type status_class -type rt_bucket Observer observer.c -- -I./headers
