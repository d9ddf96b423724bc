"""Issue 11, item 14: a stage's id hashes only the code its output depends on. Editing cli.py
or a comment elsewhere keeps every dataset, split and run id; editing the stage's own module
(or one it imports) changes it. Run on a copy of the code, through the real CLI for curate."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, rag_logs

STAGES = ("pipelines.curate", "pipelines.split", "pipelines.train", "pipelines.train_openai", "evals.runner")
PROBE = "import sys; from pipelines.storage import code_version; print(*(code_version(m) for m in sys.argv[1:]))"


@pytest.fixture
def code(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    for package in ("pipelines", "evals"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _versions(code: Path) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, *STAGES], cwd=code, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(code)}).stdout.split()
    return dict(zip(STAGES, out))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def test_only_the_code_a_stage_runs_is_in_its_version(code):
    before = _versions(code)
    assert len(set(before.values())) == len(STAGES)  # each stage has its own
    _edit(code / "pipelines" / "cli.py", "Nothing to do: these inputs", "Nothing to do here: these inputs")
    _edit(code / "pipelines" / "split.py", "\nimport ", "\n# a comment only\nimport ")
    assert _versions(code) == before
    _edit(code / "pipelines" / "curate_shard.py", "POOL = 1024", "POOL = 2048")
    after = _versions(code)
    assert after["pipelines.curate"] != before["pipelines.curate"]
    assert {k: v for k, v in after.items() if k != "pipelines.curate"} == {
        k: v for k, v in before.items() if k != "pipelines.curate"}
    _edit(code / "pipelines" / "storage.py", "LOG_SUFFIXES = (", "LOG_SUFFIXES = (\".log.jsonl\", ")
    shared = _versions(code)
    assert all(shared[m] != after[m] for m in STAGES)  # every stage reads its inputs through storage


def test_the_dataset_id_survives_a_cli_edit_but_not_a_curate_edit(code, workspace):
    workspace.write_logs("a.jsonl", rag_logs(6))
    cfg = workspace.config()
    env = {**os.environ, "PYTHONPATH": str(code)}

    def curate() -> str:
        result = subprocess.run([sys.executable, "-m", "pipelines.cli", "curate", "--config", str(cfg)],
                                cwd=workspace.root, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return (workspace.root / "datasets" / "curated" / "LATEST").read_text().strip()

    first = curate()
    _edit(code / "pipelines" / "cli.py", "Nothing to do: these inputs", "Nothing to do here: these inputs")
    assert curate() == first
    _edit(code / "pipelines" / "curate_shard.py", "POOL = 1024", "POOL = 2048")
    assert curate() != first
