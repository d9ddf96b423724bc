"""`--set dotted.key=value` on every command that takes --config, and the flags that set a
config value: both go through the same validation as the YAML file, and a bad one exits 2
with one line naming the key."""

from __future__ import annotations

import pytest
import yaml


def _stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_set_reaches_the_stage(workspace):
    cfg = workspace.config()
    # The stage reads the overridden value: a dataset id that does not exist.
    result = workspace.run("split", "--config", str(cfg), "--set", "split.dataset=cur-000000000000")
    assert result.exit_code == 1 and "'cur-000000000000' not found" in result.output
    # A flag that sets a config value is the same override.
    flag = workspace.run("split", "--config", str(cfg), "--dataset", "cur-000000000001")
    assert flag.exit_code == 1 and "'cur-000000000001' not found" in flag.output


def test_set_is_validated_like_the_file(workspace):
    from pipelines.cli import _load
    from pipelines.config import load_config

    cfg = workspace.config()
    overridden = _load(cfg, ["train.epochs=2", "train.lora.r=4", "curate.inputs=[a.jsonl, b.jsonl]", "name=other"])
    data = yaml.safe_load(cfg.read_text())
    data["train"] = {"epochs": 2, "lora": {"r": 4}}
    data["curate"]["inputs"] = ["a.jsonl", "b.jsonl"]
    data["name"] = "other"
    same = workspace.root / "same.yaml"
    same.write_text(yaml.safe_dump(data))
    assert overridden == load_config(same)


@pytest.mark.parametrize("args, names", [
    (["split", "--set", "split.validation_fractoin=0.3"], ["split.validation_fractoin"]),  # unknown key
    (["split", "--set", "trian.epochs=2"], ["trian"]),  # unknown section
    (["train", "--set", "train.epochs=two"], ["train.epochs"]),  # wrong type
    (["train", "--set", "train.epochs"], ["train.epochs"]),  # no value
    (["curate", "--set", "name.x=1"], ["name"]),  # a value, not a section
])
def test_a_bad_set_exits_2_with_one_line_naming_the_key(workspace, args, names):
    cfg = workspace.config()
    result = workspace.run(*args, "--config", str(cfg))
    assert result.exit_code == 2, result.output
    lines = _stderr_lines(result)
    assert len(lines) == 1, lines
    assert all(name in lines[0] for name in names), lines


def test_a_bad_backend_flag_exits_2_instead_of_training_lora(workspace):
    cfg = workspace.config()
    result = workspace.run("train", "--config", str(cfg), "--backend", "lora2")
    assert result.exit_code == 2, result.output
    lines = _stderr_lines(result)
    assert len(lines) == 1 and "train.backend" in lines[0] and "lora2" in lines[0], lines


@pytest.mark.parametrize("command", ["curate", "split", "train", "eval", "promote", "rollback", "history", "status",
                                     "retrain"])
def test_every_command_with_a_config_takes_set(workspace, command):
    cfg = workspace.config()
    extra = ["--reason", "a test"] if command == "rollback" else []
    result = workspace.run(command, "--config", str(cfg), *extra, "--set", "train.epochz=2")
    assert result.exit_code == 2, result.output
    assert "train.epochz" in result.stderr
