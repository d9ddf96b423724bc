"""`refit retrain` through the real CLI on the tiny model: end to end from nothing, killed in
the middle and resumed without redoing finished stages, "nothing new" in seconds, the minimum of
new data, the one-at-a-time lock (held, and stale), the summary and webhook, and every exit
code: 0 promoted / nothing new / not enough new data, 3 gate failed, 75 locked, 1 error,
2 bad config."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from conftest import PASSING_GATE, Workspace, copy_project, rag_logs, read_jsonl, tiny_pipeline_config


def summary(ws) -> dict:
    return json.loads((ws.root / "artifacts" / "retrain" / "default" / "last.json").read_text())


def summaries(ws) -> list[dict]:
    return read_jsonl(ws.root / "artifacts" / "retrain" / "default" / "summaries.jsonl")


def last_line(result) -> str:
    return result.stdout.strip().splitlines()[-1]


def config(ws, model_dir, *, gate=PASSING_GATE, **sections):
    sections.setdefault("retrain", {"min_new_examples": 5})
    ws.cfg = tiny_pipeline_config(ws, model_dir, gate=gate, **sections)
    return ws.cfg


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def resumed(tiny_pipeline, tmp_path_factory, tiny_model_dir, tiny_tokenizer_dir):
    """The killed retrain, run again with the dead run's lock still on disk: it takes the lock
    over and finishes (eval, promote). The generation cache comes along from the evaluated
    project so the eval's generation is served from disk; the eval itself still runs."""
    root = tmp_path_factory.mktemp("resumed")
    cwd = os.getcwd()
    try:
        os.chdir(root)
        ws = copy_project(tiny_pipeline["killed"], Workspace(root, tiny_tokenizer_dir))
        shutil.copytree(tiny_pipeline["evaluated"] / "artifacts" / "cache", root / "artifacts" / "cache")
        before = summary(ws)
        lock = root / "artifacts" / "retrain" / "default.lock"
        stale = {"pid": dead_pid(), "host": socket.gethostname(), "started_at": "2026-11-21T02:00:00Z",
                 "command": "refit retrain"}
        lock.write_text(json.dumps(stale))
        result = ws.run("retrain", "--config", str(config(ws, tiny_model_dir)))
        return {"ws": ws, "result": result, "before": before, "after": summary(ws), "stale": stale}
    finally:
        os.chdir(cwd)


@pytest.fixture
def project(resumed, workspace, tiny_model_dir):
    """A copy of the resumed project: trained, evaluated, promoted (champion v1)."""
    copy_project(resumed["ws"].root, workspace)
    config(workspace, tiny_model_dir)
    return workspace


def test_killed_in_the_middle_then_resumed_without_redoing_finished_stages(tiny_pipeline, resumed, monkeypatch):
    # From nothing, the first retrain curated, split and trained, then was killed in eval.
    killed = tiny_pipeline["killed_result"]
    assert killed.exit_code == 1, killed.output
    assert "error (exit 1" in last_line(killed) and "interrupted: terminated by signal 15" in last_line(killed)
    before = resumed["before"]
    assert before["outcome"] == "error"
    assert {name: s["skipped"] for name, s in before["stages"].items()} == {
        "curate": False, "split": False, "train": False}
    assert not (tiny_pipeline["killed"] / "artifacts" / "evals").exists()

    # The re-run took over the dead run's lock and redid nothing that was finished.
    result = resumed["result"]
    assert result.exit_code == 0, result.output
    assert f"took over a stale lock left by pid {resumed['stale']['pid']}" in result.output
    assert "(no longer running)" in result.output
    after = resumed["after"]
    assert after["lock"]["took_over"]["pid"] == resumed["stale"]["pid"]
    assert {name: s["skipped"] for name, s in after["stages"].items()} == {
        "curate": True, "split": True, "train": True, "eval": False, "promote": False}
    assert after["dataset"] == before["dataset"] and after["run"] == before["stages"]["train"]["id"]
    assert after["outcome"] == "promoted" and after["exit_code"] == 0
    assert after["champion"] == {"before": None, "after": "1"} and after["version"] == "1"
    assert last_line(result).startswith("refit retrain default: promoted (exit 0")
    assert not (resumed["ws"].root / "artifacts" / "retrain" / "default.lock").exists()  # released
    monkeypatch.chdir(resumed["ws"].root)
    status = resumed["ws"].run("status", "--config", str(resumed["ws"].cfg))
    assert "champion   v1" in status.output and "retrain    last: promoted (exit 0)" in status.output


