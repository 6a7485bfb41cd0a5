# vuser: `make run` and `make test` provision whatever is missing, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
#: hypothesis examples per fuzz target for `make fuzz` (the default run uses 25)
FUZZ_EXAMPLES ?= 2000
#: minutes of guest DMA for `make soak`
MINUTES ?= 2

BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: setup provision test fuzz soak bench run clean help

help:
	@echo "make run    provision what is missing and run the demo"
	@echo "make test   provision what is missing and run the whole test suite"
	@echo "make fuzz   long fuzz campaign: FUZZ_EXAMPLES (default $(FUZZ_EXAMPLES)) per vfio-user command and control-RPC target"
	@echo "make soak   MINUTES (default $(MINUTES)) of guest DMA with invalidations and PRI faults; the server's RSS and fds must stay bounded"
	@echo "make bench  the benchmark suite (bench/run.py, under 10 minutes): one table of every figure against its reference and target, and bench/results.json"
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

# Opt-in: the bounded fuzz of tests/fuzz, with many more examples per target.
fuzz: setup
	VUSER_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/fuzz \
		tests/e2e_host/test_hostile_properties.py -q $(PYTEST_ARGS)

# Opt-in: tests/soak/soak_run.py, named so that `make test` does not collect it.
soak: setup provision
	VUSER_SOAK_MINUTES=$(MINUTES) $(BIN)/python -m pytest tests/soak/soak_run.py -q -s \
		-p no:cacheprovider $(PYTEST_ARGS)

# bench/run.py: every bench script with --json, one table, bench/results.json.
# The bench extra adds pyinstrument (bench_mmio.py --profile) and uvloop (measured only).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,plot,bench]'
	touch $@

bench: setup provision $(BENCH_STAMP)
	$(BIN)/python bench/run.py

run: setup provision
	$(BIN)/vuser run

clean:
	rm -rf $(VENV) build *.egg-info
