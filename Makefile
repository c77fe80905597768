# irkit: two commands for a fresh machine (see README.md):
#   make demo   set up, bring up the lab, contain the simulated breach, verify the audit log
#   make test   run the whole test suite (installs what it needs; the lab needs root)

# the venv's interpreter must be runnable by unprivileged users (engine tests as `nobody`): prefer the system one
PYTHON ?= $(if $(wildcard /usr/bin/python3),/usr/bin/python3,python3)
VENV   ?= .venv
BIN     = $(VENV)/bin
IRKIT   = $(BIN)/irkit
CASE   ?= DEMO-$(shell date -u +%Y%m%d-%H%M%S)
export IRKIT_HOME ?= $(CURDIR)/irkit-cases
# A public passphrase, for the demo lab only (target-specific: never exported for other targets, so keys
# made through any other target need a real passphrase: $IRKIT_KEY_PASSPHRASE or a prompt).
demo: export IRKIT_KEY_PASSPHRASE ?= demo-passphrase-change-me

.PHONY: setup system-deps venv demo test test-fast lab-down bench clean

system-deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make: the lab needs root (network namespaces); run as root" >&2; exit 4; fi
	@(for t in /usr/sbin/sshd nft conntrack ssh-keygen sshpass perl nsenter unshare pivot_root ip iptables lsof setcap chattr; do command -v $$t >/dev/null 2>&1 || exit 1; done) || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	     openssh-server openssh-client nftables conntrack iproute2 procps util-linux sshpass perl iptables lsof libcap2-bin e2fsprogs >/dev/null)
	@ls /usr/sbin/sshd >/dev/null
	@(for t in samba samba-tool kinit kvno; do command -v $$t >/dev/null 2>&1 || exit 1; done) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq samba samba-ad-dc krb5-user >/dev/null)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@command -v redis-server >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)

$(BIN)/irkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,redfish]'
	@touch $(BIN)/irkit

venv: $(BIN)/irkit

setup: system-deps venv

demo: setup
	$(IRKIT) keys init --if-missing
	$(IRKIT) lab up --msp acme
	$(IRKIT) contain --msp acme --case $(CASE) --yes
	$(IRKIT) audit verify --case $(CASE)
	$(IRKIT) evidence verify --case $(CASE)
	$(IRKIT) audit report --case $(CASE) --msp acme
	@echo
	@echo "Case $(CASE) is contained. Everything is in $(IRKIT_HOME)/cases/$(CASE)/:"
	@echo "  audit log:  $(IRKIT) audit show --case $(CASE)     (signed; checkpoint: audit/checkpoint)"
	@echo "  evidence:   $(IRKIT) evidence list --case $(CASE)"
	@echo "  escrow:     $(IRKIT) escrow list --case $(CASE)"
	@echo "  report:     $(IRKIT_HOME)/cases/$(CASE)/reports/report.html   (per tenant: $(IRKIT) audit report --case $(CASE) --tenant T)"
	@echo "The lab is still up for you to look around ($(IRKIT) lab info --msp acme); remove it with: make lab-down"

test: setup
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not lab and not slow"

lab-down: venv
	$(IRKIT) lab down --msp acme

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info
