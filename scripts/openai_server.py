"""A local HTTP server that speaks the part of OpenAI's API refit uses, with fault injection.

No machine here reaches OpenAI, and a monkeypatched client proves nothing about HTTP. This
server implements, over real HTTP and with the real API's shapes, what refit's OpenAI backend
and its evaluation call:

    POST /v1/files                      multipart upload (purpose=fine-tune), checked like the real one
    GET  /v1/files, /v1/files/{id}      list (cursor pagination) and retrieve
    GET  /v1/files/{id}/content         result files (fine-tune inputs cannot be downloaded, as on the API)
    POST /v1/fine_tuning/jobs           create a supervised job (method, hyperparameters, suffix, seed, metadata)
    GET  /v1/fine_tuning/jobs           list, newest first, filtered by metadata[key]=value
    GET  /v1/fine_tuning/jobs/{id}      retrieve; the job moves validating_files -> queued -> running ->
                                        succeeded (or failed) on a clock
    GET  /v1/fine_tuning/jobs/{id}/events       info and metrics events, newest first, `after` cursor
    GET  /v1/fine_tuning/jobs/{id}/checkpoints  one per epoch (the last three), with metrics
    POST /v1/fine_tuning/jobs/{id}/cancel
    POST /v1/chat/completions           ft: models answer with the assistant turn of the training or
                                        validation example whose prompt matches exactly; anything else
                                        gets a fixed fallback; `usage` counts tokens
    GET  /_debug/state                  jobs created, files, requests per route (no key needed)

Every /v1 request needs `Authorization: Bearer <key>` (any key, or one of `api_keys`); errors
have the API's shape {"error": {"message", "type", "param", "code"}}.

Faults come from a YAML/JSON file or a dict: a 429 with Retry-After, a 5xx, a slow response, a
dropped connection (the socket closes without a response, before or after the request was
handled) on the Nth request to a route, and jobs that fail with an error {code, message, param}.

    python scripts/openai_server.py --port 0 --faults faults.yaml     # prints its base URL

    faults.yaml:
      jobs: {validating_s: 0.2, queued_s: 0.2, running_s: 2.0,
             fail: {nth: [1], at: 0.5, code: server_error, message: "Internal error", param: null}}
      chat: {latency_s: 0.05, fallback: "I don't know based on the provided documents."}
                                       # (or top-level chat_latency_s / chat_fallback)
      faults:
        - {route: "POST /v1/fine_tuning/jobs", nth: 1, status: 429, retry_after: 1}
        - {route: "GET /v1/fine_tuning/jobs/{id}", nth: [2, 3], status: 500}
        - {route: "GET /v1/fine_tuning/jobs/{id}/events", nth: 1, delay_s: 3}
        - {route: "POST /v1/files", nth: 2, drop: after}

Every key (all optional):
    api_keys: [..]          accepted keys (default: any non-empty key); others get the API's 401
    organization: name      the org in fine-tuned model names ft:<model>:<org>:<suffix>:<id>
    base_models: [..]       models that can be fine-tuned (default: any); others get a 400
    speed: 1.0              job clock seconds per real second
    seed: null              ids and job seeds (null: different on every start)
    jobs.validating_s / queued_s / running_s    how long each status lasts (1, 1, 6)
    jobs.metrics_events     at most this many metrics events per job (40), plus one per epoch
    jobs.fail               {nth: [..] or all, at: share of steps (0: while validating),
                             code, message, param}: jobs that fail with that error
    chat.latency_s          fixed latency of each chat completion (0; requests run concurrently)
    chat.fallback           the answer to prompts no training or validation example has
    faults[]                route ("METHOD /v1/path" as listed above, or "*"), nth (1-based
                            request numbers on that route, or all; default 1), and one or more of:
                            status (+ retry_after seconds, retry_after_ms, code, message),
                            delay_s (answer late), drop: before | after (close the socket without
                            an answer, before or after the request took effect)

In tests, `serve(config)` runs it on a free loopback port in a thread and yields a handle with
the base URL and the live state (`jobs_created`, `requests`, `pause()`, `resume()`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import email.parser
import email.policy
import io
import json
import math
import random
import re
import socket
import string
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipelines.openai_format import MIN_EXAMPLES, FormatReport, check_lines, default_epochs  # noqa: E402

ROUTES = (
    "POST /v1/files",
    "GET /v1/files",
    "GET /v1/files/{id}",
    "GET /v1/files/{id}/content",
    "POST /v1/fine_tuning/jobs",
    "GET /v1/fine_tuning/jobs",
    "GET /v1/fine_tuning/jobs/{id}",
    "GET /v1/fine_tuning/jobs/{id}/events",
    "GET /v1/fine_tuning/jobs/{id}/checkpoints",
    "POST /v1/fine_tuning/jobs/{id}/cancel",
    "POST /v1/chat/completions",
)
_PATTERNS = [(route, route.split(" ", 1)[0], re.compile("^" + route.split(" ", 1)[1].replace("{id}", "(?P<id>[^/]+)") + "$"))
             for route in ROUTES]
TERMINAL = ("succeeded", "failed", "cancelled")
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
IDK = "I don't know based on the provided documents."


class ConfigError(ValueError):
    pass


# --------------------------------------------------------------------------- configuration


@dataclass
class Fault:
    route: str                      # one of ROUTES, or "*"
    nth: list[int] | None = None    # 1-based requests to that route; None: every request
    status: int | None = None       # answer with this error status
    retry_after: float | None = None     # seconds, sent as Retry-After (whole seconds, rounded up)
    retry_after_ms: float | None = None  # sent as retry-after-ms
    code: str | None = None
    message: str | None = None
    delay_s: float = 0.0            # a slow response: wait, then answer (or fail)
    drop: str | None = None         # "before" / "after": close the socket without a response

    def matches(self, route: str, n: int) -> bool:
        return (self.route == "*" or self.route == route) and (self.nth is None or n in self.nth)


@dataclass
class JobFailure:
    nth: list[int] | None = None    # which jobs (1-based creation order) fail; None: every job
    at: float = 0.5                 # share of training steps done when it fails (0: while validating files)
    code: str = "server_error"
    message: str = "The fine-tuning job failed due to an internal error."
    param: str | None = None


@dataclass
class Settings:
    api_keys: list[str] | None = None      # accepted keys; None: any non-empty key
    organization: str = "refit-local"      # the org slug in fine-tuned model names
    base_models: list[str] | None = None   # models that can be fine-tuned; None: any
    speed: float = 1.0                     # job clock seconds per real second
    validating_s: float = 1.0
    queued_s: float = 1.0
    running_s: float = 6.0
    metrics_events: int = 40               # at most this many metrics events per job
    fail: JobFailure | None = None
    chat_latency_s: float = 0.0            # fixed latency per chat completion
    chat_fallback: str = IDK               # the answer to any prompt the model was not trained on
    faults: list[Fault] = field(default_factory=list)
    seed: int | None = None                # ids and job seeds; None: different on every start


def _take(section: dict[str, Any], where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return section


def _nth(value: Any, where: str) -> list[int] | None:
    if value is None or value == "all":
        return None
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, list) or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ConfigError(f"{where}.nth: a positive integer, a list of them, or 'all'")
    return list(values)


def load_settings(config: dict[str, Any] | str | Path | None) -> Settings:
    """Settings from a dict, or a YAML/JSON file."""
    if config is None:
        return Settings()
    if isinstance(config, (str, Path)):
        text = Path(config).read_text(encoding="utf-8")
        if str(config).endswith(".json"):
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text) or {}
    raw = _take(dict(config), "config", {"api_keys", "organization", "base_models", "speed", "jobs", "chat",
                                         "faults", "seed", "chat_latency_s", "chat_fallback"})
    s = Settings(api_keys=raw.get("api_keys"), organization=raw.get("organization", "refit-local"),
                 base_models=raw.get("base_models"), speed=float(raw.get("speed", 1.0)), seed=raw.get("seed"))
    jobs = _take(raw.get("jobs") or {}, "jobs", {"validating_s", "queued_s", "running_s", "metrics_events", "fail"})
    for key in ("validating_s", "queued_s", "running_s"):
        if key in jobs:
            setattr(s, key, float(jobs[key]))
    s.metrics_events = int(jobs.get("metrics_events", s.metrics_events))
    if jobs.get("fail"):
        fail = _take(jobs["fail"], "jobs.fail", {"nth", "at", "code", "message", "param"})
        s.fail = JobFailure(nth=_nth(fail.get("nth"), "jobs.fail"), at=float(fail.get("at", 0.5)),
                            code=fail.get("code", JobFailure.code), message=fail.get("message", JobFailure.message),
                            param=fail.get("param"))
    chat = _take(raw.get("chat") or {}, "chat", {"latency_s", "fallback"})
    s.chat_latency_s = float(chat.get("latency_s", raw.get("chat_latency_s", 0.0)))
    s.chat_fallback = chat.get("fallback", raw.get("chat_fallback", IDK))
    for i, item in enumerate(raw.get("faults") or []):
        where = f"faults[{i}]"
        item = _take(item, where, {"route", "nth", "status", "retry_after", "retry_after_ms", "code", "message",
                                   "delay_s", "drop"})
        route = item.get("route")
        if route != "*" and route not in ROUTES:
            raise ConfigError(f"{where}.route: {route!r} is not one of {list(ROUTES)} or '*'")
        if item.get("drop") not in (None, "before", "after"):
            raise ConfigError(f"{where}.drop: 'before' or 'after'")
        if not any(item.get(k) for k in ("status", "delay_s", "drop")):
            raise ConfigError(f"{where}: needs status, delay_s or drop")
        s.faults.append(Fault(route=route, nth=_nth(item.get("nth", 1), where), status=item.get("status"),
                              retry_after=item.get("retry_after"), retry_after_ms=item.get("retry_after_ms"),
                              code=item.get("code"), message=item.get("message"),
                              delay_s=float(item.get("delay_s", 0.0)), drop=item.get("drop")))
    return s


# --------------------------------------------------------------------------- the API's state


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def approx_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's rule of thumb; deterministic."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def messages_tokens(messages: list[dict[str, Any]]) -> int:
    return 3 + sum(4 + approx_tokens(str(m.get("content") or "")) for m in messages)


def prompt_key(messages: list[dict[str, Any]]) -> str:
    return json.dumps([[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False)


@dataclass
class StoredFile:
    obj: dict[str, Any]
    content: bytes
    report: FormatReport | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Job:
    obj: dict[str, Any]
    started: float                 # clock time of creation
    number: int                    # creation order, 1-based
    train_examples: int
    train_tokens: int
    rng_seed: int
    events: list[dict[str, Any]] = field(default_factory=list)      # oldest first
    checkpoints: list[dict[str, Any]] = field(default_factory=list)  # oldest first
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    metric_every: int = 1
    failure: JobFailure | None = None


class FakeOpenAI:
    """All state, behind one lock; jobs advance lazily on the clock whenever they are read."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.RLock()
        self.rng = random.Random(settings.seed)
        self.files: dict[str, StoredFile] = {}
        self.jobs: dict[str, Job] = {}
        self.jobs_created = 0
        self.route_counts: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []   # route, method, path, status, t (monotonic), fault
        self._t0 = time.monotonic()
        self._paused_at: float | None = None
        self._paused_total = 0.0
        self._answers: dict[str, dict[str, str]] = {}  # ft: model -> prompt -> answer

    # ---- the clock
    def now(self) -> float:
        """Job-clock seconds since start: real time minus pauses, times `speed`."""
        with self.lock:
            real = (self._paused_at if self._paused_at is not None else time.monotonic())
            return (real - self._t0 - self._paused_total) * self.settings.speed

    def pause(self) -> None:
        """Freeze every job where it is (tests use it to catch a job mid-run)."""
        with self.lock:
            if self._paused_at is None:
                self._paused_at = time.monotonic()

    def resume(self) -> None:
        with self.lock:
            if self._paused_at is not None:
                self._paused_total += time.monotonic() - self._paused_at
                self._paused_at = None

    # ---- helpers
    def new_id(self, prefix: str, n: int = 24) -> str:
        alphabet = string.ascii_letters + string.digits
        return prefix + "".join(self.rng.choice(alphabet) for _ in range(n))

    def requests_to(self, route: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["route"] == route]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            for job in self.jobs.values():
                self.advance(job)
            return {
                "jobs_created": self.jobs_created,
                "files_uploaded": sum(1 for f in self.files.values() if f.obj["purpose"] != "fine-tune-results"),
                "jobs": [{k: j.obj[k] for k in ("id", "status", "model", "fine_tuned_model", "metadata")}
                         for j in self.jobs.values()],
                "requests": dict(self.route_counts),
                "paused": self._paused_at is not None,
            }

    # ---- files
    def upload(self, fields: dict[str, Any]) -> dict[str, Any]:
        purpose = fields.get("purpose")
        upload = fields.get("file")
        if not isinstance(purpose, str) or not purpose:
            raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
        if purpose not in FILE_PURPOSES:
            raise ApiError(400, f"'{purpose}' is not one of {list(FILE_PURPOSES)} - 'purpose'", param="purpose")
        if not isinstance(upload, tuple):
            raise ApiError(400, "Missing required parameter: 'file'.", param="file")
        filename, content = upload
        report, examples = None, []
        if purpose == "fine-tune":
            if not filename.endswith(".jsonl"):
                raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
            lines = content.splitlines()
            report = check_lines(lines)
            if report.errors.get("invalid_json"):
                line = report.first_error["invalid_json"]
                raise ApiError(400, f"Invalid file format. Line {line} is not valid JSON.", param="file",
                               code="invalid_file_format")
            examples = [json.loads(line) for line in lines if line.strip()]
        with self.lock:
            file_id = self.new_id("file-", 22)
            obj = {"object": "file", "id": file_id, "purpose": purpose, "filename": filename, "bytes": len(content),
                   "created_at": int(time.time()), "expires_at": None, "status": "processed", "status_details": None}
            self.files[file_id] = StoredFile(obj, content, report, examples)
            return obj

    def get_file(self, file_id: str, param: str = "file_id") -> StoredFile:
        stored = self.files.get(file_id)
        if stored is None:
            raise ApiError(404, f"No such File object: {file_id}", param=param)
        return stored

    def list_files(self, query: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            items = [f.obj for f in self.files.values() if query.get("purpose") in (None, f.obj["purpose"])]
        if query.get("order", "desc") == "desc":
            items = items[::-1]
        return page(items, query, default_limit=10_000)

    # ---- jobs
    def create_job(self, body: dict[str, Any], organization_id: str) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "Missing required parameter: 'model'.", param="model")
        if self.settings.base_models is not None and model not in self.settings.base_models:
            raise ApiError(400, f"Model {model} is not available for fine-tuning or does not exist.", param="model",
                           code="model_not_available")
        files = {}
        for param in ("training_file", "validation_file"):
            file_id = body.get(param)
            if file_id is None and param == "validation_file":
                continue
            if not isinstance(file_id, str):
                raise ApiError(400, f"Missing required parameter: '{param}'.", param=param)
            stored = self.files.get(file_id)
            if stored is None:
                raise ApiError(400, f"invalid {param}: {file_id}", param=param, code="invalid_file_id")
            if stored.obj["purpose"] != "fine-tune":
                raise ApiError(400, f"File {file_id} has purpose '{stored.obj['purpose']}'; fine-tuning needs "
                                    "purpose 'fine-tune'", param=param)
            files[param] = stored
        train = files["training_file"]
        if train.report is not None and train.report.examples < MIN_EXAMPLES:
            raise ApiError(400, f"Training file has {train.report.examples} example(s), but must have at least "
                                f"{MIN_EXAMPLES} examples", param="training_file", code="invalid_training_file")
        method = body.get("method") or {"type": "supervised"}
        if not isinstance(method, dict) or method.get("type") != "supervised":
            raise ApiError(400, "This server fine-tunes with method 'supervised' only.", param="method.type")
        hyper = dict(((method.get("supervised") or {}).get("hyperparameters") or body.get("hyperparameters") or {}))
        limits = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": ((int, float), 0, 10)}
        for name, value in hyper.items():
            if name not in limits:
                raise ApiError(400, f"Unknown hyperparameter: '{name}'", param=f"method.supervised.hyperparameters.{name}")
            kind, low, high = limits[name]
            number = isinstance(value, kind) and not isinstance(value, bool)
            in_range = number and (low < value <= high if name == "learning_rate_multiplier" else low <= value <= high)
            if value != "auto" and not in_range:
                raise ApiError(400, f"Invalid value for '{name}': {value!r}", param=f"method.supervised.hyperparameters.{name}")
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or len(suffix) > 64):
            raise ApiError(400, "suffix must be a string of at most 64 characters", param="suffix")
        metadata = body.get("metadata")
        if metadata is not None:
            if (not isinstance(metadata, dict) or len(metadata) > 16
                    or not all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                               for k, v in metadata.items())):
                raise ApiError(400, "metadata: at most 16 string pairs (keys <= 64, values <= 512 characters)",
                               param="metadata")
        seed = body.get("seed")
        with self.lock:
            if seed is None:
                seed = self.rng.randrange(2**31)
            self.jobs_created += 1
            job_id = self.new_id("ftjob-")
            hyper_obj = {k: hyper.get(k, "auto") for k in limits}
            obj = {
                "object": "fine_tuning.job", "id": job_id, "model": model, "created_at": int(time.time()),
                "finished_at": None, "fine_tuned_model": None, "organization_id": organization_id,
                "result_files": [], "status": "validating_files", "validation_file": body.get("validation_file"),
                "training_file": train.obj["id"], "hyperparameters": dict(hyper_obj), "trained_tokens": None,
                "error": None, "user_provided_suffix": suffix, "seed": seed, "estimated_finish": None,
                "integrations": [], "metadata": metadata,
                "method": {"type": "supervised", "supervised": {"hyperparameters": dict(hyper_obj)}},
            }
            examples = train.report.examples if train.report else 0
            tokens = sum(messages_tokens(e.get("messages") or []) for e in train.examples)
            job = Job(obj, self.now(), self.jobs_created, examples, tokens, rng_seed=seed)
            fail = self.settings.fail
            if fail and (fail.nth is None or job.number in fail.nth):
                job.failure = fail
            self.jobs[job_id] = job
            self.event(job, f"Created fine-tuning job: {job_id}")
            self.event(job, f"Validating training file: {train.obj['id']}"
                            + (f" and validation file: {body['validation_file']}" if body.get("validation_file") else ""))
            return dict(obj)

    def get_job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"Could not find fine-tuning job {job_id}.", param="fine_tuning_job_id",
                           code="fine_tuning_job_not_found")
        self.advance(job)
        return job

    def event(self, job: Job, message: str, level: str = "info", data: dict[str, Any] | None = None,
              kind: str = "message") -> None:
        job.events.append({"object": "fine_tuning.job.event", "id": self.new_id("ftevent-"),
                           "created_at": int(time.time()), "level": level, "message": message,
                           "data": data or {}, "type": kind})

    def fail(self, job: Job, code: str, message: str, param: str | None) -> None:
        job.obj.update(status="failed", error={"code": code, "message": message, "param": param},
                       finished_at=int(time.time()), estimated_finish=None)
        self.event(job, message, level="error")
        self.event(job, "The job failed")

    def advance(self, job: Job) -> None:
        """Move the job along its schedule up to now, emitting what happened on the way."""
        s = self.settings
        now = self.now()
        obj = job.obj
        if obj["status"] == "validating_files" and now >= job.started + s.validating_s:
            for param, file_id in (("training_file", obj["training_file"]), ("validation_file", obj["validation_file"])):
                report = self.files[file_id].report if file_id else None
                if report is not None and report.errors:
                    which = "training" if param == "training_file" else "validation"
                    return self.fail(job, f"invalid_{which}_file",
                                     f"The job failed due to an invalid {which} file. " + "; ".join(report.problems()),
                                     param)
            if job.failure and job.failure.at <= 0:
                return self.fail(job, job.failure.code, job.failure.message, job.failure.param)
            hyper = obj["hyperparameters"]
            n = max(job.train_examples, 1)
            if hyper["n_epochs"] == "auto":
                hyper["n_epochs"] = default_epochs(n)
            if hyper["batch_size"] == "auto":
                hyper["batch_size"] = max(1, min(256, round(n * 0.002)))
            if hyper["learning_rate_multiplier"] == "auto":
                hyper["learning_rate_multiplier"] = 1.8 if hyper["batch_size"] <= 4 else 2.0
            obj["method"]["supervised"]["hyperparameters"] = dict(hyper)
            job.steps_per_epoch = math.ceil(n / hyper["batch_size"])
            job.total_steps = job.steps_per_epoch * hyper["n_epochs"]
            job.metric_every = max(1, job.total_steps // max(1, s.metrics_events))
            obj["status"] = "queued"
            self.event(job, "Files validated, moving job to queued state")
        run_start = job.started + s.validating_s + s.queued_s
        if obj["status"] == "queued" and now >= run_start:
            obj["status"] = "running"
            obj["estimated_finish"] = int(time.time() + s.running_s / max(s.speed, 1e-9))
            self.event(job, "Fine-tuning job started")
        if obj["status"] != "running":
            return
        done = min(1.0, (now - run_start) / s.running_s) if s.running_s > 0 else 1.0
        target = math.floor(done * job.total_steps)
        fail_step = max(1, math.ceil(job.failure.at * job.total_steps)) if job.failure else None
        while job.step < target:
            job.step += 1
            step = job.step
            if fail_step is not None and step >= fail_step:
                return self.fail(job, job.failure.code, job.failure.message, job.failure.param)
            if step % job.metric_every == 0 or step % job.steps_per_epoch == 0:
                m = self.metrics(job, step)
                data = {"step": step, "train_loss": m["train_loss"], "train_mean_token_accuracy": m["train_mean_token_accuracy"],
                        "total_steps": job.total_steps}
                text = f"Step {step}/{job.total_steps}: training loss={m['train_loss']:.4f}"
                if obj["validation_file"]:
                    data |= {"valid_loss": m["valid_loss"], "valid_mean_token_accuracy": m["valid_mean_token_accuracy"]}
                    text += f", validation loss={m['valid_loss']:.4f}"
                if step % job.steps_per_epoch == 0 and obj["validation_file"]:
                    data |= {"full_valid_loss": m["full_valid_loss"],
                             "full_valid_mean_token_accuracy": m["full_valid_mean_token_accuracy"]}
                    text += f", full validation loss={m['full_valid_loss']:.4f}"
                self.event(job, text, data=data, kind="metrics")
            if step % job.steps_per_epoch == 0:
                self.checkpoint(job, step)
        if job.step >= job.total_steps:
            self.succeed(job)

    def metrics(self, job: Job, step: int) -> dict[str, float]:
        """A deterministic loss curve: exponential decay to a floor, with seeded noise."""
        rng = random.Random(job.rng_seed * 1_000_003 + step)
        x = step / max(job.total_steps, 1)
        train = 0.25 + 1.55 * math.exp(-4.0 * x) + rng.uniform(-0.05, 0.05)
        valid = 0.32 + 1.45 * math.exp(-3.5 * x) + rng.uniform(-0.04, 0.04)
        full = 0.32 + 1.45 * math.exp(-3.5 * x)
        acc = lambda loss: round(max(0.0, min(1.0, 1 - loss / 2.5)), 4)  # noqa: E731
        return {"train_loss": round(train, 4), "valid_loss": round(valid, 4), "full_valid_loss": round(full, 4),
                "train_mean_token_accuracy": acc(train), "valid_mean_token_accuracy": acc(valid),
                "full_valid_mean_token_accuracy": acc(full)}

    def model_name(self, job: Job) -> str:
        suffix = job.obj["user_provided_suffix"] or ""
        return f"ft:{job.obj['model']}:{self.settings.organization}:{suffix}:{job.obj['id'][-8:]}"

    def checkpoint(self, job: Job, step: int) -> None:
        m = self.metrics(job, step)
        name = f"{self.model_name(job)}:ckpt-step-{step}"
        job.checkpoints.append({
            "object": "fine_tuning.job.checkpoint", "id": self.new_id("ftckpt_"), "created_at": int(time.time()),
            "fine_tuned_model_checkpoint": name, "fine_tuning_job_id": job.obj["id"], "step_number": step,
            "metrics": {"step": float(step), "train_loss": m["train_loss"],
                        "train_mean_token_accuracy": m["train_mean_token_accuracy"],
                        "valid_loss": m["valid_loss"], "valid_mean_token_accuracy": m["valid_mean_token_accuracy"],
                        "full_valid_loss": m["full_valid_loss"],
                        "full_valid_mean_token_accuracy": m["full_valid_mean_token_accuracy"]},
        })
        del job.checkpoints[:-3]  # the API keeps the last three
        self.event(job, f"Checkpoint created at step {step} with Snapshot ID: {name}")

    def succeed(self, job: Job) -> None:
        obj = job.obj
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
        for step in range(1, job.total_steps + 1):
            m = self.metrics(job, step)
            has_valid = bool(obj["validation_file"])
            writer.writerow([step, m["train_loss"], m["train_mean_token_accuracy"],
                             m["valid_loss"] if has_valid else "", m["valid_mean_token_accuracy"] if has_valid else ""])
        content = buffer.getvalue().encode()
        result_id = self.new_id("file-", 22)
        self.files[result_id] = StoredFile({
            "object": "file", "id": result_id, "purpose": "fine-tune-results", "filename": "step_metrics.csv",
            "bytes": len(content), "created_at": int(time.time()), "expires_at": None, "status": "processed",
            "status_details": None}, content)
        model = self.model_name(job)
        obj.update(status="succeeded", fine_tuned_model=model, finished_at=int(time.time()), estimated_finish=None,
                   result_files=[result_id], trained_tokens=job.train_tokens * obj["hyperparameters"]["n_epochs"])
        self.event(job, f"New fine-tuned model created: {model}")
        self.event(job, "The job has successfully completed")

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.get_job(job_id)
        if job.obj["status"] in TERMINAL:
            raise ApiError(400, f"Job {job_id} has already {job.obj['status']}; it cannot be cancelled.",
                           param="fine_tuning_job_id")
        job.obj.update(status="cancelled", finished_at=int(time.time()), estimated_finish=None)
        self.event(job, "The job has been cancelled")
        return dict(job.obj)

    def list_jobs(self, query: dict[str, str]) -> dict[str, Any]:
        wanted = {k[len("metadata["):-1]: v for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")}
        items = []
        for job in reversed(list(self.jobs.values())):
            self.advance(job)
            metadata = job.obj["metadata"] or {}
            if all(metadata.get(k) == v for k, v in wanted.items()):
                items.append(dict(job.obj))
        return page(items, query, default_limit=20)

    # ---- chat
    def answers(self, model: str) -> dict[str, str] | None:
        """prompt -> answer for an ft: model (or one of its checkpoints); None if unknown."""
        if model in self._answers:
            return self._answers[model]
        for job in self.jobs.values():
            self.advance(job)
            names = {job.obj["fine_tuned_model"]} | {c["fine_tuned_model_checkpoint"] for c in job.checkpoints}
            if model in names:
                index: dict[str, str] = {}
                for file_id in (job.obj["training_file"], job.obj["validation_file"]):
                    for example in self.files[file_id].examples if file_id else []:
                        messages = example.get("messages") or []
                        if messages and messages[-1].get("role") == "assistant":
                            index.setdefault(prompt_key(messages[:-1]), messages[-1].get("content") or "")
                self._answers[model] = index
                return index
        return None

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "Missing required parameter: 'model'.", param="model")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "Missing required parameter: 'messages'.", param="messages")
        if body.get("stream"):
            raise ApiError(400, "This server does not stream; call without stream=true.", param="stream")
        if body.get("n") not in (None, 1):
            raise ApiError(400, "This server returns one choice (n=1).", param="n")
        with self.lock:
            index = self.answers(model) if model.startswith("ft:") else {}
            completion_id = self.new_id("chatcmpl-", 29)
        if index is None:
            raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           code="model_not_found")
        content = index.get(prompt_key(messages), self.settings.chat_fallback)
        finish = "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and approx_tokens(content) > limit:
            content, finish = content[: limit * 4], "length"
        prompt_tokens, completion_tokens = messages_tokens(messages), approx_tokens(content)
        return {
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None,
                                                 "annotations": []},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
            "service_tier": "default", "system_fingerprint": None,
        }


