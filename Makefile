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

#: every guest test program that makes sense on Debian's newer kernels (make test-kernels);
#: kernel_sva only on sid (trixie's 6.12 refuses SVA, and its setup expects 6.1's PRI handling)
KERNEL_TESTS := enumerate demo environment dma_passthrough interrupts dma_nested invalidation \
	page_fault isolation kmod_dma kernel_iommu kernel_dma_api kernel_isolation kernel_lazy \
	kernel_strict demo_kernel

.PHONY: setup provision test test-kernels fuzz soak bench run clean help

help:
	@echo "make run    provision what is missing and run the demo"
	@echo "make test   provision what is missing and run the whole test suite"
	@echo "make fuzz   long fuzz campaign: FUZZ_EXAMPLES (default $(FUZZ_EXAMPLES)) per vfio-user command and control-RPC target"
	@echo "make test-kernels  every guest test program on Debian trixie's 6.12 and sid's 7.x kernels"
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

# Opt-in: the guest programs `make test` runs only on bookworm's kernel, on trixie's and sid's
# too (vuser run --kernel; the first run fetches those kernels and their toolchains).
test-kernels: setup provision
	$(BIN)/vuser run -q --kernel debian:trixie $(addprefix --test ,$(KERNEL_TESTS))
	$(BIN)/vuser run -q --kernel debian:sid $(addprefix --test ,$(KERNEL_TESTS) kernel_sva)

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
