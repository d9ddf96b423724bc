"""The OpenAI backend with train.method dpo, and at the end of self-serve fine-tuning: a DPO
job through the real CLI and SDK against the local server (scripts/openai_server.py), the
preference files checked before upload and by the server, a base model past its shutdown
date or retired refused before any upload, a blocked organisation explained, and the
shutdown date carried to the registry's tags and `refit status`."""

from __future__ import annotations

import datetime as dt
import json
import sys

import test_openai_backend as backend
import yaml
from conftest import REPO, read_jsonl
from test_openai_backend import FAST, FILES, JOBS, SECRET, flat, manifest_of

# The backend tests' fixtures: one curated + split dataset per module, copied per test.
project, split_template, tracking_dir = backend.project, backend.split_template, backend.tracking_dir

sys.path.insert(0, str(REPO / "scripts"))
from openai_server import serve  # noqa: E402

MODEL = "gpt-4.1-mini-2025-04-14"


def _days(n: int) -> str:
    return (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=n)).isoformat()


def test_a_dpo_job_trains_on_the_preference_files(project):
    import openai

    cfg = yaml.safe_load(project.cfg.read_text())  # the project's config, with the method and beta on top
    cfg["train"] |= {"method": "dpo", "dpo": {"beta": 0.25}}
    project.cfg.write_text(yaml.safe_dump(cfg))
    with serve(FAST) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 0, result.output
        [run] = project.runs()
        m = manifest_of(run)
        job = server.state.jobs[m["openai"]["job_id"]].obj
        assert m["method"] == "dpo" and job["method"]["type"] == "dpo"
        assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.25
        assert m["openai"]["method"]["dpo"]["hyperparameters"]["beta"] == 0.25
        # The uploaded files are split's preference files, byte for byte.
        uploaded = server.state.files[job["training_file"]]
        assert uploaded.content == (project.split / "train.dpo.openai.jsonl").read_bytes()
        assert server.state.files[job["validation_file"]].content == \
            (project.split / "validation.dpo.openai.jsonl").read_bytes()
        assert m["openai"]["trained_tokens"] > 0 and m["losses"]["final_eval_loss"] > 0
        # The model prefers the preferred answer: the chat endpoint answers a pair's prompt with it.
        pair = read_jsonl(project.split / "validation.dpo.openai.jsonl")[0]
        client = openai.OpenAI(base_url=server.url, api_key=SECRET, max_retries=0)
        reply = client.chat.completions.create(model=m["openai"]["fine_tuned_model"], messages=pair["input"]["messages"])
        assert reply.choices[0].message.content == pair["preferred_output"][0]["content"]


def test_a_bad_preference_file_is_refused_before_any_upload(project):
    cfg = yaml.safe_load(project.cfg.read_text())
    cfg["train"]["method"] = "dpo"
    project.cfg.write_text(yaml.safe_dump(cfg))
    path = project.split / "train.dpo.openai.jsonl"
    lines = path.read_bytes().splitlines()
    pair = json.loads(lines[0])
    pair["non_preferred_output"] = pair["preferred_output"]  # nothing to prefer
    path.write_bytes(b"\n".join([json.dumps(pair).encode(), *lines[1:]]) + b"\n")
    with serve(FAST) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 1 and "identical_outputs" in flat(result) and "first at line 1" in flat(result)
        assert server.state.requests == [] and not project.runs()


def test_sft_plus_dpo_on_openai_is_a_clear_error(project):
    cfg = yaml.safe_load(project.cfg.read_text())
    cfg["train"]["method"] = "sft+dpo"
    project.cfg.write_text(yaml.safe_dump(cfg))
    result = project.train("--yes")
    assert result.exit_code == 1 and "LoRA backend only" in flat(result) and "Traceback" not in result.output


def test_a_model_past_its_shutdown_date_or_retired_is_refused_before_any_upload(project):
    with serve(FAST | {"models": {MODEL: {"shutdown_date": _days(-1)}}}) as server:
        project.use(server)
        result = project.train("--yes")
        text = flat(result)
        assert result.exit_code == 1 and f"was shut down on {_days(-1)}" in text
        assert "Azure OpenAI" in text and "LoRA backend" in text and "Traceback" not in result.output
        assert server.state.requests_to(FILES) == [] and server.jobs_created == 0
    with serve(FAST | {"models": {MODEL: {"retired": True}}}) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 1 and f"base model {MODEL} is not available on {server.url}" in flat(result)
        assert server.state.requests_to(FILES) == [] and server.jobs_created == 0


def test_a_blocked_organisation_gets_the_explanation_not_the_raw_error(project):
    with serve(FAST | {"blocked_organization": True}) as server:
        project.use(server)
        result = project.train("--yes")
        text = flat(result)
        assert result.exit_code == 1 and "this organisation may no longer fine-tune on OpenAI's API" in text
        assert "2027-01-06" in text and "Azure OpenAI" in text and "HTTP 403" in text
        assert server.jobs_created == 0 and len(server.state.requests_to(JOBS)) == 1  # a 403 is not retried


def test_the_shutdown_date_reaches_the_manifest_the_registry_tags_and_status(project):
    from pipelines.config import load_config
    from pipelines.model_card import lineage_tags
    from pipelines.registry import Evaluated
    from pipelines.status import lines

    with serve(FAST | {"models": {MODEL: {"shutdown_date": _days(12)}}}) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 0, result.output
        [run] = project.runs()
        m = manifest_of(run)
    assert m["base_model"]["shutdown_date"] == _days(12) and m["method"] == "sft"
    report = {"gate": {"passed": True, "failed": [], "primary": {}}}
    ev = Evaluated("evl-x", run, report, {"config_hash": "h"}, run, m)
    tags = lineage_tags(load_config(project.cfg), ev)
    assert tags["refit.openai_shutdown_date"] == _days(12) and tags["refit.method"] == "sft"
    version = {"version": "3", "run_id": m["id"], "eval_id": "evl-x", "gate": "passed", "forced": False,
               "shutdown_date": tags["refit.openai_shutdown_date"]}
    shown = "\n".join(lines({"pipeline": "default", "model": "refit-default", "dataset": None, "split": None,
                             "run": None, "eval": None, "champion": version, "candidate": None}))
    assert f"shuts down on {_days(12)} (in 12 days)" in shown
    later = dict(version, shutdown_date=_days(45))
    quiet = "\n".join(lines({"pipeline": "default", "model": "refit-default", "champion": later, "candidate": None}))
    assert "WARNING" not in quiet
