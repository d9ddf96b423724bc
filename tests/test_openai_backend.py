"""`refit train --backend openai` through the real CLI and the real `openai` SDK, against the
local fine-tuning API server (scripts/openai_server.py) on a free loopback port: a full run, every
injected fault, a run killed while waiting, cancel and restart, bad files, and the key never
leaving the process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, Workspace, rag_logs, read_jsonl

sys.path.insert(0, str(REPO / "scripts"))
from openai_server import serve  # noqa: E402

SECRET = "sk-test-SECRET-abc123"
FAST = {"jobs": {"validating_s": 0.05, "queued_s": 0.05, "running_s": 0.25}}
FILES = "POST /v1/files"
JOBS = "POST /v1/fine_tuning/jobs"
JOB = "GET /v1/fine_tuning/jobs/{id}"


MLFLOW_INIT = """
import sys, mlflow
from mlflow.tracking import MlflowClient
mlflow.set_tracking_uri("sqlite:///" + sys.argv[1])
MlflowClient().search_experiments()
"""


@pytest.fixture(scope="module")
def tracking_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def split_template(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, tracking_dir: Path) -> Path:
    """One curated + split dataset for the module, copied into each test's workspace; and one
    MLflow store, whose tables (seconds to create) are made by a second process meanwhile."""
    mlflow_init = subprocess.Popen([sys.executable, "-c", MLFLOW_INIT, str(tracking_dir / "mlflow.db")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = tmp_path_factory.mktemp("openai-split")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        ws = Workspace(root, tiny_tokenizer_dir)
        ws.write_logs("a.jsonl", rag_logs(70))
        cfg = ws.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "dedup": {"threshold": 0.9}},
                        split={"validation_fraction": 0.2, "min_validation": 5, "min_train": 10,
                               "regression": {"size": 6, "path": "state/regression.jsonl"}})
        for stage in ("curate", "split"):
            result = ws.run(stage, "--config", str(cfg))
            assert result.exit_code == 0, result.output
    assert mlflow_init.wait(timeout=120) == 0, mlflow_init.stderr.read().decode()
    return root


class Project:
    def __init__(self, ws: Workspace, tracking: Path, monkeypatch: pytest.MonkeyPatch):
        self.ws, self.root, self.tracking, self.monkeypatch = ws, ws.root, tracking, monkeypatch
        self.cfg = self.config()

    def config(self, **openai: Any) -> Path:
        settings = {"poll_interval_s": 0.05, "retry_backoff_s": 0.05, "retry_max_backoff_s": 0.2,
                    "request_timeout_s": 2.0, "connect_timeout_s": 2.0, "max_retries": 4}
        settings.update(openai)
        self.cfg = self.ws.config(train={"openai": settings},
                                  tracking={"uri": f"sqlite:///{self.tracking / 'mlflow.db'}",
                                            "artifact_location": str(self.tracking / "artifacts")})
        return self.cfg

    def use(self, server: Any) -> None:
        self.monkeypatch.setenv("OPENAI_BASE_URL", server.url)

    def train(self, *args: str) -> Any:
        return self.ws.run("train", "--config", str(self.cfg), "--backend", "openai", *args)

    @property
    def split(self) -> Path:
        return next((self.root / "datasets" / "splits").glob("spl-*"))

    def runs(self) -> list[Path]:
        return sorted((self.root / "artifacts" / "runs").glob("run-*"))

    def work(self) -> Path:
        return next((self.root / "artifacts" / "runs").glob(".work-run-*"))

    def state(self) -> dict[str, Any]:
        return json.loads((self.work() / "openai_state.json").read_text())


@pytest.fixture
def project(workspace: Workspace, split_template: Path, tracking_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Project:
    shutil.copytree(split_template / "datasets", workspace.root / "datasets")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    for name in ("OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    return Project(workspace, tracking_dir, monkeypatch)


def interrupt(self: Any, job: Any, new_events: Any, checkpoints: Any) -> None:
    """Stands in for the live display: Ctrl-C while the job is being followed."""
    raise KeyboardInterrupt


def flat(result: Any) -> str:
    """The CLI's output on one line: rich wraps long lines at 80 columns off a terminal."""
    return " ".join(result.output.split())


