"""scripts/bench_split.py's reference (split as of REFERENCE_REV, with the modules it imported
then) still runs against today's code and splits a generated dataset as today's split does."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_split  # noqa: E402


def test_the_reference_split_runs_and_agrees_with_todays(workspace, tiny_tokenizer_dir, monkeypatch, tmp_path):
    shown = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{bench_split.REFERENCE_REV}^{{commit}}"])
    if shown.returncode != 0:
        pytest.skip(f"this clone lacks {bench_split.REFERENCE_REV} (shallow?)")
    config = workspace.config(curate={"inputs": [str(REPO / "datasets" / "samples" / "logs")],
                                      "general_mix": {"path": None}})
    assert workspace.run("curate", "--config", str(config)).exit_code == 0
    monkeypatch.setattr(bench_split, "sample_dataset", workspace.curated)
    bench_config = bench_split.generate(tmp_path / "bench", 600)
    data = yaml.safe_load(bench_config.read_text())
    data["model"]["base"] = str(tiny_tokenizer_dir)
    bench_config.write_text(yaml.safe_dump(data))

    refit = bench_split.run("refit", bench_config, bench_split.REFERENCE_REV)
    reference = bench_split.run("reference", bench_config, bench_split.REFERENCE_REV)

    assert "error" not in refit and "error" not in reference, (refit.get("error"), reference.get("error"))
    for key in ("train", "validation", "held_out_for_regression"):
        assert refit["counts"][key] == reference["counts"][key]
    assert refit["counts"]["train"] + refit["counts"]["validation"] > 500
