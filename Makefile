# workerstats — run `make help` for the targets.

# sudo may drop Go's directory from PATH: fall back to where its tarball installs.
GO       ?= $(or $(shell command -v go 2>/dev/null),$(wildcard /usr/local/go/bin/go),go)
BIN      ?= workerstats
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
FUZZTIME ?= 10s

# make install: PREFIX=/usr for a package, DESTDIR for a staging root,
# UNITDIR=/lib/systemd/system for a packaged unit.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= /etc/systemd/system
DESTDIR    ?=
UNIT       := deploy/systemd/workerstats.service
CONFIG     := deploy/systemd/workerstats.toml
VAGRANT    ?= vagrant

# bpf2go's compiler: Debian 12's clang 14, so generated objects are the same
# on every machine that regenerates them.
export BPF2GO_CC     ?= clang
export BPF2GO_CFLAGS ?= -O2 -g -Wall -Werror

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-z-]+:.*## /{printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

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

.PHONY: demo
demo: build ## (as root) run ./workerstats demo: a pre-fork pool of its own, watched, its stats shown and served on 127.0.0.1:1717
	./$(BIN) demo

.PHONY: lint
lint: ## gofmt, go vet, and the docs' links (every doc linked from the README, every relative link resolving)
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt needed: $$out" >&2; exit 1; }
	$(GO) vet ./...
	python3 docs/check-links

# The packages of unit tests, then test/'s black-box packages one at a
# time: two packages of real servers at once would compete for a 2-core
# machine. The fuzz targets' seeds run as ordinary tests here; make fuzz
# fuzzes.
.PHONY: test
test: lint ## run every test; as root the privileged ones load eBPF and run the real servers (sudo make deps installs those)
	$(GO) test -count=1 ./bpf/... ./internal/... ./observer/... ./statsock/... ./cmd/...
	$(GO) test -count=1 -p 1 -v -timeout 30m ./test/...

# --- Kubernetes: deploy/helm, deploy/kubernetes, deploy/grafana -------------
# Helm comes from its Go module at a pinned version, so there is nothing to
# install. test/deploy is a Go module of its own, which keeps the Kubernetes
# and Prometheus modules out of the daemon's; go test ./... does not enter
# it, so check-deploy runs it (go vet too), and make test runs check-deploy.
HELM_VERSION ?= v4.3.2
HELM         ?= $(GO) run helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)
CHART        := deploy/helm/workerstats

.PHONY: check-deploy
check-deploy: ## helm lint the chart; its objects decode strictly, equal deploy/kubernetes and keep the unit's capabilities; the Grafana dashboard's PromQL selects served metrics
	$(HELM) lint --strict $(CHART)
	$(HELM) lint --strict --set serviceMonitor.enabled=true $(CHART)
	cd test/deploy && $(GO) vet ./... && HELM="$(HELM)" $(GO) test -count=1 ./...

.PHONY: deploy-manifests
deploy-manifests: ## write deploy/kubernetes/workerstats.yaml: the chart as helm template renders it with its default values
	cd test/deploy && HELM="$(HELM)" $(GO) test -count=1 -run '^TestCommittedManifestsMatchChart$$' . -update

test: check-deploy

.PHONY: soak
soak: ## (as root) TestSoakMixedLoad for 10 minutes (make test runs it for 2): uWSGI and gunicorn under load, faults and daemon restarts
	WORKERSTATS_SOAK=$(or $(SOAK),10m) $(GO) test -count=1 -v -timeout 40m -run '^TestSoakMixedLoad$$' ./test/soak/

.PHONY: test-race
# One package at a time: statsock's abuse test times its server against
# 400 hostile clients, and beside the eBPF tests' program loads on a
# 2-core machine its setup alone overran (CI, twice).
test-race: ## the tests that run no real server, under the race detector (as root the eBPF ones load too)
	$(GO) test -race -count=1 -p 1 ./internal/... ./observer/... ./statsock/...

