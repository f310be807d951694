# vswitch: every target installs what it needs first (Debian packages, then a venv in .venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# vde2 and openvswitch-switch: the bench's other userspace switches; its integration test runs them.
# isc-dhcp-client, dhcpcd-base, busybox (udhcpc), bind9-dnsutils (dig) and ndisc6 (rdisc6): the real
# clients the DHCP, DNS and RDNSS tests run against the router's services.
APT_PACKAGES := iproute2 iputils-ping iputils-tracepath traceroute curl iperf3 isc-dhcp-client dhcpcd-base busybox bind9-dnsutils ndisc6 nftables tshark procps util-linux vde2 openvswitch-switch python3-venv
# openvswitch-switch's postinst starts the system-wide ovsdb-server and ovs-vswitchd (invoke-rc.d, or
# deb-systemd-invoke under systemd); we need only its programs (the bench runs a private OVS of its
# own), so no daemon may be left running. Both ask policy-rc.d first: for the length of the install,
# one answering 101 ("action forbidden") is put in place and removed afterwards, also on failure or
# Ctrl-C. A policy-rc.d the machine already has is its owner's (container images ship one that answers
# 101) and is left alone.
POLICY_RC_D := /usr/sbin/policy-rc.d
PORTS ?= ns1,ns2,ns3

.PHONY: help up test test-unit test-integration lint fuzz bench bench-quick bench-micro bench-emulation stress stress-crash stress-floods stress-noisy soak clean system venv

help:
	@echo "make up      - install, then run a 3-namespace switch (PORTS=$(PORTS)) until Ctrl-C"
	@echo "make test    - install, then run the whole test suite (unit + real-namespace integration)"
	@echo "make lint    - ruff and mypy"
	@echo "make bench   - userspace vs kernel forwarding, side by side (make bench-quick: 1 minute)"
	@echo "make bench-micro - per-packet cost of the core (pytest-benchmark)"
	@echo "make bench-emulation - network emulation against its settings and the kernel's tbf (~6 min)"
	@echo "make fuzz    - long hypothesis run over the datapath with malformed frames"
	@echo "make stress  - crash at any moment, floods, noisy neighbour: figures, JSON and PNG (~5 min)"
	@echo "make stress-crash - SIGKILL vswitch up at 50 random moments, then down: nothing left (1-2 min)"
	@echo "make stress-floods - 8 floods against vswitch, victims' TCP and ping before/during (~2 min)"
	@echo "make stress-noisy  - one port overloading, the others' TCP unloaded vs loaded (~1 min)"
	@echo "make soak    - 10 minutes of mixed traffic through a NAT router, sampled; PASS/FAIL (MINUTES=10)"

# Debian packages, once per machine (the stamp lives in the venv, which a fresh clone does not have),
# checked again when the Makefile (and so perhaps the list) changes; dpkg -s makes that cheap.
$(VENV)/.system: Makefile
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  if [ ! -e $(POLICY_RC_D) ]; then \
	    trap 'rm -f $(POLICY_RC_D)' EXIT; printf '#!/bin/sh\nexit 101\n' > $(POLICY_RC_D); chmod 755 $(POLICY_RC_D); \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.installed: pyproject.toml | $(VENV)/.system
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	@touch $@

system: $(VENV)/.system
venv: $(VENV)/.installed

up: venv
	$(BIN)/vswitch up --ports $(PORTS)

test: venv
	$(BIN)/pytest

test-unit: venv
	$(BIN)/pytest tests/unit

test-integration: venv
	$(BIN)/pytest tests/integration

lint: venv
	$(BIN)/ruff check vswitch tests $(wildcard bench)
	$(BIN)/ruff format --check vswitch tests $(wildcard bench)
	$(BIN)/mypy vswitch tests $(wildcard bench)

fuzz: venv
	$(BIN)/pytest -m slow tests/unit -p no:randomly

bench: venv
	$(BIN)/vswitch bench --ipv6

bench-quick: venv
	$(BIN)/vswitch bench --quick

bench-micro: venv
	$(BIN)/pytest bench --benchmark-only -p no:cacheprovider -o addopts=""

# Not part of `make test`: root, real namespaces, ping and iperf3, about 6 minutes (bench/README.md).
bench-emulation: venv
	$(BIN)/python bench/emulation.py

# The reliability figures (README "Reliability"): each part can run alone.
stress: stress-crash stress-floods stress-noisy

# Not part of `make test` (a short version is): root, real namespaces, 1.2-2.5 s an iteration.
stress-crash: venv
	$(BIN)/python bench/stress/crash.py --iterations 50

# Not part of `make test` either: root, real namespaces, raw-socket floods, iperf3 and ping; each
# prints a table and writes bench/results/stress-{floods,noisy}-STAMP.json and .png.
stress-floods: venv
	$(BIN)/python bench/stress/floods.py

stress-noisy: venv
	$(BIN)/python bench/stress/noisy.py

# Not part of `make test`: root, real namespaces, iperf3 and ping, MINUTES minutes (default 10).
MINUTES ?= 10
soak: venv
	$(BIN)/python bench/stress/soak.py --minutes $(MINUTES)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .benchmarks
