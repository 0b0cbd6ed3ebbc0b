# The lab (tests/lab): a local AWS for bake's tests, benchmarks and demo. Include from the repo root.

LAB_CACHE ?= /var/cache/bake-lab
LAB_DIR := tests/lab
LAB_STATE ?= .lab
LAB_PORT ?= 0
# Launcher flags of lab-up. Security groups are enforced as on AWS by default;
# `make lab-up LAB_FLAGS=--no-enforce-security-groups` opens every port instead (and the lab says so in its events).
LAB_FLAGS ?=
LAB_APT_PACKAGES := debootstrap systemd-container nftables iproute2 python3-venv util-linux curl
# The lab is a Python package (tests/lab/pyproject.toml) in two venvs, each keyed by content so that checkouts
# share what they can and a second run builds nothing: LAB_DEPS_VENV holds the pinned dependencies (one per set of
# pins), LAB_VENV the lab itself installed on top of them (one per version of its sources, about a megabyte).
LAB_PINS := $(shell /usr/bin/python3 -c 'import tomllib; p = tomllib.load(open("$(LAB_DIR)/pyproject.toml", "rb"))["project"]; print(" ".join(p["dependencies"] + p["optional-dependencies"]["dev"]))')
LAB_DEPS_HASH := $(shell echo '$(LAB_PINS)' | sha256sum | cut -c1-12)
LAB_SRC_HASH := $(shell cd $(LAB_DIR) && find pyproject.toml src -type f ! -path '*/__pycache__/*' ! -path '*.egg-info/*' | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12)
LAB_DEPS_VENV ?= $(LAB_CACHE)/deps-$(LAB_DEPS_HASH)
LAB_VENV ?= $(LAB_CACHE)/lab-$(LAB_SRC_HASH)
LAB_PYTHON ?= $(LAB_VENV)/bin/python
BAKE_LAB := $(LAB_VENV)/bin/bake-lab
LAB_RUFF := $(LAB_DEPS_VENV)/bin/ruff
export LAB_CACHE LAB_PYTHON

.PHONY: lab-apt lab-deps lab-image lab-up lab-down lab-lint lab-test
LAB_INCLUDER_GOAL := $(.DEFAULT_GOAL)

# Touching the markers records the use: venv.sh removes venvs unused for a week.
lab-deps: lab-apt $(LAB_VENV)/.complete
	@touch $(LAB_VENV)/.complete $(LAB_DEPS_VENV)/.complete

# Installs only what dpkg says is missing, so it costs a few dpkg-query calls when all is there.
lab-apt:
	@missing=""; for p in $(LAB_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "lab: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The venvs' paths are keyed by content, so the marker needs no file prerequisite (checkouts with the same
# sources share it whatever their mtimes). It exists only once pip succeeded, so a killed install is redone; the
# flock makes concurrent checkouts build each once.
$(LAB_VENV)/.complete: | lab-apt
	@mkdir -p $(LAB_CACHE)
	@flock $(LAB_CACHE)/.venv.lock $(LAB_DIR)/venv.sh $(LAB_DIR) $(LAB_DEPS_VENV) $(LAB_VENV) $(foreach p,$(LAB_PINS),'$(p)')

lab-image: lab-deps
	@$(BAKE_LAB) image build --cache $(LAB_CACHE) >/dev/null

# `bake-lab up` waits up to 300 s for the endpoint line: startup takes ~5 s once lab-image has built the image.
lab-up: lab-image
	@$(BAKE_LAB) up --dir $(LAB_STATE) --port $(LAB_PORT) $(LAB_FLAGS)

# Stops the lab started by lab-up if its pid is still a lab (waiting up to 60 s for its containers to power off),
# then removes what any dead lab left behind (a SIGKILLed one too).
lab-down: lab-deps
	@$(BAKE_LAB) down --dir $(LAB_STATE)

# ruff on the lab, the benchmark and the demo: the lab's pinned ruff with the lab's settings (its pyproject.toml).
lab-lint: lab-deps
	$(LAB_RUFF) check --config $(LAB_DIR)/pyproject.toml $(LAB_DIR) bench demo

# The lab's tests mostly wait on boots and AWS-like lags, so files run in parallel, each worker with a lab
# of its own (labs take separate indexes); 3 workers keep 2 cores busy without starving the labs.
LAB_TEST_WORKERS ?= 3
# Which tests: all of them, or e.g. LAB_TESTS=tests/lab/tests/test_ssm.py (LAB_TEST_ARGS adds pytest options).
LAB_TESTS ?= $(LAB_DIR)/tests
lab-test: lab-image
	$(LAB_PYTHON) -m pytest -p no:cacheprovider -n $(LAB_TEST_WORKERS) --dist loadfile $(LAB_TESTS) $(LAB_TEST_ARGS)

# Including this file must not change the includer's default goal.
.DEFAULT_GOAL := $(LAB_INCLUDER_GOAL)
