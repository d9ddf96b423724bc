"""An eval killed with SIGKILL half-way through a contender loses only the batches in flight:
the re-run generates just the missing prompts, and its report equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO
from test_eval import LENIENT_GATE, eval_config, project, trained  # noqa: F401  (fixtures)

# Longer answers than the other eval tests: the tiny model never stops early, so each batch
# takes long enough for the kill to land between two of them.
SLOW = {"gate": LENIENT_GATE, "max_new_tokens": 12, "hf": {"batch_size": 2}}


def cache_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(str(path), timeout=60) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0


def comparable(report: dict) -> dict:
    """The report without what differs between two runs of the same eval: when it ran."""
    return {k: v for k, v in report.items() if k not in ("created_at",)}


def latest(root: Path) -> Path:
    return root / "artifacts" / "evals" / (root / "artifacts" / "evals" / "LATEST").read_text().strip()


def test_sigkill_mid_contender_then_resume(project, tiny_model_dir):  # noqa: F811
    cfg = eval_config(project, tiny_model_dir, SLOW)
    cache = project.root / "artifacts" / "cache" / "generations.sqlite"

    # The reference: an uninterrupted run, then its cache and eval removed.
    assert project.run("eval", "--config", str(cfg)).exit_code == 0
    reference = json.loads((latest(project.root) / "report.json").read_text())
    counts = json.loads((latest(project.root) / "manifest.json").read_text())["cache"]
    candidate_n, baseline_n = counts["candidate"]["generated"], counts["baseline"]["generated"]
    assert cache_rows(cache) == candidate_n + baseline_n
    shutil.rmtree(project.root / "artifacts" / "evals")
    for leftover in cache.parent.glob("generations.sqlite*"):
        leftover.unlink()

    # The same eval as a separate process, killed (SIGKILL: no handler runs) once the
    # candidate is done and the baseline has committed a few batches.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "eval", "--config", str(cfg)], cwd=project.root,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while cache_rows(cache) < candidate_n + 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    proc.stderr.close()
    before = cache_rows(cache)
    assert candidate_n + 2 <= before < candidate_n + baseline_n, "the kill did not land mid-way through the baseline"
    assert not (project.root / "artifacts" / "evals" / "LATEST").exists()  # no half-written eval

    # The re-run generates only what the killed run had not committed.
    result = project.run("eval", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    manifest = json.loads((latest(project.root) / "manifest.json").read_text())
    assert manifest["cache"]["candidate"]["generated"] == 0
    assert manifest["cache"]["baseline"]["generated"] == candidate_n + baseline_n - before
    assert manifest["cache"]["baseline"]["cached"] == manifest["cache"]["baseline"]["prompts"] - (
        candidate_n + baseline_n - before)
    assert cache_rows(cache) == candidate_n + baseline_n
    assert f"baseline: {candidate_n + baseline_n - before} generated" in result.output

    resumed = json.loads((latest(project.root) / "report.json").read_text())
    assert comparable(resumed) == comparable(reference)