.PHONY: fuzz
fuzz: ## fuzz each target for FUZZTIME (default 10s); not part of make test, which runs only their seeds
	$(GO) test -run '^$$' -fuzz '^FuzzParseAddr$$' -fuzztime $(FUZZTIME) ./statsock/
	$(GO) test -run '^$$' -fuzz '^FuzzServeHTTP$$' -fuzztime $(FUZZTIME) ./statsock/
	$(GO) test -run '^$$' -fuzz '^FuzzIndentLikeUWSGI$$' -fuzztime $(FUZZTIME) ./observer/
	$(GO) test -run '^$$' -fuzz '^FuzzMarshalStatsStrings$$' -fuzztime $(FUZZTIME) ./observer/
	$(GO) test -run '^$$' -fuzz '^FuzzParseProcNet$$' -fuzztime $(FUZZTIME) ./observer/
	$(GO) test -run '^$$' -fuzz '^FuzzParseMountinfo$$' -fuzztime $(FUZZTIME) ./observer/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./observer/container/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./observer/proto/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./observer/requests/

.PHONY: test-privileged
test-privileged: ## only the tests that load eBPF and run real servers (as root): ebpfkernel's and test/'s
	$(GO) test -count=1 -v ./observer/ebpfkernel/
	$(GO) test -count=1 -p 1 -v -timeout 30m ./test/...

