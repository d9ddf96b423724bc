"""The local fine-tuning API server (scripts/openai_server.py) on its own, through the real
`openai` SDK and raw HTTP: the API's shapes, its file checks, the job clock, pagination,
chat completions, fault configuration, and the runnable script."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from openai_server import ConfigError, load_settings, serve  # noqa: E402

FAST = {"jobs": {"validating_s": 0.05, "queued_s": 0.05, "running_s": 0.2, "metrics_events": 5}}


def example(i: int, answer: bool = True) -> dict:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"Question {i}?"}]
    if answer:
        messages.append({"role": "assistant", "content": f"Answer {i}."})
    return {"messages": messages}


def jsonl(examples: list[dict]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in examples)


def client(server, key: str = "sk-test-key"):
    import openai

    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0)


def raw(url: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(c, job_id: str, status: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status == status:
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is {job.status}, not {status}")


def test_every_request_needs_a_key_and_errors_have_the_api_shape():
    with serve(FAST) as server:
        status, body = raw(server.url + "/fine_tuning/jobs")
        assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}
        assert "API key" in body["error"]["message"]
        status, body = raw(server.url + "/nowhere", {"Authorization": "Bearer sk-x"})
        assert status == 404 and body["error"]["message"] == "Invalid URL (GET /v1/nowhere)"
        status, body = raw(server.url.removesuffix("/v1") + "/_debug/state")
        assert status == 200 and body["jobs_created"] == 0 and body["requests"]["GET /v1/fine_tuning/jobs"] == 1
    with serve(FAST | {"api_keys": ["sk-right-key-123456"]}) as server:
        import openai

        with pytest.raises(openai.AuthenticationError) as info:
            client(server, "sk-wrong-key-987654").files.list()
        assert info.value.code == "invalid_api_key" and "sk-wrong-key-987654" not in str(info.value)
        assert client(server, "sk-right-key-123456").files.list().data == []


def test_files_are_checked_like_the_real_api():
    import openai

    with serve(FAST) as server:
        c = client(server)
        with pytest.raises(openai.BadRequestError, match="Must be .jsonl"):
            c.files.create(file=("train.txt", jsonl([example(i) for i in range(12)])), purpose="fine-tune")
        with pytest.raises(openai.BadRequestError, match="Line 2 is not valid JSON"):
            c.files.create(file=("train.jsonl", b'{"messages": []}\nnot json\n'), purpose="fine-tune")
        # Too few examples: the create is refused; no job exists.
        few = c.files.create(file=("few.jsonl", jsonl([example(i) for i in range(5)])), purpose="fine-tune")
        assert few.status == "processed" and few.purpose == "fine-tune" and few.bytes > 0
        with pytest.raises(openai.BadRequestError) as info:
            c.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=few.id)
        assert "at least 10 examples" in info.value.message and info.value.param == "training_file"
        assert server.jobs_created == 0
        # A format error: the job is created, then fails while validating files, with an error.
        bad = c.files.create(file=("bad.jsonl", jsonl([example(i) for i in range(11)] + [example(99, answer=False)])),
                             purpose="fine-tune")
        job = c.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=bad.id)
        failed = wait_for(c, job.id, "failed")
        assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
        assert "example_missing_assistant_message" in failed.error.message and failed.fine_tuned_model is None
        with pytest.raises(openai.BadRequestError, match="Not allowed to download files of purpose: fine-tune"):
            c.files.content(bad.id)
        with pytest.raises(openai.NotFoundError):
            c.fine_tuning.jobs.retrieve("ftjob-missing")
        listed = c.files.list(purpose="fine-tune")
        assert [f.id for f in listed.data] == [bad.id, few.id] and listed.has_more is False


def test_a_job_runs_on_the_clock_with_events_checkpoints_and_results():
    with serve(FAST) as server:
        c = client(server)
        train = c.files.create(file=("t.jsonl", jsonl([example(i) for i in range(30)])), purpose="fine-tune")
        valid = c.files.create(file=("v.jsonl", jsonl([example(i) for i in range(100, 110)])), purpose="fine-tune")
        server.state.pause()
        job = c.fine_tuning.jobs.create(
            model="gpt-4.1-mini", training_file=train.id, validation_file=valid.id, suffix="demo", seed=7,
            metadata={"refit_run_id": "run-1"},
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 3}}})
        assert job.status == "validating_files" and job.seed == 7 and job.metadata == {"refit_run_id": "run-1"}
        time.sleep(0.1)
        assert c.fine_tuning.jobs.retrieve(job.id).status == "validating_files"  # the clock is paused
        server.state.resume()
        done = wait_for(c, job.id, "succeeded")
        assert done.fine_tuned_model == f"ft:gpt-4.1-mini:refit-local:demo:{job.id[-8:]}"
        assert done.hyperparameters.n_epochs == 2 and done.hyperparameters.batch_size == 3
        assert done.trained_tokens > 0 and done.finished_at >= done.created_at and len(done.result_files) == 1
        # Events: newest first, paged with `after`; metrics carry step and losses in `data`.
        events = list(c.fine_tuning.jobs.list_events(job.id))  # the SDK follows the pages
        first = c.fine_tuning.jobs.list_events(job.id, limit=3)
        assert first.has_more and [e.id for e in first.data] == [e.id for e in events[:3]]
        second = c.fine_tuning.jobs.list_events(job.id, limit=3, after=first.data[-1].id)
        assert [e.id for e in second.data] == [e.id for e in events[3:6]]
        assert events[0].message == "The job has successfully completed"
        assert events[-1].message == f"Created fine-tuning job: {job.id}"
        metrics = [e.data for e in events if e.type == "metrics"]
        assert metrics and all({"step", "train_loss", "valid_loss", "total_steps"} <= set(m) for m in metrics)
        assert metrics[0]["step"] == metrics[0]["total_steps"] == 20  # 30 examples / 3 per batch x 2 epochs
        assert any("full_valid_loss" in m for m in metrics)
        checkpoints = c.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [cp.step_number for cp in checkpoints] == [20, 10]
        assert checkpoints[0].fine_tuned_model_checkpoint == done.fine_tuned_model + ":ckpt-step-20"
        assert checkpoints[0].metrics.full_valid_loss is not None
        result = c.files.content(done.result_files[0]).text.splitlines()
        assert result[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(result) == 21
        # The metadata filter on the list, and cancel on a finished job.
        other = c.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=train.id)
        assert [j.id for j in c.fine_tuning.jobs.list(metadata={"refit_run_id": "run-1"}).data] == [job.id]
        assert [j.id for j in c.fine_tuning.jobs.list().data] == [other.id, job.id]
        assert c.fine_tuning.jobs.cancel(other.id).status == "cancelled"
        import openai

        with pytest.raises(openai.BadRequestError, match="already succeeded"):
            c.fine_tuning.jobs.cancel(job.id)
        assert server.jobs_created == 2


def test_chat_completions_answer_trained_prompts_with_usage_and_latency():
    import openai

    with serve(FAST | {"chat": {"latency_s": 0.3, "fallback": "no idea"}}) as server:
        c = client(server)
        train = c.files.create(file=("t.jsonl", jsonl([example(i) for i in range(12)])), purpose="fine-tune")
        model = wait_for(c, c.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=train.id).id,
                         "succeeded").fine_tuned_model
        prompt = example(3)["messages"][:-1]
        reply = c.chat.completions.create(model=model, messages=prompt)
        assert reply.choices[0].message.content == "Answer 3." and reply.choices[0].finish_reason == "stop"
        assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        assert c.chat.completions.create(model=model, messages=[{"role": "user", "content": "?"}]).choices[0].message.content == "no idea"
        assert c.chat.completions.create(model="gpt-4.1-mini", messages=prompt).choices[0].message.content == "no idea"
        short = c.chat.completions.create(model=model, messages=prompt, max_tokens=1)
        assert short.choices[0].finish_reason == "length"
        with pytest.raises(openai.NotFoundError) as info:
            c.chat.completions.create(model="ft:gpt-4.1-mini:other:x:abc", messages=prompt)
        assert info.value.code == "model_not_found"
        # The latency is per request, served concurrently: 4 at once take about one latency.
        started = time.monotonic()
        threads = [threading.Thread(target=c.chat.completions.create, kwargs={"model": model, "messages": prompt})
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert 0.3 <= time.monotonic() - started < 1.0


def test_fault_configs_are_checked():
    with pytest.raises(ConfigError, match="route"):
        load_settings({"faults": [{"route": "GET /v1/nothing", "status": 500}]})
    with pytest.raises(ConfigError, match="drop"):
        load_settings({"faults": [{"route": "*", "drop": "sometimes"}]})
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings({"jobs": {"runing_s": 1}})
    settings = load_settings({"faults": [{"route": "POST /v1/files", "nth": [2, 3], "status": 429, "retry_after": 2}],
                              "jobs": {"fail": {"code": "x", "message": "y"}}})
    assert settings.faults[0].matches("POST /v1/files", 2) and not settings.faults[0].matches("POST /v1/files", 1)
    assert settings.fail.nth is None and settings.fail.code == "x"
    assert load_settings({"chat_latency_s": 0.1, "chat_fallback": "?"}).chat_latency_s == 0.1


def test_the_script_prints_its_url_serves_and_stops_on_sigterm(tmp_path):
    faults = tmp_path / "faults.yaml"
    faults.write_text("faults:\n  - {route: 'GET /v1/files', nth: 1, status: 503}\n")
    url_file = tmp_path / "url"
    server = subprocess.Popen([sys.executable, str(REPO / "scripts" / "openai_server.py"), "--port", "0",
                               "--faults", str(faults), "--url-file", str(url_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1") and url_file.read_text().strip() == url
        assert raw(url + "/files", {"Authorization": "Bearer sk-x"})[0] == 503
        assert raw(url + "/files", {"Authorization": "Bearer sk-x"}) == (200, {
            "object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None})
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
    finally:
        server.kill()
