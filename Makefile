# mailfleet: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
BIN := target/debug/mailfleet

.PHONY: all build demo demo-sim test tools lint fmt crds bench fuzz clean

all: build

build:
	$(CARGO) build

## demo: the incident, stopped live on 127.0.0.x: eight Postfix senders, their agents,
## mailfleet standalone, a receiver that bans one IP (root; docs/LAB.md). Not root: demo-sim
demo: build
	scripts/demo.sh

## demo-sim: the incident replayed offline on the embedded example fleet (no root, no Postfix)
demo-sim: build
	scripts/demo.sh --offline

## test: the whole suite (installs what it needs, or says how)
# A clean pass: incremental caches would only add gigabytes to the disk.
test: export CARGO_INCREMENTAL = 0
test: tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) test --all-targets --locked
	$(CARGO) test --doc --locked
	scripts/chart-test.sh
	scripts/deb-test.sh

tools:
	scripts/ensure-tools.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## crds: regenerate crds/ and the chart's CRD templates from src/api (a test fails when they drift)
crds: build
	$(BIN) crd --out-dir crds --chart-dir charts/mailfleet/templates/crds

## bench: the speed targets of docs/BENCHMARKS.md (the scripts need root for namespaces)
bench:
	$(CARGO) bench --bench classify
	$(CARGO) bench --bench compile_routes
	$(CARGO) bench --bench simulate
	bench/agent_replay.sh
	bench/dnsbl.sh
	bench/operator_scale.sh
	bench/image_sizes.sh

## e2e: the block -> re-route story on a kind or k3d cluster (skips when none is reachable)
.PHONY: e2e
e2e:
	scripts/e2e.sh

## fuzz: a short run of each fuzz target (needs a nightly toolchain and cargo-fuzz)
fuzz:
	scripts/fuzz.sh

clean:
	$(CARGO) clean
