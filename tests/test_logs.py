"""Off a terminal (cron, CI, `make retrain > log`) refit's output is lines a scheduler can
read: training every tenth of its steps with step, loss and tokens/s, validation with its
step, eval per contender and suite; library noise (FutureWarnings, tqdm bars) stays out."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import PASSING_GATE, REPO, rag_logs, tiny_pipeline_config

NOISE = ("FutureWarning", "DeprecationWarning", "is_gradient_checkpointing", "Loading weights",
         "Converting and de-quantizing", "it/s]", "warnings.warn")


def run_cli(root, *args: str) -> str:
    """The real CLI as a separate process, its output a pipe (not a terminal)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE", "TRANSFORMERS_"))}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=root, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(REPO)}, timeout=600)
    assert done.returncode in (0, 3), done.stdout + done.stderr
    return done.stdout + done.stderr


def test_train_and_eval_logs_off_a_terminal(workspace, tiny_model_dir):
    workspace.write_logs("a.jsonl", rag_logs(70))
    cfg = tiny_pipeline_config(workspace, tiny_model_dir, gate=PASSING_GATE,
                               train={"max_steps": 20, "eval_steps": 10, "save_steps": 10})
    for stage in ("curate", "split"):
        assert workspace.run(stage, "--config", str(cfg)).exit_code == 0
    train = run_cli(workspace.root, "train", "--config", str(cfg))
    steps = [int(s) for s in re.findall(r"^  step (\d+)/20 \(\d+%\): loss \d+\.\d+, [\d,]+ tokens/s$", train, re.M)]
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20], train
    assert re.search(r"^  base model: validation loss \d+\.\d+$", train, re.M), train  # before step 1
    assert "/1: validation loss" not in train, train
    assert re.search(r"^  step 10/20: validation loss \d+\.\d+$", train, re.M), train
    assert re.search(r"^  step 20/20: validation loss \d+\.\d+$", train, re.M), train

    evaluated = run_cli(workspace.root, "eval", "--config", str(cfg))
    for contender in ("candidate", "baseline"):
        assert re.search(rf"^  {contender}: \d+ generated, 0 from the cache", evaluated, re.M), evaluated
        for suite in ("validation", "regression", "instruction_following", "arithmetic", "refusal"):
            assert re.search(rf"^    {contender}/{suite}: \d+ prompts, \d+ generated$", evaluated, re.M), evaluated
        assert re.search(rf"^  {contender}: generate: \d+/\d+ \(\d+s\)$", evaluated, re.M), evaluated
    for output in (train, evaluated):
        assert not [n for n in NOISE if n in output], output


def test_tqdm_bars_of_libraries_are_off():
    """The GGUF conversion draws its bar with tqdm.auto: off once refit has quietened the
    libraries (before they are imported, as the CLI does)."""
    code = ("from pipelines.console import quiet_libraries; quiet_libraries()\n"
            "from tqdm.auto import tqdm\n"
            "for _ in tqdm(range(3), desc='Converting and de-quantizing GGUF tensors...'): pass\n"
            "import warnings; warnings.warn('x is deprecated', FutureWarning)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE", "TRANSFORMERS_"))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**env, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", done.stderr