def test_a_second_retrain_with_no_new_logs_does_nothing_in_seconds(project):
    evals = sorted(p.name for p in (project.root / "artifacts" / "evals").iterdir())
    started = time.perf_counter()
    result = project.run("retrain", "--config", str(project.cfg))
    elapsed = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert last_line(result).startswith("refit retrain default: nothing_new (exit 0")
    assert "no new logs" in last_line(result)
    assert elapsed < 10, elapsed
    s = summary(project)
    assert all(stage["skipped"] for stage in s["stages"].values()) and len(s["stages"]) == 5
    assert sorted(p.name for p in (project.root / "artifacts" / "evals").iterdir()) == evals  # no new eval
    assert [x["outcome"] for x in summaries(project)] == ["error", "promoted", "nothing_new"]


def test_training_waits_for_enough_new_data(project, monkeypatch):
    # Three new logs: fewer than retrain.min_new_examples (5). Curated, not trained.
    project.write_logs("b.jsonl", rag_logs(3, offset=500))
    runs = sorted((project.root / "artifacts" / "runs").iterdir())
    result = project.run("retrain", "--config", str(project.cfg))
    assert result.exit_code == 0, result.output
    s = summary(project)
    assert s["outcome"] == "not_enough_new_data" and 1 <= s["data"]["new_examples"] < 5
    assert s["stages"]["curate"]["skipped"] is False and "train" not in s["stages"]
    assert sorted((project.root / "artifacts" / "runs").iterdir()) == runs
    assert "fewer than retrain.min_new_examples=5" in last_line(result)

    # Ten more: enough, so it goes on to split and train (stopped here at split: the training
    # itself is the stage tests' business).
    from pipelines import retrain

    def reached_split(config):
        raise RuntimeError("split reached")

    monkeypatch.setattr(retrain.Stages, "split", staticmethod(reached_split))
    project.write_logs("c.jsonl", rag_logs(10, offset=600))
    result = project.run("retrain", "--config", str(project.cfg))
    assert result.exit_code == 1
    s = summary(project)
    assert s["data"]["new_examples"] >= 5 and s["message"] == "RuntimeError: split reached"


def test_gate_failed_exits_3_and_keeps_the_champion(project, tiny_model_dir):
    # A stricter gate is a new eval config: the run is evaluated again and fails it.
    strict = config(project, tiny_model_dir, gate=None)
    result = project.run("retrain", "--config", str(strict))
    assert result.exit_code == 3, result.output
    s = summary(project)
    assert s["outcome"] == "gate_failed" and "beats_baseline" in s["gate"]["failed"]
    assert s["champion"] == {"before": "1", "after": "1"} and s["version"] == "2"
    assert "champion unchanged (v1)" in last_line(result)
    status = project.run("status", "--config", str(strict)).output
    assert "champion   v1" in status and "candidate  v2" in status and "gate failed" in status
    # Decided: the next night with nothing new is a no-op again.
    again = project.run("retrain", "--config", str(strict))
    assert again.exit_code == 0 and summary(project)["outcome"] == "nothing_new"