# The tests that name pools by their pods run a real kube-apiserver and
# etcd, built from their Go modules at the release test/kube/servers/go.mod
# pins: about 15 minutes of CPU the first time, then kept in build/kube
# (rebuilt only when that module changes) and in Go's cache. make test
# builds them.
KUBE_SERVERS ?= build/kube
KUBE_BINS    := $(KUBE_SERVERS)/kube-apiserver $(KUBE_SERVERS)/etcd
.PHONY: kube-servers
kube-servers: $(KUBE_BINS) ## build kube-apiserver and etcd into build/kube for the tests against a real API server (TestPodsNamedByTheAPIServer)
$(KUBE_BINS) &: test/kube/servers/go.mod test/kube/servers/go.sum $(wildcard test/kube/servers/cmd/*/*.go)
	cd test/kube/servers && $(GO) build -o $(abspath $(KUBE_SERVERS))/ ./cmd/kube-apiserver ./cmd/etcd
	touch $(KUBE_BINS)

test: kube-servers

# make vm-test KERNELS="5.10 6.1" (the default) or KERNELS=all (with 6.12).
# The guests run the observer, ebpfkernel and test/integration tests;
# test/userspace's, the same on every kernel, are left out (see its
# package comment). VM_RUN and VM_SKIP, empty by default, narrow the
# integration tests (-test.run, -test.skip) for a developer's run.
KERNELS ?= 5.10 6.1

.PHONY: vm-test
vm-test: ## (as root) the observer, ebpfkernel and integration tests on Debian's 5.10, 6.1 (and with KERNELS=all 6.12) kernels under qemu
	.ci/install-deps --vm
	KERNELS="$(KERNELS)" GO=$(GO) vagrant/vm-test

# make bench-vm: the cost yardstick, instruction counts in Debian's kernels
# booted under qemu's icount (KERNELS as vm-test's; BENCH_SMOKE=1 for CI's
# short pass; BENCH_HOOKS=fentry, say, for some hook sets only;
# BENCH_PARTS="loops programs" to leave out the servers). See
# vagrant/vm-bench and docs/performance.md.
.PHONY: bench-vm
bench-vm: ## (as root) cost figures as instruction counts in Debian's 5.10 and 6.1 (KERNELS=all: and 6.12) under qemu -icount
	.ci/install-deps --bench-vm
	KERNELS="$(KERNELS)" BENCH_SMOKE="$(BENCH_SMOKE)" BENCH_HOOKS="$(BENCH_HOOKS)" BENCH_PARTS="$(BENCH_PARTS)" GO=$(GO) vagrant/vm-bench

.PHONY: install
install: build ## install the binary, the systemd unit, and /etc/workerstats/workerstats.toml unless it exists
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/workerstats
	install -d $(DESTDIR)$(UNITDIR)
	sed -e 's|/usr/local/bin/workerstats|$(BINDIR)/workerstats|g' -e 's|/etc/workerstats/|$(SYSCONFDIR)/workerstats/|g' \
		$(UNIT) >$(DESTDIR)$(UNITDIR)/workerstats.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/workerstats.service
	@cfg=$(DESTDIR)$(SYSCONFDIR)/workerstats/workerstats.toml; \
	if [ -e "$$cfg" ]; then echo "kept $$cfg"; \
	else echo "install -D -m 0644 $(CONFIG) $$cfg"; install -D -m 0644 $(CONFIG) "$$cfg"; fi
	@[ -n "$(DESTDIR)" ] || echo "next: edit $(SYSCONFDIR)/workerstats/workerstats.toml, then systemctl daemon-reload && systemctl enable --now workerstats"

.PHONY: uninstall
uninstall: ## remove what install put in place; the config only while it is still the example
	rm -f $(DESTDIR)$(BINDIR)/workerstats $(DESTDIR)$(UNITDIR)/workerstats.service
	@cfg=$(DESTDIR)$(SYSCONFDIR)/workerstats/workerstats.toml; \
	if cmp -s $(CONFIG) "$$cfg"; then rm -f "$$cfg"; rmdir "$$(dirname "$$cfg")" 2>/dev/null || true; \
	elif [ -e "$$cfg" ]; then echo "kept $$cfg: it differs from the example"; fi
	@[ -n "$(DESTDIR)" ] || echo "if the service was enabled: systemctl disable --now workerstats; systemctl daemon-reload"

# check-unit installs into a staging root that also holds this machine's
# systemd units (for the targets the unit orders itself against), so that
# systemd-analyze verifies the unit as installed, ExecStart's binary
# included. Any message fails it: verify exits 0 on unknown keys and bad
# values, which it only prints.
.PHONY: check-unit
check-unit: ## verify the installed systemd unit with systemd-analyze (verify, and security at most 3.5 exposed)
	@set -eu; stage=$$(mktemp -d); trap 'rm -rf "$$stage"' EXIT; \
	mkdir -p "$$stage/usr/lib/systemd"; ln -s usr/lib "$$stage/lib"; \
	cp -a "$$(realpath /lib/systemd/system)" "$$stage/usr/lib/systemd/system"; \
	$(MAKE) --no-print-directory install DESTDIR="$$stage" >/dev/null; \
	unit="$$stage$(UNITDIR)/workerstats.service"; \
	echo "systemd-analyze verify $(UNITDIR)/workerstats.service (root $$stage)"; \
	if ! out=$$(systemd-analyze verify --man=no --root="$$stage" "$$unit" 2>&1) || [ -n "$$out" ]; then \
		echo "$$out" >&2; echo "check-unit: systemd-analyze verify found problems in $(UNIT)" >&2; exit 1; fi; \
	if ! out=$$(systemd-analyze security --offline=yes --threshold=35 --root="$$stage" "$$unit" 2>&1); then \
		echo "$$out" >&2; echo "check-unit: $(UNIT) is more exposed than 3.5: restore the hardening it lost" >&2; exit 1; fi; \
	echo "$$out" | tail -n 1

.PHONY: test-unprivileged
test-unprivileged: ## as root: run the unit tests and test/'s as user nobody; each must pass or skip for a privilege
	GO=$(GO) .ci/test-unprivileged

.PHONY: check-vagrant
check-vagrant: ## validate vagrant/Vagrantfile (needs vagrant) and check .ci/install-go's plan
	cd vagrant && $(VAGRANT) validate --ignore-provider
	.ci/install-go --dry-run

.PHONY: vagrant-test
vagrant-test: ## run every test as root in a Debian 12 VM (kernel 6.1) with Vagrant: see vagrant/Vagrantfile
	cd vagrant && $(VAGRANT) up
	cd vagrant && $(VAGRANT) rsync
	cd vagrant && $(VAGRANT) ssh -c 'cd /workerstats && sudo env WORKERSTATS_REQUIRE_PRIVILEGED=1 make test'

# make bench: every cost figure against its goal, in one table (as root:
# it installs wrk and loads the eBPF programs). BENCH_SMOKE=1 is CI's short
# run: one pass of everything, whose figures prove only that it runs.
BENCH_DIR := build/bench
BENCH_ENV := WORKERSTATS_BENCH_TABLE=$(CURDIR)/$(BENCH_DIR)/table.tsv WORKERSTATS_REQUIRE_PRIVILEGED=1
ifeq ($(BENCH_SMOKE),1)
BENCH_ENV += WORKERSTATS_BENCH_SECONDS=1 WORKERSTATS_BENCH_PAIRS=2 WORKERSTATS_BENCH_ROUNDS=2 WORKERSTATS_BENCH_CONNS=20000
BENCH_FLAGS := -benchtime=1x
endif

.PHONY: bench
bench: ## the cost figures against their goals, one table (as root; BENCH_SMOKE=1 for a short run)
	.ci/install-deps --bench
	mkdir -p $(BENCH_DIR) && rm -f $(BENCH_DIR)/table.tsv
	$(BENCH_ENV) $(GO) test -run '^$$' -bench . -benchmem $(BENCH_FLAGS) -timeout 90m ./... | tee $(BENCH_DIR)/bench.txt
	@python3 .ci/bench-table $(BENCH_DIR)/table.tsv

# --- Debian package (make deb) ---------------------------------------------
# make deb stages the source (git's tracked and untracked files, not the
# ignored ones) in build/deb/workerstats-DEB_VERSION with deploy/debian as
# debian/ and a changelog naming VERSION, builds the binary package there
# with dpkg-buildpackage (the static binary, by make build and make install:
# see deploy/debian/rules), and fails on any lintian error or warning.
# DEB_VERSION is VERSION as a Debian version: v1.2-3-gabc is 1.2+3.gabc,
# an untagged abc-dirty 0~YYYYMMDD.gabc+dirty (the commit's date).
DEB_DIR     ?= build/deb
DEB_DATE    := $(shell git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date -u +%Y%m%d)
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -E 's/^v//; /^[0-9a-f]{7,40}(-dirty)?$$/s/^/0~$(DEB_DATE).g/; s/-/+/; s/-/./g; /^[0-9]/!s/^/0~/')
DEB_SRC     := $(DEB_DIR)/workerstats-$(DEB_VERSION)

.PHONY: deb
deb: ## build the Debian package build/deb/workerstats_DEB_VERSION_ARCH.deb, lintian clean (needs dpkg-dev, debhelper, lintian)
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_SRC)
	git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C $(DEB_SRC)
	cp -r deploy/debian $(DEB_SRC)/debian
	printf 'workerstats (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- %s  %s\n' \
		'$(DEB_VERSION)' '$(VERSION)' "$$(sed -n 's/^Maintainer: //p' deploy/debian/control)" \
		"$$(git log -1 --format=%cD 2>/dev/null || date -R)" >$(DEB_SRC)/debian/changelog
	cd $(DEB_SRC) && GO=$(GO) WORKERSTATS_VERSION=$(VERSION) dpkg-buildpackage --build=binary --no-sign
	lintian --fail-on error,warning --info $(DEB_DIR)/workerstats_$(DEB_VERSION)_*.changes
	@ls $(DEB_DIR)/workerstats_$(DEB_VERSION)_*.deb

# --- OCI image (make image) ------------------------------------------------
# make image builds IMAGE from deploy/image/Containerfile with podman: FROM
# scratch, the static binary (make build, CGO_ENABLED=0 -trimpath, without
# symbols) and nothing else; a build of COPYs only, so no container runs.
# It also writes the image as an OCI archive, IMAGE_TAR, to check or load
# elsewhere (podman load -i, skopeo copy oci-archive:...).
IMAGE     ?= localhost/workerstats:$(VERSION)
IMAGE_DIR ?= build/image
IMAGE_TAR ?= build/workerstats-image.tar

.PHONY: image
image: ## build the OCI image IMAGE (FROM scratch: the static binary) with podman, and its OCI archive build/workerstats-image.tar
	rm -rf $(IMAGE_DIR) $(IMAGE_TAR) && mkdir -p $(IMAGE_DIR)
	CGO_ENABLED=0 GOFLAGS=-trimpath $(MAKE) --no-print-directory build BIN=$(IMAGE_DIR)/workerstats LDFLAGS="-s -w $(LDFLAGS)"
	podman build --layers=false --build-arg VERSION=$(VERSION) -f deploy/image/Containerfile -t $(IMAGE) $(IMAGE_DIR)
	podman save --format oci-archive -o $(IMAGE_TAR) $(IMAGE)
	@echo "$(IMAGE): $(IMAGE_TAR), $$(du -h $(IMAGE_TAR) | cut -f1)"

.PHONY: clean
clean: ## remove the built binary
	rm -f $(BIN)
