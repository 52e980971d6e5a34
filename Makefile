# Two commands on a fresh machine with python3 and make: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= sample
PROFILE ?= cpu
ARGS ?=

.PHONY: install run test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt -e ".[test]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/cnnlab run --dataset $(DATASET) --profile $(PROFILE) $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/input_pipeline.py

clean:
	rm -rf $(VENV) build src/*.egg-info
