# workerstats — run `make help` for the targets.

GO       ?= go
BIN      ?= workerstats
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
FUZZTIME ?= 10s

# bpf2go's compiler: Debian 12's clang 14, so generated objects are the same
# on every machine that regenerates them.
export BPF2GO_CC     ?= clang
export BPF2GO_CFLAGS ?= -O2 -g -Wall -Werror

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## install missing build and test packages from Debian (as root)
	.ci/install-deps

.PHONY: generate
generate: ## regenerate bpf/*_bpfel.{go,o} from bpf/*.c (needs clang, libbpf-dev)
	$(GO) generate ./bpf/

.PHONY: check-generate
check-generate: generate ## fail when the committed eBPF objects differ from their sources
	@if [ -n "$$(git status --porcelain -- bpf/)" ]; then git status --short -- bpf/; \
		echo "bpf/: generated files differ from the committed ones: run make generate and commit them" >&2; exit 1; fi

.PHONY: build
build: ## build ./workerstats
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/workerstats

.PHONY: lint
lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out" >&2; exit 1; }
	$(GO) vet ./...

.PHONY: test
test: deps lint ## install what is missing, then run every test (as root, privileged tests load eBPF)
	$(GO) test -count=1 ./bpf/... ./observer/... ./statsock/...
	$(GO) test -count=1 -v ./cmd/...
	$(MAKE) fuzz

.PHONY: fuzz
fuzz: ## run each fuzz target briefly (FUZZTIME, default 10s)
	$(GO) test -run '^$$' -fuzz '^FuzzParseAddr$$' -fuzztime $(FUZZTIME) ./statsock/
	$(GO) test -run '^$$' -fuzz '^FuzzServeHTTP$$' -fuzztime $(FUZZTIME) ./statsock/

.PHONY: test-privileged
test-privileged: ## only the tests that load eBPF and run real servers (as root)
	$(GO) test -count=1 -v -run 'UWSGI|Load|Attach|Daemon' ./...

.PHONY: bench
bench: ## benchmarks (as root for the eBPF ones)
	$(GO) test -run '^$$' -bench . -benchmem ./...

.PHONY: clean
clean: ## remove the built binary
	rm -f $(BIN)