def manifest_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "manifest.json").read_text())


# --------------------------------------------------------------------------- the happy path


def test_full_run_records_the_model_then_a_rerun_creates_nothing(project):
    import openai

    with serve(FAST) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 0, result.output
        [run] = project.runs()
        m = manifest_of(run)
        job = server.state.jobs[m["openai"]["job_id"]].obj
        # The manifest downstream reads: backend, the model id, and where to reach it.
        assert m["backend"] == "openai" and m["stage"] == "train" and m["id"] == run.name
        assert m["openai"]["fine_tuned_model"] == job["fine_tuned_model"] and job["fine_tuned_model"].startswith("ft:")
        assert m["openai"]["base_url"] == server.url and m["openai"]["status"] == "succeeded"
        assert m["openai"]["files"] == {"train": job["training_file"], "validation": job["validation_file"]}
        assert m["openai"]["trained_tokens"] == job["trained_tokens"] > 0
        assert m["openai"]["hyperparameters"]["n_epochs"] == job["hyperparameters"]["n_epochs"] >= 1
        assert len(m["openai"]["checkpoints"]) == len(server.state.jobs[job["id"]].checkpoints) >= 1
        assert m["openai"]["events"] == len(server.state.jobs[job["id"]].events)
        assert {"stage", "backend", "id", "created_at", "code_version", "config_hash", "pipeline", "split", "dataset",
                "base_model", "config", "losses", "timings", "mlflow"} <= set(m)
        assert m["split"]["id"] == project.split.name and m["losses"]["final_eval_loss"] > 0
        # What the job was created with: supervised, the config's settings, metadata naming the run.
        assert job["method"]["type"] == "supervised" and job["user_provided_suffix"] == "refit" and job["seed"] == 42
        assert job["metadata"]["refit_run_id"] == run.name and job["metadata"]["refit_split_id"] == project.split.name
        assert job["metadata"]["refit_dataset_sha256"] == m["dataset"]["examples_sha256"]
        # The run folder: results, events, curves; the work folder is gone; LATEST points here.
        [result_file] = m["openai"]["result_files"]
        assert (run / result_file["path"]).read_text().startswith("step,train_loss")
        assert len(read_jsonl(run / "events.jsonl")) == m["openai"]["events"]
        assert (run / "curves.png").stat().st_size > 1000
        assert not list((project.root / "artifacts" / "runs").glob(".work-*"))
        assert (project.root / "artifacts" / "runs" / "LATEST").read_text().strip() == run.name
        assert "billed tokens" in flat(result) and job["fine_tuned_model"] in flat(result)
        assert "Next: make eval" in flat(result)
        # MLflow: the run finished, with per-step losses from the metric events.
        db = sqlite3.connect(project.tracking / "mlflow.db")
        status = db.execute("select status from runs where run_uuid = ?", (m["mlflow"]["run_id"],)).fetchone()[0]
        losses = db.execute("select count(*) from metrics where run_uuid = ? and key = 'train_loss'",
                            (m["mlflow"]["run_id"],)).fetchone()[0]
        params = dict(db.execute("select key, value from params where run_uuid = ?", (m["mlflow"]["run_id"],)))
        assert status == "FINISHED" and losses >= 3 and params["job_id"] == job["id"] and params["backend"] == "openai"
        # The model answers through /v1/chat/completions, as the eval stage will call it.
        example = read_jsonl(project.split / "validation.openai.jsonl")[0]["messages"]
        client = openai.OpenAI(base_url=m["openai"]["base_url"], api_key=SECRET, max_retries=0)
        reply = client.chat.completions.create(model=m["openai"]["fine_tuned_model"], messages=example[:-1])
        assert reply.choices[0].message.content == example[-1]["content"] and reply.usage.total_tokens > 0

        requests_before = len(server.state.requests)
        again = project.train("--yes")
        assert again.exit_code == 0 and "Nothing to do" in flat(again) and job["fine_tuned_model"] in flat(again)
        assert server.jobs_created == 1 and len(server.state.requests) == requests_before  # not even a GET
        # --force rebuilds the run folder from the recorded job: still one job, one upload each.
        forced = project.train("--force")
        assert forced.exit_code == 0, forced.output
        assert server.jobs_created == 1 and len(server.state.requests_to(FILES)) == 2
        assert manifest_of(run)["openai"]["job_id"] == job["id"]


