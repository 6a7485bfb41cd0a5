# vuser: `make run` and `make test` provision whatever is missing, then run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup test run clean help

help:
	@echo "make run    provision what is missing and run the demo"
	@echo "make test   provision what is missing and run the whole test suite"
	@echo "make setup  create $(VENV) with vuser (editable) and its test dependencies"

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

run: setup
	$(BIN)/vuser serve --device sample@/tmp/vuser-sample.sock

clean:
	rm -rf $(VENV) build *.egg-info
