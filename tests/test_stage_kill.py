"""A `--force` rebuild killed mid-way keeps the old output whole (item 1 of issue 11), and the
temp folders a killed run leaves are removed by the next run (item 2). The kills are real:
SIGKILL to a `python -m pipelines.cli` subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, rag_logs
from test_eval import eval_config

from pipelines.stage import atomic_replace, exchange, sweep_stale


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _kill_rebuild(root: Path, cfg: Path, stage: str, watch: Path, marker: str, delay: float) -> None:
    """Start `refit <stage> --force`, SIGKILL it `delay` s after a `marker*` entry appears in
    `watch` (the rebuild is under way), and check that it really was killed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", stage, "--config", str(cfg), "--force"],
                            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(marker) for p in watch.iterdir()):
        assert proc.poll() is None, f"{stage} --force ended before the kill"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"{stage} --force finished before the kill"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir, tiny_tokenizer_dir):
    from conftest import Workspace

    root = tmp_path_factory.mktemp("killed")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        ws = Workspace(root, tiny_tokenizer_dir)
        ws.write_logs("a.jsonl", rag_logs(150))
        cfg = eval_config(ws, tiny_model_dir)
        for stage in ("curate", "split", "train", "eval"):
            result = ws.run(stage, "--config", str(cfg))
            assert result.exit_code in (0, 3), result.output
    finally:
        os.chdir(cwd)
    return ws, cfg


STAGES = [  # stage, its output folder, the entry that shows the rebuild is under way, delay, next stage
    ("curate", "datasets/curated", ".tmp-cur-", 0.02, "split"),
    ("split", "datasets/splits", ".tmp-spl-", 0.05, "train"),
    ("train", "artifacts/runs", ".work-run-", 1.0, "eval"),
    ("eval", "artifacts/evals", ".tmp-eval-", 0.0, None),
]


def test_a_killed_force_rebuild_keeps_every_stage_output(built, monkeypatch):
    ws, cfg = built
    monkeypatch.chdir(ws.root)
    for stage, folder, marker, delay, next_stage in STAGES:
        out = ws.root / folder
        ident = (out / "LATEST").read_text().strip()
        before = _snapshot(out / ident)
        watch = out if stage != "eval" else out
        if stage == "eval":  # eval builds its folder only once every prediction is made: kill it generating
            marker, watch, delay = "", ws.root / "artifacts", 2.0
        _kill_rebuild(ws.root, cfg, stage, watch, marker, delay)
        assert (out / "LATEST").read_text().strip() == ident, stage
        assert _snapshot(out / ident) == before, f"{stage}: the old output changed"
        if next_stage is not None:
            result = ws.run(next_stage, "--config", str(cfg))
            assert result.exit_code in (0, 3), result.output
        # The next run of the stage removes what the killed one left, and says so.
        leftovers = [p for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        result = ws.run(stage, "--config", str(cfg))
        assert result.exit_code in (0, 3), result.output
        assert not [p for p in out.iterdir() if p.name.startswith((".tmp-", ".old-"))]
        for path in leftovers:
            assert f"removed {path}" in result.output.replace("\n", "")


def test_the_swap_is_one_exchange_and_a_kill_between_two_renames_is_repaired(tmp_path):
    final = tmp_path / "cur-1"
    final.mkdir()
    (final / "manifest.json").write_text("old")
    with atomic_replace(final) as tmp:
        (tmp / "manifest.json").write_text("new")
    assert (final / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["cur-1"]
    other = tmp_path / "other"
    other.mkdir()
    assert exchange(final, other) and (other / "manifest.json").read_text() == "new"
    # Where there is no atomic exchange, a kill between "old aside" and "new in" leaves the old
    # folder as .old-<name>-<dead pid>-<ns>: the next run puts it back.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    os.rename(other, tmp_path / f".old-cur-2-{dead}-1")
    (tmp_path / f".tmp-cur-2-{dead}-2").mkdir()
    notes = sweep_stale(tmp_path)
    assert (tmp_path / "cur-2" / "manifest.json").read_text() == "new"
    assert not (tmp_path / f".tmp-cur-2-{dead}-2").exists() and len(notes) == 2