def test_no_yes_no_spending_and_a_bad_file_is_refused_before_any_upload(project):
    from pipelines.config import load_config
    from pipelines.train import TrainError
    from pipelines.train_openai import train

    with serve(FAST) as server:
        project.use(server)
        refused = project.train()  # CliRunner's stdin is not a terminal
        assert refused.exit_code == 1 and "--yes" in flat(refused) and "billed tokens" in flat(refused)
        with pytest.raises(TrainError, match="not confirmed"):
            # As the CLI's --backend openai loads it (train.method auto resolves to sft there).
            train(load_config(project.cfg, ["train.backend=openai"]),
                  confirm=lambda estimate: estimate["billed_tokens"] < 0, track=False)
        assert server.state.requests == []  # not one request before a yes

        path = project.split / "train.openai.jsonl"
        original = path.read_bytes()
        path.write_bytes(original + b'{"messages": [{"role": "user", "content": "no answer"}]}\n')
        bad = project.train("--yes")
        assert bad.exit_code == 1 and "example_missing_assistant_message" in flat(bad)
        path.write_bytes(b"\n".join(original.splitlines()[1:]) + b"\n")  # valid, but not what split wrote
        changed = project.train("--yes")
        assert changed.exit_code == 1 and "changed since split" in flat(changed)
        assert server.state.requests == [] and server.jobs_created == 0
        assert not project.runs()


# --------------------------------------------------------------------------- faults


def test_transient_faults_are_retried_and_retry_after_is_honoured(project):
    faults = FAST | {"faults": [
        {"route": FILES, "nth": 1, "status": 429, "retry_after": 1},              # rate limited: wait 1 s
        {"route": JOBS, "nth": 1, "status": 500},                                  # a 5xx on the create
        {"route": JOB, "nth": 1, "drop": "before"},                                # connection closed, no answer
        {"route": JOB, "nth": 2, "status": 429, "retry_after_ms": 400},            # retry-after-ms
        {"route": "GET /v1/fine_tuning/jobs/{id}/events", "nth": 1, "delay_s": 1.0},  # slower than the timeout
        {"route": "GET /v1/fine_tuning/jobs/{id}/checkpoints", "nth": 1, "status": 503},
        {"route": "GET /v1/files/{id}/content", "nth": 1, "drop": "after"},
    ]}
    project.config(request_timeout_s=0.5)
    with serve(faults) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 0, result.output
        fired = [r for r in server.state.requests if r["fault"]]
        assert len(fired) == len(faults["faults"])  # every fault was met ...
        assert server.jobs_created == 1 and manifest_of(project.runs()[0])["openai"]["fine_tuned_model"]  # ... and survived
        uploads = server.state.requests_to(FILES)
        assert uploads[0]["status"] == 429 and uploads[1]["t"] - uploads[0]["t"] >= 1.0  # Retry-After honoured
        polls = server.state.requests_to(JOB)
        assert polls[1]["status"] == 429 and polls[2]["t"] - polls[1]["t"] >= 0.4      # retry-after-ms too
        assert result.output.count("retry ") == len(faults["faults"])
        assert "(Retry-After)" in flat(result) and "no answer within 0.5s" in flat(result)


