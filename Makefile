# mailfleet: the two commands a newcomer needs are `make demo` and `make test`.
CARGO ?= cargo
BIN := target/debug/mailfleet

.PHONY: all build demo test tools lint fmt crds bench fuzz clean

all: build

build:
	$(CARGO) build

## demo: the incident, stopped, on the embedded example fleet (no cluster needed)
demo: build
	scripts/demo.sh

## test: the whole suite (installs what it needs, or says how)
test: tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	$(CARGO) test --all-targets --locked
	$(CARGO) test --doc --locked
	scripts/chart-test.sh

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

## fuzz: a short run of each fuzz target (needs a nightly toolchain and cargo-fuzz)
fuzz:
	scripts/fuzz.sh

clean:
	$(CARGO) clean
