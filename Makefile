# Two commands on a fresh machine with python3 and make: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= sample
# quick: the generated sample in under 5 minutes on 2 CPU cores; cpu: a real dataset on a CPU.
PROFILE ?= $(if $(filter sample,$(DATASET)),quick,cpu)
WEIGHTS_DIR ?= $(firstword $(wildcard ../shared/weights))
# auto: ImageNet weights from a file in WEIGHTS_DIR, else Keras' download, else (offline)
# random initialisation, announced in capitals and said in every output. imagenet refuses to
# go on without them; local never downloads.
WEIGHTS ?= auto
# Notebook 07: the Houses dataset and the Airbnb course CSVs, if ../shared is beside the checkout.
export CNNLAB_HOUSES_DIR ?= $(abspath $(firstword $(wildcard ../shared/datasets/houses)))
export CNNLAB_AIRBNB_DIR ?= $(abspath $(firstword $(wildcard ../shared/datasets/airbnb-madrid)))
# Without a local copy of the Houses dataset, the generated sample's run uses generated houses
# (no network needed); a real dataset's run downloads the Houses dataset.
MIXED_DATASET ?= $(if $(CNNLAB_HOUSES_DIR),houses,$(if $(filter sample,$(DATASET)),sample_houses,houses))
ARGS ?=
# A local copy of the DeepLab TFLite models, if this checkout has ../shared beside it.
export CNNLAB_DEEPLAB_DIR ?= $(abspath $(firstword $(wildcard ../shared/models/deeplab)))

.PHONY: install run test test-colab test-fast lint lab check-notebooks bench bench-make-run course-projects clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt -e ".[test,lab]"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/cnnlab run --dataset $(DATASET) --profile $(PROFILE) --weights $(WEIGHTS) \
		--mixed-dataset $(MIXED_DATASET) $(if $(WEIGHTS_DIR),--weights-dir $(WEIGHTS_DIR)) $(ARGS)

# Tests run in TEST_WORKERS processes (pytest-xdist; most tests keep one core busy), handed
# out one at a time, the longest first (tests/conftest.py), so that they do not finish last.
TEST_WORKERS ?= 2
XDIST = -n $(TEST_WORKERS) --dist loadgroup

test: install
	$(BIN)/python -m pytest $(XDIST) $(ARGS)

# A second environment pinned to Google Colab's preinstalled versions (TensorFlow 2.20, Keras
# 3.13, NumPy 2.1, ...): every unit test must pass there too. The end-to-end notebook tests
# (marker `slow`) run in `make test` only. Python is this machine's (Colab has 3.13; see README).
COLAB_CONSTRAINTS ?= ../shared/colab-gpu-constraints.txt
COLAB_VENV ?= .venv-colab

$(COLAB_VENV)/.installed: requirements.txt pyproject.toml
	@test -f $(COLAB_CONSTRAINTS) || { echo "$(COLAB_CONSTRAINTS) not found: set COLAB_CONSTRAINTS to Colab's pip constraints file"; exit 1; }
	$(PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install -q --upgrade pip
	$(COLAB_VENV)/bin/pip install -q -c $(COLAB_CONSTRAINTS) -r requirements.txt -e ".[test]"
	touch $@

test-colab: $(COLAB_VENV)/.installed
	$(COLAB_VENV)/bin/python -c "import tensorflow as tf, keras, numpy; print('colab env:', 'tensorflow', tf.__version__, 'keras', keras.__version__, 'numpy', numpy.__version__)"
	$(COLAB_VENV)/bin/python -m pytest $(XDIST) -m "not slow" $(ARGS)

test-fast: install
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks scripts

# JupyterLab on notebooks/, with this environment registered as the kernel "cnnlab".
lab: install
	$(BIN)/python -m ipykernel install --user --name cnnlab --display-name "Python (cnnlab)"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter lab notebooks/

# Fails if a committed notebook holds TensorFlow log lines, ../ or machine paths, is over
# 1 MiB, or comes from another run than the others.
check-notebooks: install
	$(BIN)/python scripts/check_notebooks.py

# BENCH_ARGS, e.g. --accuracy (adds the 15x200x20 course recipe, about 20 min on 2 cores).
BENCH_ARGS ?=
bench: install
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/training.py $(BENCH_ARGS)

# make run from an empty project folder, timed: docs/benchmarks/make_run.{json,md}.
bench-make-run: install
	$(BIN)/python benchmarks/make_run.py $(if $(WEIGHTS_DIR),--weights-dir $(WEIGHTS_DIR))

# The vehicles and weather course projects on ../shared (docs/course_projects.md): each runs its
# registry command (cnnlab.course_projects), is published, and the page is written.
course-projects: install
	$(BIN)/python scripts/course_projects.py --run vehicles
	$(BIN)/python scripts/course_projects.py --run weather

clean:
	rm -rf $(VENV) $(COLAB_VENV) build src/*.egg-info