def test_a_lost_create_answer_is_found_instead_of_creating_a_second_job(project):
    faults = FAST | {"faults": [{"route": JOBS, "nth": 1, "drop": "after"}]}  # created, but the answer is lost
    with serve(faults) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 0, result.output
        assert server.jobs_created == 1 and len(server.state.requests_to(JOBS)) == 1
        assert "the lost answer had gone through" in flat(result)


def test_a_failed_job_reports_its_error_and_is_never_retrained(project):
    failing = FAST | {"jobs": FAST["jobs"] | {"fail": {"at": 0.5, "code": "invalid_training_file", "param":
                                                       "training_file", "message": "Examples 3 and 7 are too long."}}}
    with serve(failing) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 1
        assert "failed: invalid_training_file: Examples 3 and 7 are too long. (param: training_file)" in flat(result)
        assert not project.runs()  # nothing downstream can take it for a trained model
        assert not (project.root / "artifacts" / "runs" / "LATEST").exists()
        state = project.state()
        assert state["status"] == "failed" and state["error"]["code"] == "invalid_training_file"
        db = sqlite3.connect(project.tracking / "mlflow.db")
        assert db.execute("select status from runs where run_uuid = ?", (state["mlflow_run_id"],)).fetchone()[0] == "FAILED"
        again = project.train("--yes")
        assert again.exit_code == 1 and "invalid_training_file" in flat(again) and "--restart" in flat(again)
        assert server.jobs_created == 1


def test_permanent_errors_end_the_run_with_the_api_message(project):
    # 401: a key the server does not know; never retried.
    with serve(FAST | {"api_keys": ["sk-the-right-key-0000"]}) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 1 and "HTTP 401 invalid_api_key" in flat(result) and "OPENAI_API_KEY" in flat(result)
        assert len(server.state.requests) == 1
    # 400 on the create: the model cannot be fine-tuned; uploads happened, no job did.
    project.config(model="gpt-not-tunable")
    with serve(FAST | {"base_models": ["gpt-4.1-mini-2025-04-14"]}) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 1 and "HTTP 400 model_not_available" in flat(result)
        assert "(param: model)" in flat(result) and server.jobs_created == 0
    # 429 insufficient_quota is not worth waiting for; a Retry-After beyond the limit ends the run.
    project.config()
    quota = {"route": FILES, "nth": "all", "status": 429, "code": "insufficient_quota",
             "message": "You exceeded your current quota."}
    with serve(FAST | {"faults": [quota]}) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 1 and "insufficient_quota" in flat(result)
        assert len(server.state.requests_to(FILES)) == 1
    with serve(FAST | {"faults": [{"route": FILES, "nth": "all", "status": 429, "retry_after": 3600}]}) as server:
        project.use(server)
        result = project.train("--yes")
        assert result.exit_code == 1 and "max_retry_after_s" in flat(result)
        assert len(server.state.requests_to(FILES)) == 1


def test_an_interrupted_run_then_a_404_for_its_job_and_restart_replaces_it(project):
    with serve(FAST) as server:
        project.use(server)
        server.state.pause()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("pipelines.cli.OpenAIFollow.job", interrupt)
            result = project.train("--yes")
        assert result.exit_code == 130 and "keeps running on the server" in flat(result)
        # The job disappears (deleted, or another account's): the recorded id now answers 404.
        state_path = project.work() / "openai_state.json"
        state = json.loads(state_path.read_text())
        state_path.write_text(json.dumps(state | {"job_id": "ftjob-gone"}))
        server.state.resume()
        gone = project.train("--yes")
        assert gone.exit_code == 1 and "HTTP 404" in flat(gone) and "--restart" in flat(gone)
        restarted = project.train("--yes", "--restart")
        assert restarted.exit_code == 0, restarted.output
        assert server.jobs_created == 2 and manifest_of(project.runs()[0])["openai"]["job_id"] != state["job_id"]