def test_one_retrain_at_a_time(project):
    lock = project.root / "artifacts" / "retrain" / "default.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom pipelines.locks import hold\n"
         "with hold(Path(sys.argv[1]), what='refit retrain (nightly)'):\n    print('held', flush=True)\n"
         "    time.sleep(60)\n", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = summary(project)
        started = time.perf_counter()
        result = project.run("retrain", "--config", str(project.cfg))
        assert result.exit_code == 75, result.output
        assert time.perf_counter() - started < 5
        line = last_line(result)
        assert line.startswith("refit retrain default: locked (exit 75")
        assert f"pid {holder.pid} on {socket.gethostname()}, started 20" in line and "(nightly)" in line
        assert summaries(project)[-1]["outcome"] == "locked"
        assert summary(project) == before  # last.json describes the last run that ran
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking: its lock is stale and the next run takes it over.
    result = project.run("retrain", "--config", str(project.cfg))
    assert result.exit_code == 0, result.output
    assert f"took over a stale lock left by pid {holder.pid}" in result.output


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_summary_goes_to_a_webhook_and_a_failing_webhook_is_not_fatal(project, tiny_model_dir, monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = config(project, tiny_model_dir, retrain={"min_new_examples": 5, "webhook": {
            "url": f"http://127.0.0.1:{server.server_port}/hook", "notify_on": ["nothing_new", "error"]}})
        result = project.run("retrain", "--config", str(cfg))
        assert result.exit_code == 0, result.output
    finally:
        server.shutdown()
    assert len(Hook.received) == 1
    body = Hook.received[0]
    assert body["outcome"] == "nothing_new" and body["text"] == last_line(result) and body["exit_code"] == 0
    assert summary(project)["webhook"] == {"host": f"127.0.0.1:{server.server_port}", "ok": True, "status": 204}

    # From the environment this time, at a port where nothing listens.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("REFIT_WEBHOOK_URL", f"http://127.0.0.1:{port}/hook?token=secret")
    cfg = config(project, tiny_model_dir, retrain={"min_new_examples": 5, "webhook": {"notify_on": ["nothing_new"]}})
    result = project.run("retrain", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    assert f"webhook to 127.0.0.1:{port} failed" in result.output and "secret" not in result.output
    assert summary(project)["webhook"]["ok"] is False


def test_errors_exit_1_and_bad_config_exits_2(workspace, tiny_model_dir):
    cfg = config(workspace, tiny_model_dir, curate={"inputs": ["no-such-logs"]})
    result = workspace.run("retrain", "--config", str(cfg))
    assert result.exit_code == 1
    assert "error (exit 1" in last_line(result) and "matches no log file" in last_line(result)
    assert summary(workspace)["outcome"] == "error"
    bad = workspace.root / "bad.yaml"
    bad.write_text("retrain: {min_new_exampels: 3}\n")
    result = workspace.run("retrain", "--config", str(bad))
    assert result.exit_code == 2 and "min_new_examples" in result.output


def test_schedule_recipes_run_make_retrain_and_keep_refit_exit_codes(tmp_path):
    import yaml
    from conftest import REPO

    scripts = REPO / "scripts"
    wrapper = (scripts / "retrain.sh").read_text()
    assert "retrain" in wrapper and "REFIT_EXIT_CODE_FILE" in wrapper
    cron = [line for line in (scripts / "retrain.cron").read_text().splitlines() if line and not line[0] == "#"]
    assert any("scripts/retrain.sh" in line and line.split()[:5] == ["30", "2", "*", "*", "*"] for line in cron)
    assert any(line.startswith("PATH=") for line in cron)
    job = yaml.safe_load((scripts / "k8s-cronjob.yaml").read_text())
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["scripts/retrain.sh"] and pod["restartPolicy"] == "Never"
    assert {e["name"] for e in container["env"]} >= {"CONFIG", "REFIT_CACHE_DIR", "REFIT_WEBHOOK_URL"}
    rules = job["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [2, 3, 75]
    workflow = yaml.safe_load((scripts / "github-retrain.yml").read_text())
    assert workflow[True]["schedule"][0]["cron"] == "30 2 * * *"  # YAML 1.1 reads `on` as true
    steps = workflow["jobs"]["retrain"]["steps"]
    assert steps[0]["with"]["clean"] is False and "scripts/retrain.sh" in steps[1]["run"]

    # The wrapper runs `make retrain` for real and exits with refit's code, not make's 2.
    shim = tmp_path / "make"
    shim.write_text(f"#!/usr/bin/env bash\nexec make -o .venv/.installed BIN={REPO / '.venv' / 'bin'} \"$@\"\n")
    shim.chmod(0o755)
    config = tmp_path / "cron.yaml"
    config.write_text(yaml.safe_dump({"name": "crontest", "curate": {"inputs": [str(tmp_path / "no-logs")]},
                                      "retrain": {"dir": str(tmp_path / "retrain")}}))
    env = {**os.environ, "MAKE": str(shim), "CONFIG": str(config)}
    done = subprocess.run([str(scripts / "retrain.sh")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "refit retrain crontest: error (exit 1" in done.stdout
    assert json.loads((tmp_path / "retrain" / "crontest" / "last.json").read_text())["exit_code"] == 1
