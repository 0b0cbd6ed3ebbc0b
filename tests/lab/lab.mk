# The lab (tests/lab): a local AWS for bake's tests, benchmarks and demo. Include from the repo root.

LAB_CACHE ?= /var/cache/bake-lab
LAB_DIR := tests/lab
LAB_STATE ?= .lab
LAB_PORT ?= 0
# Launcher flags of lab-up. Security groups are enforced as on AWS by default;
# `make lab-up LAB_FLAGS=--no-enforce-security-groups` opens every port instead (and the lab says so in its events).
LAB_FLAGS ?=
LAB_APT_PACKAGES := debootstrap systemd-container nftables iproute2 python3-venv util-linux curl
LAB_REQ_HASH := $(shell sha256sum $(LAB_DIR)/requirements.txt | cut -c1-12)
LAB_VENV ?= $(LAB_CACHE)/venv-$(LAB_REQ_HASH)
LAB_PYTHON ?= $(LAB_VENV)/bin/python
export LAB_CACHE LAB_PYTHON

.PHONY: lab-apt lab-deps lab-image lab-up lab-down lab-test
LAB_INCLUDER_GOAL := $(.DEFAULT_GOAL)

lab-deps: lab-apt $(LAB_VENV)/.complete

# Installs only what dpkg says is missing, so it costs a few dpkg-query calls when all is there.
lab-apt:
	@missing=""; for p in $(LAB_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "lab: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# The venv's path is keyed by the pins' content, so the marker needs no file prerequisite (checkouts with
# the same pins share it whatever their mtimes). It exists only once pip succeeded, so a killed install
# is redone; the flock makes concurrent checkouts build it once.
$(LAB_VENV)/.complete: | lab-apt
	@mkdir -p $(LAB_CACHE)
	@flock $(LAB_CACHE)/.venv.lock sh -ec '\
	  [ -f $@ ] && exit 0; \
	  rm -rf $(LAB_VENV); \
	  echo "lab: creating $(LAB_VENV)"; \
	  /usr/bin/python3 -m venv $(LAB_VENV); \
	  $(LAB_VENV)/bin/pip install -q --disable-pip-version-check -r $(LAB_DIR)/requirements.txt; \
	  touch $@'

lab-image: lab-deps
	@$(LAB_PYTHON) $(LAB_DIR)/image.py build --cache $(LAB_CACHE) >/dev/null

# Waits up to 120 s (600 x 0.2 s) for the endpoint line: startup takes ~5 s, or ~70 s if it builds the image.
lab-up: lab-image
	@mkdir -p $(LAB_STATE)
	@if [ -f $(LAB_STATE)/pid ] && grep -qs launcher.py /proc/$$(cat $(LAB_STATE)/pid)/cmdline; then \
	  tail -n 1 $(LAB_STATE)/endpoint; exit 0; fi; \
	rm -f $(LAB_STATE)/endpoint; \
	setsid $(LAB_PYTHON) $(LAB_DIR)/launcher.py --port $(LAB_PORT) $(LAB_FLAGS) >$(LAB_STATE)/endpoint 2>$(LAB_STATE)/lab.log </dev/null & \
	echo $$! > $(LAB_STATE)/pid; \
	for i in $$(seq 1 600); do \
	  grep -q '^AWS_ENDPOINT_URL=' $(LAB_STATE)/endpoint 2>/dev/null && break; \
	  kill -0 $$(cat $(LAB_STATE)/pid) 2>/dev/null || break; \
	  sleep 0.2; \
	done; \
	if ! grep -q '^AWS_ENDPOINT_URL=' $(LAB_STATE)/endpoint; then \
	  echo "lab: failed to start (log: $(LAB_STATE)/lab.log)" >&2; tail -n 20 $(LAB_STATE)/lab.log >&2; exit 1; fi; \
	tail -n 1 $(LAB_STATE)/endpoint

# Stops the lab started by lab-up if its pid is still a launcher (waiting up to 60 s, 600 x 0.1 s, for its containers to power off),
# then removes what any dead lab left behind (a SIGKILLed one too).
lab-down:
	@if [ -f $(LAB_STATE)/pid ]; then \
	  pid=$$(cat $(LAB_STATE)/pid); \
	  if grep -qs launcher.py /proc/$$pid/cmdline && kill -TERM $$pid 2>/dev/null; then \
	    for i in $$(seq 1 600); do kill -0 $$pid 2>/dev/null || break; sleep 0.1; done; \
	  fi; \
	  rm -f $(LAB_STATE)/pid $(LAB_STATE)/endpoint; \
	fi
	@if [ -x $(LAB_PYTHON) ]; then $(LAB_PYTHON) $(LAB_DIR)/launcher.py --cleanup-stale; fi

# The lab's tests mostly wait on boots and AWS-like lags, so files run in parallel, each worker with a lab
# of its own (labs take separate indexes); 3 workers keep 2 cores busy without starving the labs.
LAB_TEST_WORKERS ?= 3
lab-test: lab-image
	$(LAB_PYTHON) -m pytest -p no:cacheprovider -n $(LAB_TEST_WORKERS) --dist loadfile $(LAB_DIR) $(LAB_TEST_ARGS)

# Including this file must not change the includer's default goal.
.DEFAULT_GOAL := $(LAB_INCLUDER_GOAL)