# --------------------------------------------------------------------------- killed, re-attached, cancelled


def test_a_run_killed_while_waiting_reattaches_to_the_same_job(project):
    with serve(FAST) as server:
        project.use(server)
        server.state.pause()  # the job waits in validating_files until we say so
        env = {**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": SECRET}
        child = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", "--config", str(project.cfg),
                                  "--backend", "openai", "--yes"], cwd=project.root, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if list((project.root / "artifacts" / "runs").glob(".work-run-*/openai_state.json")) and \
                        project.state().get("job_id"):
                    break  # the job id is on disk: from here on the child only waits for the job
                assert child.poll() is None, child.stdout.read().decode()
                time.sleep(0.02)
            else:
                pytest.fail("the child never recorded a job")
            os.kill(child.pid, signal.SIGKILL)  # no cleanup of any kind
        finally:
            child.kill()
            child.wait()
            output = child.stdout.read().decode()
        assert SECRET not in output
        job_id = project.state()["job_id"]
        assert server.jobs_created == 1 and not project.runs()

        server.state.resume()
        result = project.train("--yes")
        assert result.exit_code == 0, result.output
        assert f"re-attaching to job {job_id}" in flat(result) and "billed tokens" not in flat(result)
        assert server.jobs_created == 1 and len(server.state.requests_to(FILES)) == 2  # nothing uploaded twice
        assert manifest_of(project.runs()[0])["openai"]["job_id"] == job_id


def test_cancel_stops_the_recorded_job_and_restart_starts_a_new_one(project):
    with serve(FAST) as server:
        project.use(server)
        nothing = project.train("--cancel")
        assert nothing.exit_code == 1 and "no job is recorded" in flat(nothing)

        server.state.pause()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("pipelines.cli.OpenAIFollow.job", interrupt)
            detached = project.train("--yes")
        assert detached.exit_code == 130 and "--cancel" in flat(detached)
        job_id = project.state()["job_id"]

        cancelled = project.train("--cancel")
        assert cancelled.exit_code == 0 and f"Cancelled job {job_id}" in flat(cancelled)
        assert server.state.jobs[job_id].obj["status"] == "cancelled"
        twice = project.train("--cancel")
        assert twice.exit_code == 0 and "already cancelled" in flat(twice)

        server.state.resume()
        rerun = project.train("--yes")
        assert rerun.exit_code == 1 and "was cancelled" in flat(rerun) and server.jobs_created == 1
        restarted = project.train("--yes", "--restart")
        assert restarted.exit_code == 0, restarted.output
        assert server.jobs_created == 2 and manifest_of(project.runs()[0])["openai"]["job_id"] != job_id
        assert len(server.state.requests_to(FILES)) == 2  # the uploaded files were reused


# --------------------------------------------------------------------------- the key


def test_the_api_key_is_never_written_or_shown(project, caplog):
    caplog.set_level(logging.DEBUG)
    outputs = []
    faults = FAST | {"faults": [{"route": JOB, "nth": 1, "status": 500}],
                     "jobs": FAST["jobs"] | {"fail": {"nth": [1], "at": 0.5, "message": f"echo {SECRET}"}}}
    with serve(faults) as server:
        project.use(server)
        outputs.append(project.train("--yes").output)        # a failed job whose message carries the key
        outputs.append(project.train("--yes", "--restart").output)  # then a successful one
        assert server.jobs_created == 2 and project.runs()
    with serve(FAST | {"api_keys": ["sk-another-key-0000"]}) as server:  # a 401 that echoes the key, masked
        project.use(server)
        project.config(suffix="other")
        outputs.append(project.train("--yes").output)
    text = "\n".join(outputs + [" ".join(o.split()) for o in outputs]) + caplog.text
    assert "<redacted>" in text and "Incorrect API key provided: sk-<redacted>" in text
    assert SECRET not in text and "sk-test-" not in text
    written = [p for p in list(project.root.rglob("*")) + list(project.tracking.rglob("*")) if p.is_file()]
    assert len(written) > 10
    leaks = [p for p in written if SECRET.encode() in p.read_bytes()]
    assert not leaks