def page(items: list[dict[str, Any]], query: dict[str, str], default_limit: int) -> dict[str, Any]:
    """Cursor pagination as the API does it: `after` an id, `limit` items, `has_more`."""
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        raise ApiError(400, f"Invalid 'limit': {query.get('limit')!r}", param="limit") from None
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    data = items[:max(limit, 0)]
    return {"object": "list", "data": data, "has_more": len(items) > len(data),
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


# --------------------------------------------------------------------------- HTTP


def parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise ApiError(400, "Expected a multipart/form-data body.")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        fields[name] = (filename, payload) if filename is not None else payload.decode("utf-8", "replace")
    return fields


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "refit-openai-server/1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the second waits for
    # the client's delayed ACK (~40 ms per response on Linux loopback).
    disable_nagle_algorithm = True
    api: FakeOpenAI  # set on the subclass made by make_server
    verbose = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    # ---- plumbing
    def send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
             content_type: str = "application/json") -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-request-id", "req_" + "".join(random.choices(string.hexdigits.lower(), k=24)))
            self.send_header("openai-version", "2020-10-01")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): nothing to do
            self.close_connection = True

    def drop(self) -> None:
        """Close the socket without a response: the client sees a dropped connection."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def dispatch(self, method: str) -> None:
        api = self.api
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if url.path == "/_debug/state" and method == "GET":
            return self.send(200, api.snapshot())
        route, params = None, {}
        for name, verb, pattern in _PATTERNS:
            match = pattern.match(url.path)
            if match and verb == method:
                route, params = name, match.groupdict()
                break
        record = {"route": route or f"{method} {url.path}", "method": method, "path": url.path,
                  "t": time.monotonic(), "status": None, "fault": None}
        with api.lock:
            api.requests.append(record)
            n = api.route_counts[record["route"]] = api.route_counts[record["route"]] + 1
        if route is None:
            record["status"] = 404
            return self.send(404, ApiError(404, f"Invalid URL ({method} {url.path})").body())
        auth = self.headers.get("Authorization", "")
        key = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else ""
        if not key:
            record["status"] = 401
            return self.send(401, ApiError(401, "You didn't provide an API key. You need to provide your API key in "
                                                "an Authorization header using Bearer auth (i.e. Authorization: "
                                                "Bearer YOUR_KEY).").body())
        if api.settings.api_keys is not None and key not in api.settings.api_keys:
            record["status"] = 401
            masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "*" * len(key)
            return self.send(401, ApiError(401, f"Incorrect API key provided: {masked}. You can find your API key "
                                                "at https://platform.openai.com/account/api-keys.",
                                           code="invalid_api_key").body())
        fault = next((f for f in api.settings.faults if f.matches(route, n)), None)
        if fault is not None:
            record["fault"] = {k: v for k, v in vars(fault).items() if v not in (None, 0.0)}
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.drop == "before":
                record["status"] = "dropped"
                return self.drop()
            if fault.status:
                record["status"] = fault.status
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(math.ceil(fault.retry_after))
                if fault.retry_after_ms is not None:
                    headers["retry-after-ms"] = str(int(fault.retry_after_ms))
                kind = {429: "requests", 500: "server_error", 502: "server_error", 503: "server_error"}.get(
                    fault.status, "invalid_request_error")
                default = {429: "Rate limit reached for requests. Please try again later.",
                           500: "The server had an error while processing your request. Sorry about that!",
                           503: "The engine is currently overloaded, please try again later."}.get(
                    fault.status, "Injected failure.")
                error = ApiError(fault.status, fault.message or default, type=kind, code=fault.code)
                return self.send(fault.status, error.body(), headers)
        org = self.headers.get("OpenAI-Organization") or "org-local"
        try:
            status, payload, raw, ctype = self.handle_route(route, params, query, body, org)
        except ApiError as exc:
            status, payload, raw, ctype = exc.status, exc.body(), None, "application/json"
        record["status"] = status
        if fault is not None and fault.drop == "after":
            record["status"] = "dropped"
            return self.drop()
        self.send(status, payload, {"openai-organization": org}, raw=raw, content_type=ctype)

    def handle_route(self, route: str, params: dict[str, str], query: dict[str, str], body: bytes,
                     org: str) -> tuple[int, Any, bytes | None, str]:
        api = self.api
        json_type = "application/json"

        def json_body() -> dict[str, Any]:
            try:
                data = json.loads(body or b"{}")
            except json.JSONDecodeError:
                raise ApiError(400, "We could not parse the JSON body of your request.") from None
            if not isinstance(data, dict):
                raise ApiError(400, "The request body must be a JSON object.")
            return data

        if route == "POST /v1/chat/completions":
            result = api.chat(json_body())
            if api.settings.chat_latency_s:
                time.sleep(api.settings.chat_latency_s)
            return 200, result, None, json_type
        with api.lock:
            if route == "POST /v1/files":
                ctype = self.headers.get("Content-Type", "")
                if not ctype.startswith("multipart/form-data"):
                    raise ApiError(400, "Uploads must be multipart/form-data.")
                return 200, api.upload(parse_multipart(ctype, body)), None, json_type
            if route == "GET /v1/files":
                return 200, api.list_files(query), None, json_type
            if route == "GET /v1/files/{id}":
                return 200, api.get_file(params["id"]).obj, None, json_type
            if route == "GET /v1/files/{id}/content":
                stored = api.get_file(params["id"])
                if stored.obj["purpose"] == "fine-tune":
                    raise ApiError(400, "Not allowed to download files of purpose: fine-tune")
                return 200, None, stored.content, "application/octet-stream"
            if route == "POST /v1/fine_tuning/jobs":
                return 200, api.create_job(json_body(), org), None, json_type
            if route == "GET /v1/fine_tuning/jobs":
                return 200, api.list_jobs(query), None, json_type
            job = api.get_job(params["id"])
            if route == "GET /v1/fine_tuning/jobs/{id}":
                return 200, dict(job.obj), None, json_type
            if route == "GET /v1/fine_tuning/jobs/{id}/events":
                return 200, page(job.events[::-1], query, default_limit=20), None, json_type
            if route == "GET /v1/fine_tuning/jobs/{id}/checkpoints":
                return 200, page(job.checkpoints[::-1], query, default_limit=10), None, json_type
            if route == "POST /v1/fine_tuning/jobs/{id}/cancel":
                return 200, api.cancel(params["id"]), None, json_type
        raise ApiError(404, f"Invalid URL ({route})")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


@dataclass
class Server:
    """A running server: its base URL (with /v1) and the live API state."""

    url: str
    state: FakeOpenAI
    httpd: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def jobs_created(self) -> int:
        return self.state.jobs_created

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def make_server(config: dict[str, Any] | str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
                verbose: bool = False) -> tuple[ThreadingHTTPServer, FakeOpenAI]:
    state = FakeOpenAI(load_settings(config))
    handler = type("BoundHandler", (Handler,), {"api": state, "verbose": verbose})
    return _Server((host, port), handler), state


@contextlib.contextmanager
def serve(config: dict[str, Any] | str | Path | None = None, host: str = "127.0.0.1", port: int = 0,
          verbose: bool = False) -> Iterator[Server]:
    """Run the server in a background thread for the duration of the block."""
    httpd, state = make_server(config, host, port, verbose)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server = Server(f"http://{host}:{httpd.server_address[1]}/v1", state, httpd, thread)
    try:
        yield server
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (the URL is printed)")
    parser.add_argument("--faults", "--config", dest="config", help="YAML or JSON: jobs, chat, faults, ...")
    parser.add_argument("--speed", type=float, help="job clock speed (overrides the config)")
    parser.add_argument("--url-file", help="also write the base URL to this file once listening")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    try:
        httpd, state = make_server(args.config, args.host, args.port, args.verbose)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.speed:
        state.settings.speed = args.speed
    url = f"http://{args.host}:{httpd.server_address[1]}/v1"
    if args.url_file:  # written before the URL is printed: either means "listening"
        tmp = Path(args.url_file + ".tmp")
        tmp.write_text(url + "\n")
        tmp.replace(args.url_file)
    print(url, flush=True)
    import signal

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
