"""`refit split`'s memory does not grow with the dataset: the real stage, in a fresh process,
on a generated curated dataset of 40,000 examples (55 MB).

The split that held every example as a dict grew by about 12 KB an example (measured with
this test's child on this dataset: +492 MiB over the imports and tokenizer at 40,000
examples); the streaming split keeps ~110 bytes an example plus a batch, so its growth stays
under the bound below whatever the size."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import orjson
from conftest import rag_logs

N_EXAMPLES = 40_000
GROWTH_BOUND_MIB = 160

CHILD = """
import json, resource, sys
import psutil
import datasets, sklearn.model_selection  # split's lazy imports, loaded before the baseline
from pipelines.config import load_config
from pipelines.models import load_tokenizer
from pipelines.split import split
config = load_config(sys.argv[1])
tokenizer = load_tokenizer(config.model.base)
baseline = psutil.Process().memory_info().rss
result = split(config, force=True, tokenizer=tokenizer)
print(json.dumps({"baseline": baseline, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "counts": result.manifest["counts"]}))
"""


def _grow(dataset: Path, n: int) -> None:
    """Replace the curated examples with n of the same shape: distinct questions, clusters and
    sessions of two, labels as curated."""
    shapes = [orjson.loads(x) for x in (dataset / "examples.jsonl").read_bytes().splitlines()]
    shapes = [e for e in shapes if e.get("kind") == "rag"]
    rng = random.Random(0)
    words = "account archive billing board export invoice plan project refund report seat task team user".split()
    with open(dataset / "examples.jsonl", "wb") as handle:
        for i in range(n):
            question = f"How do I {' '.join(rng.choice(words) for _ in range(10))} ({i})?"
            handle.write(orjson.dumps({**shapes[i % len(shapes)], "id": f"ex-{i:08d}", "query": question,
                                       "cluster_id": f"c-{i:08d}", "session_id": f"s-{i // 2:08d}"}) + b"\n")
    (dataset / "preferences.jsonl").unlink(missing_ok=True)


def test_split_memory_does_not_grow_with_the_dataset(workspace):
    workspace.write_logs("a.jsonl", rag_logs(120, sessions=10))
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None},
                                   "idk": {"synthetic_fraction": 0.1}, "dedup": {"threshold": 0.9}},
                           split={"validation_fraction": 0.2, "min_validation": 5, "min_train": 10,
                                  "regression": {"size": 10, "path": "pipeline-state/regression.jsonl"}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    assert workspace.run("split", "--config", str(cfg)).exit_code == 0  # draws the frozen regression set
    _grow(workspace.curated(), N_EXAMPLES)
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CHILD, str(cfg)], capture_output=True, text=True, cwd=workspace.root,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    counts = result["counts"]
    assert counts["curated"] == N_EXAMPLES and counts["train"] + counts["validation"] > 0.9 * N_EXAMPLES
    growth_mib = (result["peak"] - result["baseline"]) / 2**20
    assert growth_mib < GROWTH_BOUND_MIB, f"split grew by {growth_mib:.0f} MiB on {N_EXAMPLES:,} examples"