def test_one_process_per_run(project):
    import fcntl

    with serve(FAST) as server:
        project.use(server)
        interrupted = None
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("pipelines.cli.OpenAIFollow.job", interrupt)
            interrupted = project.train("--yes")
        assert interrupted.exit_code == 130
        with open(project.work() / ".lock", "a+") as held:  # another refit process follows this run
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            busy = project.train("--yes")
        assert busy.exit_code == 1 and "another refit process is already running" in flat(busy)
        assert server.jobs_created == 1
        assert project.train("--yes").exit_code == 0 and server.jobs_created == 1


def test_retry_after_is_read_in_all_three_forms():
    import email.utils

    from pipelines.train_openai import Redactor, retry_after_seconds

    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert 27 <= retry_after_seconds({"retry-after": email.utils.formatdate(time.time() + 30, usegmt=True)}) <= 30
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None
    redact = Redactor(SECRET)
    assert redact.scrub({"a": [f"x {SECRET} y", "sk-proj-********abcd"]}) == {"a": ["x <redacted> y", "sk-<redacted>"]}


# --------------------------------------------------------------------------- eval of the fine-tune


def test_eval_scores_the_openai_fine_tune_through_chat_completions(project):
    """The eval stage's openai provider against the same server: the candidate is the `ft:`
    model the run recorded, the baseline its base model with the strong prompt; a 429 and a
    dropped connection on chat completions are retried; the key is never written."""
    chat = "POST /v1/chat/completions"
    faults = FAST | {"faults": [{"route": chat, "nth": 2, "status": 429, "retry_after": 0.1},
                                {"route": chat, "nth": 5, "drop": "before"}]}
    with serve(faults) as server:
        project.use(server)
        assert project.train("--yes").exit_code == 0
        cfg = project.ws.config(
            train={"openai": {"poll_interval_s": 0.05}},
            tracking={"uri": f"sqlite:///{project.tracking / 'mlflow.db'}",
                      "artifact_location": str(project.tracking / "artifacts")},
            eval={"bootstrap_resamples": 200, "suites": {"guard_limit": 5},
                  "openai": {"concurrency": 4, "max_retries": 3, "timeout_s": 5}})
        result = project.ws.run("eval", "--config", str(cfg))
        answered = [r for r in server.state.requests if r["route"] == chat and r["status"] == 200]
        faulted = [r for r in server.state.requests if r["route"] == chat and r.get("fault")]
    # The fine-tune memorised its validation answers; the base model answers "I don't know"
    # (the server's fallback) to everything: a clear, gate-passing win.
    assert result.exit_code == 0, result.output
    folder = next((project.root / "artifacts" / "evals").glob("eval-*"))
    report = json.loads((folder / "report.json").read_text())
    assert report["contenders"]["candidate"]["backend"] == "openai"
    assert report["contenders"]["candidate"]["model"].startswith("ft:")
    validation = report["suites"]["validation"]
    assert validation["contenders"]["candidate"]["metrics"]["f1"]["mean"] == 1.0
    assert validation["comparisons"]["baseline"]["f1"]["low"] > 0
    assert validation["contenders"]["candidate"]["tokens"]["cost_per_1000_queries"] > 0
    manifest = json.loads((folder / "manifest.json").read_text())
    total = sum(s["items"] for s in manifest["suites"].values())
    assert manifest["cache"]["candidate"]["generated"] + manifest["cache"]["candidate"]["cached"] == total
    assert len(faulted) == 2  # both faults were met, and recovered: every prompt got its answer
    assert len(answered) == 2 * total  # candidate and baseline, each prompt once (no champion)
    for path in project.root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in result.output
