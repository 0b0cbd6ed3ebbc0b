# bake: build, test and demo on a fresh Debian machine. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
# Debian packages the tests need: shellcheck lints every rendered script.
APT_PACKAGES := shellcheck

# The lab (a Python package, tests/lab): lab-deps, lab-image, lab-up, lab-down, lab-lint, lab-test; exports
# LAB_PYTHON for the tests.
include tests/lab/lab.mk

.PHONY: all build demo bench test fmt lint deps userdata

all: build

## deps: install the Debian packages and cargo tools the tests need (fast when present)
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s "$$p" >/dev/null 2>&1 || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked cargo-nextest

## build: the bake binary (target/debug/bake)
build:
	$(CARGO) build --locked

## demo: bring up the lab, bake the Debian nginx example, roll it out behind the ALB, print the page
demo: build lab-image
	@endpoint=$$($(MAKE) --no-print-directory -s lab-up | tail -n 1 | cut -d= -f2-); \
	$(LAB_PYTHON) demo/demo.py "$$endpoint"

## bench: `bake validate` of each example under 50 ms (bench/validate.json), then bake against
## Packer in the lab (bench/results.json); prints a table for each
bench: build lab-image
	$(LAB_PYTHON) bench/validate.py
	$(LAB_PYTHON) bench/run.py

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## lint: formatting and clippy, warnings are errors; ruff on the lab, bench and demo (lab-lint)
lint: lab-lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## test: lint, then every test: Rust (unit, CLI, lab) and the lab's own suite. Plain `cargo test`
## skips the lab tests where LAB_PYTHON is not set; here BAKE_REQUIRE_LAB=1 makes a skip a failure.
test: deps lint lab-image
	BAKE_REQUIRE_LAB=1 $(CARGO) nextest run --locked --no-fail-fast --success-output never
	$(MAKE) --no-print-directory lab-test

## userdata: regenerate userdata/ from examples/ (commit the result)
userdata:
	BAKE_UPDATE_USERDATA=1 $(CARGO) nextest run --locked -E 'test(committed_userdata)'
