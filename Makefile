# bake: build, test and demo on a fresh Debian machine. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
# Debian packages the tests need: shellcheck lints every rendered script (and contrib's cron
# line), man-db renders the man page, systemd provides systemd-analyze for contrib's units.
APT_PACKAGES := shellcheck man-db systemd python3-venv
# Where `make install` puts bake, its man page and completions (DESTDIR for packaging), and the
# cargo profile it builds (install-check uses the dev build the tests already made).
PREFIX ?= /usr/local
DESTDIR ?=
INSTALL_PROFILE ?= release
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
INSTALL_BIN := $(TARGET_DIR)/$(if $(filter dev,$(INSTALL_PROFILE)),debug,$(INSTALL_PROFILE))/bake
# contrib/'s linters (check-jsonschema, cfn-lint) in a venv keyed by their pins, beside the lab's.
CONTRIB_VENV = $(LAB_CACHE)/contrib-$(shell sha256sum contrib/requirements.txt | cut -c1-12)

# The lab (a Python package, tests/lab): lab-deps, lab-image, lab-up, lab-down, lab-lint, lab-test; exports
# LAB_PYTHON for the tests.
include tests/lab/lab.mk

.PHONY: all build demo bench test fmt lint deps userdata install install-check contrib-lint

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

## lint: formatting and clippy, warnings are errors; ruff on the lab, bench and demo (lab-lint);
## contrib/'s recipes (contrib-lint)
lint: lab-lint contrib-lint
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

## test: lint, then every test: Rust (unit, CLI, lab) and the lab's own suite. Plain `cargo test`
## skips the lab tests where LAB_PYTHON is not set; here BAKE_REQUIRE_LAB=1 makes a skip a failure.
test: deps lint lab-image
	BAKE_REQUIRE_LAB=1 $(CARGO) nextest run --locked --no-fail-fast --success-output never
	$(MAKE) --no-print-directory install-check
	$(MAKE) --no-print-directory lab-test

## userdata: regenerate userdata/ from examples/ (commit the result)
userdata:
	BAKE_UPDATE_USERDATA=1 $(CARGO) nextest run --locked -E 'test(committed_userdata)'

## install: bake, its man page and its completions under PREFIX (default /usr/local; DESTDIR
## for packaging): bin/bake, share/man/man1/bake.1 (and bake-SUBCOMMAND.1), share/bash-completion/completions/bake,
## share/zsh/site-functions/_bake, share/fish/vendor_completions.d/bake.fish
install:
	$(CARGO) build --locked --profile $(INSTALL_PROFILE)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
	  $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	install -m 0755 $(INSTALL_BIN) $(DESTDIR)$(PREFIX)/bin/bake
	$(INSTALL_BIN) man --dir $(DESTDIR)$(PREFIX)/share/man/man1
	$(INSTALL_BIN) completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/bake
	$(INSTALL_BIN) completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_bake
	$(INSTALL_BIN) completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/bake.fish
	chmod 0644 $(DESTDIR)$(PREFIX)/share/man/man1/bake*.1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions/bake \
	  $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_bake $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/bake.fish

## install-check: install into a temporary PREFIX (the dev build), render the man page with
## `man -l`, and complete a subcommand through the installed bash completion
install-check: deps
	@prefix=$$(mktemp -d); trap 'rm -rf "$$prefix"' EXIT; \
	$(MAKE) --no-print-directory -s install PREFIX="$$prefix" INSTALL_PROFILE=dev >/dev/null; \
	for f in bin/bake share/man/man1/bake.1 share/man/man1/bake-ami.1 share/bash-completion/completions/bake \
	  share/zsh/site-functions/_bake share/fish/vendor_completions.d/bake.fish; do \
	  test -s "$$prefix/$$f" || { echo "install-check: $$f missing" >&2; exit 1; }; \
	done; \
	(cd "$$prefix/share/man/man1" && MANPAGER=cat MANWIDTH=100 man -l ./bake.1) | grep -q 'completions' \
	  || { echo "install-check: man -l bake.1 did not render" >&2; exit 1; }; \
	got=$$(PATH="$$prefix/bin:$$PATH" bash -c 'source "$$1"; COMP_WORDS=(bake rollb); COMP_CWORD=1; \
	  _clap_complete_bake bake rollb bake; echo "$${COMPREPLY[*]}"' _ "$$prefix/share/bash-completion/completions/bake"); \
	[ "$$got" = rollback ] || { echo "install-check: bash completed 'bake rollb' as '$$got'" >&2; exit 1; }; \
	echo "install-check: bake, bake.1 (man -l renders it) and the completions install under PREFIX"

## contrib-lint: contrib/'s recipes checked: the systemd units (systemd-analyze verify, against
## bake and its page installed under a temporary prefix), the cron line, the GitHub Actions
## workflow (check-jsonschema with GitHub's workflow schema) and
## the CloudFormation template (cfn-lint)
contrib-lint: deps build $(CONTRIB_VENV)/.complete
	contrib/lint.sh $(CONTRIB_VENV) $(TARGET_DIR)/debug/bake

# Built in place (a venv cannot move) by the first checkout that needs it; the marker exists only
# once pip succeeded, and the flock makes concurrent checkouts build it once.
$(CONTRIB_VENV)/.complete:
	@mkdir -p $(LAB_CACHE)
	@flock $(LAB_CACHE)/.venv.lock sh -c 'test -e $@ || { rm -rf $(CONTRIB_VENV) && \
	  python3 -m venv $(CONTRIB_VENV) && $(CONTRIB_VENV)/bin/pip install -q -r contrib/requirements.txt && touch $@; }'
