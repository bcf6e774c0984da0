# Two commands set everything up on a fresh machine with Python 3.11 and make:
#   make run    creates .venv, installs, starts the all-in-one daemon on embedded defaults
#   make test   creates .venv, installs (with test and training extras), runs the whole suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: install install-test system-deps run test lint bench clean

# Another process holding the apt/dpkg lock (unattended upgrades): wait for it, 5 minutes at most.
APT_WAIT = -o DPkg::Lock::Timeout=300

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -e .
	@touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(PIP) install -e '.[test,train]'
	@touch $@

# promtool and prometheus (Debian's prometheus package) for the deploy/ rule tests;
# a TLS-capable redis-server (Debian's redis-server package) for the rediss:// test;
# Debian's chromium for the review station's browser test (never `playwright install`).
system-deps:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "installing Debian's prometheus package (promtool) for the rule tests"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get $(APT_WAIT) update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get $(APT_WAIT) install -y -qq --no-install-recommends prometheus >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing Debian's redis-server package (built with TLS) for the rediss:// test"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get $(APT_WAIT) update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get $(APT_WAIT) install -y -qq --no-install-recommends redis-server >/dev/null; }
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium for the review-station browser test (Playwright drives it)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get $(APT_WAIT) update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get $(APT_WAIT) install -y -qq --no-install-recommends chromium >/dev/null; }

run: install
	$(BIN)/leukoscope run --config config.yaml

lint: install-test
	$(BIN)/ruff check daemon capture tests

test: install-test system-deps lint
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/leukoscope bench --config config.yaml

clean:
	rm -rf $(VENV) var inbox
