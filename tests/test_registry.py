"""`refit promote`, `rollback`, `history` and `status` through the real CLI, on a SQLite registry
in a temporary project and a tiny evaluated model: lineage tags, the candidate and champion
aliases, refusal and forced override, the audit log (file and registry tags), the model card,
rollback, concurrent promotions, and exit codes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import PASSING_GATE, copy_project, read_jsonl, tiny_pipeline_config


@pytest.fixture
def project(tiny_pipeline, workspace, tiny_model_dir):
    copy_project(tiny_pipeline["evaluated"], workspace)
    workspace.cfg = tiny_pipeline_config(workspace, tiny_model_dir, gate=PASSING_GATE)
    workspace.passed = tiny_pipeline["passed"]
    workspace.failed = tiny_pipeline["failed"]
    return workspace


def registry(ws):
    from mlflow.tracking import MlflowClient

    from pipelines import tracking
    from pipelines.config import load_config

    config = load_config(ws.cfg)
    tracking.setup(config)
    return config, MlflowClient()


def aliases(client, name="refit-default"):
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def audit_file(ws):
    return read_jsonl(ws.root / "artifacts" / "registry" / "default" / "audit.jsonl")


def test_promote_with_a_passing_report_registers_lineage_moves_both_aliases_and_is_idempotent(project):
    result = project.run("promote", "--config", str(project.cfg), "--eval", project.passed)
    assert result.exit_code == 0, result.output
    assert f"Registered refit-default v1 from {project.passed}" in result.output
    assert "candidate: none -> v1" in result.output and "champion: none -> v1" in result.output

    config, client = registry(project)
    assert aliases(client) == {"candidate": "1", "champion": "1"}
    version = client.get_model_version("refit-default", "1")
    report = json.loads((project.root / "artifacts" / "evals" / project.passed / "report.json").read_text())
    run = json.loads((project.root / "artifacts" / "runs" / report["run"]["id"] / "manifest.json").read_text())
    tags = version.tags
    assert tags["refit.run_id"] == run["id"] and tags["refit.eval_id"] == project.passed
    assert tags["refit.dataset_id"] == run["dataset"]["id"]
    assert tags["refit.dataset_sha256"] == run["dataset"]["examples_sha256"]
    assert tags["refit.split_id"] == run["split"]["id"] and tags["refit.backend"] == "lora"
    assert tags["refit.base_model"] == run["base_model"]["id"] and tags["refit.config_hash"] == run["config_hash"]
    assert tags["refit.eval_report"].endswith(f"{project.passed}/report.json") and tags["refit.gate"] == "passed"
    p = report["gate"]["primary"]
    assert tags["refit.primary_metric"] == "validation/f1"
    assert float(tags["refit.primary_low"]) == pytest.approx(p["low"], abs=1e-5)
    assert "CI, n=" in tags["refit.primary"]
    # The source is the adapter, logged under model/ in the run's MLflow artifacts.
    assert version.source.endswith("/model") and version.run_id == run["mlflow"]["run_id"]
    logged = {Path(f.path).name for f in client.list_artifacts(version.run_id, "model")}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= logged
    # (The copies of the project share the original's artifact folder: MLflow stores it absolute.)
    assert "model_cards/v1.md" in [f.path for f in client.list_artifacts(version.run_id, "model_cards")]

    # The model card, on disk and logged with the version.
    card = (project.root / "artifacts" / "registry" / "default" / "cards" / "v1.md").read_text()
    for heading in ("## Model", "## Data lineage", "## Training settings", "## Evaluation (95% bootstrap intervals)",
                    "## Gate and guard results", "## Intended use", "## Known failure labels"):
        assert heading in card
    assert run["dataset"]["id"] in card and run["split"]["id"] in card and "LoRA rank" in card
    assert "| validation |" in card and "| guard:arithmetic | pass |" in card and "[" in card  # intervals
    assert "bad_format" in card  # per-label results on the primary suite

    # Every move is audited, in the file and as registry tags.
    entries = audit_file(project)
    assert [(e["alias"], e["from_version"], e["to_version"], e["action"]) for e in entries] == [
        ("candidate", None, "1", "register"), ("champion", None, "1", "promote")]
    assert entries[1]["report"] == tags["refit.eval_report"] and "@" in entries[1]["who"]
    assert entries[1]["reason"].startswith("gate passed: validation/f1 vs baseline")
    model_tags = client.get_registered_model("refit-default").tags
    assert json.loads(model_tags["refit.audit.000002"]) == entries[1]

    # The same eval again: no second version, no alias move.
    again = project.run("promote", "--config", str(project.cfg), "--eval", project.passed)
    assert again.exit_code == 0, again.output
    assert "Already registered" in again.output and "champion: v1 already" in again.output
    assert len(client.search_model_versions("name = 'refit-default'")) == 1
    assert len(audit_file(project)) == 2

    status = project.run("status", "--config", str(project.cfg))
    assert status.exit_code == 0, status.output
    assert f"champion   v1: run {run['id']}, eval {project.passed}, gate passed" in status.output
    assert "candidate  v1" in status.output and run["dataset"]["id"] in status.output
    # Each stage's newest output says how long the run that wrote it took (issue 16).
    stage_lines = [line for line in status.output.splitlines() if line.split()[:1] in (["run"], ["eval"])]
    assert len(stage_lines) == 2 and all(", took " in line and " s" in line for line in stage_lines), status.output
    as_json = json.loads(project.run("status", "--config", str(project.cfg), "--json").output)
    newest_run = json.loads((project.root / "artifacts" / "runs" / as_json["run"]["id"] / "manifest.json").read_text())
    assert as_json["run"]["wall_s"] == round(newest_run["timings"]["total_s"], 1)
    assert all(isinstance(as_json[stage]["wall_s"], float) for stage in ("dataset", "split", "eval")), as_json
    # ... and its peak memory, counted from the stage's start even when stages share a process.
    peaks = {stage: as_json[stage]["peak_rss_mb"] for stage in ("dataset", "split", "run", "eval")}
    assert all(isinstance(mb, float) and 10 < mb < 64 * 1024 for mb in peaks.values()), peaks
    assert all(", peak memory " in line and " GiB" in line for line in stage_lines), status.output
    history = project.run("history", "--config", str(project.cfg))
    assert "champion   none -> v1" in history.output and "promote" in history.output


def test_refusal_without_a_pass_then_forced_override_is_audited(project):
    refused = project.run("promote", "--config", str(project.cfg), "--eval", project.failed)
    assert refused.exit_code == 3, refused.output
    assert "champion stays unset: the gate failed: beats_baseline" in refused.output
    assert "[FAIL] beats_baseline" in refused.output and "--force --reason" in refused.output
    config, client = registry(project)
    assert aliases(client) == {"candidate": "1"}  # registered as the candidate, never the champion
    assert client.get_model_version("refit-default", "1").tags["refit.gate"] == "failed"

    no_reason = project.run("promote", "--config", str(project.cfg), "--eval", project.failed, "--force")
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output

    forced = project.run("promote", "--config", str(project.cfg), "--eval", project.failed, "--force",
                         "--reason", "hotfix for the refund policy; reviewed by hand")
    assert forced.exit_code == 0, forced.output
    assert "champion: none -> v1" in forced.output and "forced" in forced.output
    assert aliases(client) == {"candidate": "1", "champion": "1"}
    tags = client.get_model_version("refit-default", "1").tags
    assert tags["refit.forced"] == "true" and tags["refit.force_reason"].startswith("hotfix")
    last = audit_file(project)[-1]
    assert last["action"] == "force-promote" and last["reason"].startswith("hotfix")
    assert len(last["overrode"]) == 1 and last["overrode"][0].startswith("the gate failed: beats_baseline")


def test_rollback_walks_back_through_champions_and_records_outside_moves(project):
    assert project.run("promote", "--config", str(project.cfg), "--eval", project.failed, "--force",
                       "--reason", "first").exit_code == 0                     # v1 champion
    # The passing eval measured no champion; the champion has moved since, so it is stale.
    stale = project.run("promote", "--config", str(project.cfg), "--eval", project.passed)
    assert stale.exit_code == 3 and "champion moved since this eval" in stale.output
    assert project.run("promote", "--config", str(project.cfg), "--eval", project.passed, "--force",
                       "--reason", "second").exit_code == 0                    # v2 champion
    config, client = registry(project)
    assert aliases(client) == {"candidate": "2", "champion": "2"}

    missing_reason = project.run("rollback", "--config", str(project.cfg))
    assert missing_reason.exit_code == 2
    back = project.run("rollback", "--config", str(project.cfg), "--reason", "users report worse answers")
    assert back.exit_code == 0, back.output
    assert "champion v2 -> v1" in back.output
    assert aliases(client) == {"candidate": "2", "champion": "1"}
    entry = audit_file(project)[-1]
    assert (entry["action"], entry["from_version"], entry["to_version"]) == ("rollback", "2", "1")
    assert entry["reason"] == "users report worse answers"

    # v1 replaced nobody: nothing further back, unless a version is named.
    nothing = project.run("rollback", "--config", str(project.cfg), "--reason", "again")
    assert nothing.exit_code == 1 and "--version" in nothing.output
    named = project.run("rollback", "--config", str(project.cfg), "--reason", "v2 was fine", "--version", "2")
    assert named.exit_code == 0 and aliases(client)["champion"] == "2"

    # A move made behind refit's back is found and recorded before the next one.
    client.set_registered_model_alias("refit-default", "champion", "1")
    assert project.run("rollback", "--config", str(project.cfg), "--reason", "x", "--version", "2").exit_code == 0
    entries = audit_file(project)
    assert [(e["action"], e["from_version"], e["to_version"]) for e in entries[-2:]] == [
        ("external", "2", "1"), ("rollback", "1", "2")]
    history = project.run("history", "--config", str(project.cfg), "--json")
    assert [json.loads(line)["seq"] for line in history.output.splitlines()] == [e["seq"] for e in entries]


def _replay(entries):
    """The aliases the audit log says the registry has; fails if any entry does not start
    where the previous move of its alias ended (a half-moved or unrecorded move)."""
    state = {}
    for e in entries:
        assert e["from_version"] == state.get(e["alias"]), entries
        state[e["alias"]] = e["to_version"]
    return state


def test_two_promotions_at_once_never_half_move_the_aliases(project, tiny_model_dir):
    from pipelines import registry as reg

    config, client = registry(project)
    results, errors = [], []
    jobs = [dict(eval_id=project.passed), dict(eval_id=project.failed, force=True, reason="at once"),
            dict(eval_id=project.passed), dict(eval_id=project.failed, force=True, reason="at once")]
    barrier = threading.Barrier(len(jobs))

    def go(kwargs):
        barrier.wait()
        try:
            results.append(reg.promote(config, **kwargs))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # One version per eval, however many promoted it at once.
    versions = client.search_model_versions("name = 'refit-default'")
    assert sorted(v.tags["refit.eval_id"] for v in versions) == sorted([project.passed, project.failed])
    entries = audit_file(project)
    assert _replay(entries) == aliases(client)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    # The champion moved once: to whichever got there first. Had the passing eval come first,
    # the forced one still moves it; had the forced one come first, the passing eval is stale.
    champion_moves = [e for e in entries if e["alias"] == "champion"]
    assert 1 <= len(champion_moves) <= 2 and champion_moves[-1]["to_version"] == aliases(client)["champion"]

    # A promotion that cannot get the alias lock in time says who holds it (exit 1).
    from pipelines.locks import hold

    cfg = tiny_pipeline_config(project, tiny_model_dir, gate=PASSING_GATE, registry={"lock_timeout_s": 0.2})
    with hold(project.root / "artifacts" / "registry" / "default" / "aliases.lock", what="a test"):
        blocked = project.run("promote", "--config", str(cfg), "--eval", project.passed)
    assert blocked.exit_code == 1 and "another promotion or rollback" in blocked.output and "a test" in blocked.output


def test_promote_errors_exit_1(project):
    unknown = project.run("promote", "--config", str(project.cfg), "--eval", "eval-000000000000")
    assert unknown.exit_code == 1 and "not found" in unknown.output
    # The run changed after the eval measured it: the report is not about this run any more.
    report = json.loads((project.root / "artifacts" / "evals" / project.passed / "report.json").read_text())
    manifest = project.root / "artifacts" / "runs" / report["run"]["id"] / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"stage"', '"edited": true, "stage"', 1))
    changed = project.run("promote", "--config", str(project.cfg), "--eval", project.passed)
    assert changed.exit_code == 1 and "changed after eval" in changed.output
    bad = project.root / "bad.yaml"
    bad.write_text("registry: {dri: x}\n")
    assert project.run("promote", "--config", str(bad)).exit_code == 2


def test_an_openai_fine_tune_is_registered_by_its_model_id(project, tmp_path):
    import dataclasses
    from types import SimpleNamespace
    from urllib.parse import urlparse

    from pipelines import registry as reg
    from pipelines.model_card import lineage_tags, model_card

    config, client = registry(project)
    ev = reg.load_evaluated(config, project.passed)
    ft = "ft:gpt-4.1-mini-2025-04-14:acme:refit:abc123"
    run = {k: v for k, v in ev.run.items() if k != "adapter"}
    mlflow_run = client.create_run(client.get_experiment_by_name("refit-default").experiment_id)
    run.update(backend="openai", mlflow={"run_id": mlflow_run.info.run_id},
               base_model={"name": "gpt-4.1-mini-2025-04-14", "provider": "openai"},
               openai={"fine_tuned_model": ft, "model": "gpt-4.1-mini-2025-04-14", "job_id": "ftjob-1",
                       "base_url": "http://127.0.0.1:9/v1", "hyperparameters": {"n_epochs": 3}})
    ev = dataclasses.replace(ev, run=run)
    # Logged under model/ in the run's artifacts: a small JSON holding the ft: model id.
    source, run_id = reg._source(config, client, ev)
    assert run_id == mlflow_run.info.run_id and source.endswith("/model")
    held = json.loads(Path(client.download_artifacts(run_id, "model/openai_model.json", str(tmp_path))).read_text())
    assert held["fine_tuned_model"] == ft and held["job_id"] == "ftjob-1"
    tags = lineage_tags(config, ev)
    assert tags["refit.backend"] == "openai" and tags["refit.openai_model"] == ft and "refit.adapter" not in tags
    assert tags["refit.base_model"] == "gpt-4.1-mini-2025-04-14"
    card = model_card(config, SimpleNamespace(version=7), ev)
    assert f"Model id: `{ft}`" in card and "| n_epochs | 3 |" in card
    # Without an MLflow run: the same file, kept beside the audit log (never inside the run).
    source, run_id = reg._source(config, client, dataclasses.replace(ev, run={**run, "mlflow": {}}))
    assert run_id is None and (Path(urlparse(source).path) / "openai_model.json").exists()
    assert "artifacts/registry/default/models/" in source
