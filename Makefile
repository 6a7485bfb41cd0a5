# vuser: `make run` and `make test` provision whatever is missing, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup provision test run clean help

help:
	@echo "make run    provision what is missing and run the demo"
	@echo "make test   provision what is missing and run the whole test suite"
	@echo "make setup  create $(VENV) with vuser (editable), its test dependencies and the plot extra"
	@echo "make provision  QEMU with vfio-user-pci and the guest image, into the cache (idempotent)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,plot]'
	touch $@

# QEMU (system or Debian's, unpacked into ~/.cache/vuser) and the guest image;
# quiet and network-free when both are cached.
provision: setup
	$(BIN)/vuser provision --quiet

test: setup provision
	$(BIN)/python -m pytest $(PYTEST_ARGS)

run: setup provision
	$(BIN)/vuser run

clean:
	rm -rf $(VENV) build *.egg-info
