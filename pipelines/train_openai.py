"""train (OpenAI backend): a split -> a fine-tuning job on OpenAI's API, paid for once.

Read top to bottom, the recipe is:

1. Pick the split (the newest unless named) and derive the run id from what defines the job:
   the split's files, the model, the hyperparameters, suffix and seed, and the endpoint (base
   URL, organization, project). A finished run with that id means there is nothing to do.
   Settings that only change how refit talks to the API (polling, timeouts, retries, the
   key's variable, --yes) and refit's own version are left out on purpose: changing them, or
   upgrading refit while a job runs, must re-attach to the job, never pay for a second one.
2. Check before spending: the split's OpenAI files passed the format checks when split wrote
   them, still pass them now, and are byte for byte the files split recorded. Estimate the
   billed tokens and the cost. A new job needs a yes: --yes, `train.openai.assume_yes`, or an
   interactive confirmation.
3. Upload the train and validation files (purpose "fine-tune") and create the job: method
   "supervised" with its hyperparameters, suffix, seed, the validation file, and metadata
   naming the run, split and dataset. Every id goes into the run's work folder the moment it
   exists; the intent to create the job is written before the request, and a create whose
   answer was lost (a timeout, a dropped connection, a 5xx) is looked up by its metadata
   before it is retried. A re-run finds the recorded job and re-attaches to it.
4. Follow the job: its status, events (messages and metrics) and checkpoints, shown live and
   appended to the work folder as they arrive. Transient failures (429 with Retry-After
   honoured, 5xx, timeouts, dropped connections) are retried with backoff; permanent ones
   (400, 401, 403, 404, a failed or cancelled job) end the run with the API's message, and no
   run folder is written, so nothing downstream can mistake it for a trained model.
5. On success, write the run folder atomically: the manifest (the fine-tuned model id, trained
   tokens, resolved hyperparameters, checkpoints, result files), the events, the result files
   and the loss curves from the metric events; log them to MLflow like the LoRA backend.

The API key is read from the environment variable named by `train.openai.api_key_env`. It is
never written anywhere, and every message built from an API error is scrubbed of it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import hashlib
import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from pipelines.config import OpenAITrainConfig, PipelineConfig
from pipelines.openai_format import FormatError, default_epochs, require_valid
from pipelines.storage import atomic_dir, code_version, dumps, file_sha256, set_latest, write_bytes_atomic
from pipelines.train import TrainError, TrainResult, resolve_split

DEFAULT_BASE_URL = "https://api.openai.com/v1"
ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
FILES = {"train": "train.openai.jsonl", "validation": "validation.openai.jsonl"}
STATE = "openai_state.json"
EVENTS = "events.jsonl"


class Detached(KeyboardInterrupt):
    """Interrupted while waiting: the job keeps running on the server. Carries what to do next."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Progress:
    """What the CLI's live display implements; silent by default."""

    def estimate(self, estimate: dict[str, Any]) -> None: ...
    def note(self, text: str) -> None: ...
    def retry(self, what: str, attempt: int, max_retries: int, wait: float, reason: str) -> None: ...
    def job(self, job: dict[str, Any], new_events: list[dict[str, Any]], checkpoints: list[dict[str, Any]]) -> None: ...
    def stop(self) -> None: ...


Confirm = Callable[[dict[str, Any]], bool]


# --------------------------------------------------------------------------- 1. identity


@dataclass(frozen=True)
class Endpoint:
    base_url: str              # as recorded: no credentials, query or fragment
    organization: str | None
    project: str | None


def resolve_endpoint(cfg: OpenAITrainConfig) -> Endpoint:
    raw = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TrainError(f"train.openai.base_url: {_safe_url(raw)!r} is not an http(s) URL")
    return Endpoint(_safe_url(raw),
                    cfg.organization or os.environ.get("OPENAI_ORG_ID") or None,
                    cfg.project or os.environ.get("OPENAI_PROJECT_ID") or None)


def _safe_url(url: str) -> str:
    """The URL without user:password@, query or fragment (nothing secret gets recorded)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


def job_settings(cfg: OpenAITrainConfig) -> dict[str, Any]:
    """The settings that define the job (and so the run id)."""
    return {"model": cfg.model, "n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
            "learning_rate_multiplier": cfg.learning_rate_multiplier, "suffix": cfg.suffix, "seed": cfg.seed}


def run_key(split_manifest: dict[str, Any], cfg: OpenAITrainConfig, endpoint: Endpoint) -> str:
    payload = orjson.dumps({
        "backend": "openai",
        "split": split_manifest["id"],
        "split_files": {name: split_manifest["files"].get(name) for name in FILES.values()},
        "job": job_settings(cfg),
        "endpoint": {"base_url": endpoint.base_url, "organization": endpoint.organization, "project": endpoint.project},
    }, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------- secrets


class Redactor:
    """Scrubs the API key (and anything shaped like an OpenAI key, such as the masked echo
    in a 401) out of every message that might be shown or written."""

    KEY_SHAPE = re.compile(r"\bsk-[A-Za-z0-9*_\-]{6,}")

    def __init__(self, *secrets: str):
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return self.KEY_SHAPE.sub("sk-<redacted>", text)

    def scrub(self, obj: Any) -> Any:
        """The same, through every string of an API object (events and errors echo text)."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {k: self.scrub(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.scrub(v) for v in obj]
        return obj


def read_api_key(cfg: OpenAITrainConfig) -> str:
    key = os.environ.get(cfg.api_key_env, "").strip()
    if not key:
        raise TrainError(f"no API key: set the environment variable {cfg.api_key_env} "
                         "(train.openai.api_key_env names it; the key never goes in a config file)")
    return key


# --------------------------------------------------------------------------- the API, with retries


class ApiFailure(TrainError):
    """A request that failed for good; `status` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


def retry_after_seconds(headers: Any) -> float | None:
    """Retry-After as the API sends it: retry-after-ms, or Retry-After in seconds or as a date."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value) / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return max(0.0, email.utils.mktime_tz(parsed) - time.time()) if parsed else None


class Api:
    """The SDK client (its own retries off) behind one retry policy that we can see and test:
    transient failures wait (Retry-After when the server gives one, else exponential backoff
    with jitter) and try again; permanent ones raise ApiFailure with the API's message."""

    def __init__(self, cfg: OpenAITrainConfig, endpoint: Endpoint, api_key: str, progress: Progress,
                 sleep: Callable[[float], None] = time.sleep):
        import httpx2
        import openai

        self.cfg, self.endpoint, self.progress, self.sleep = cfg, endpoint, progress, sleep
        self.redact = Redactor(api_key)
        base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.client = openai.OpenAI(
            api_key=api_key, base_url=base_url, organization=endpoint.organization, project=endpoint.project,
            max_retries=0, timeout=httpx2.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s))

    def transient(self, exc: Exception) -> tuple[bool, float | None, str]:
        """(retry?, the server's Retry-After, a short reason)."""
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return True, None, f"no answer within {self.cfg.request_timeout_s:g}s"
        if isinstance(exc, openai.APIConnectionError):
            return True, None, "connection failed or dropped"
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            if exc.status_code == 429 and body.get("code") == "insufficient_quota":
                return False, None, ""  # out of credit: waiting does not help
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                return True, retry_after_seconds(exc.response.headers), f"HTTP {exc.status_code}"
        return False, None, ""

    def describe(self, what: str, exc: Exception) -> ApiFailure:
        import openai

        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            message = str(body.get("message") or exc.message)
            if len(message) > 500:  # a proxy's HTML error page, say
                message = message[:500] + "..."
            label = body.get("code") or body.get("type")
            label = f" {label}" if label else ""
            param = f" (param: {body['param']})" if body.get("param") else ""
            hint = ""
            if exc.status_code == 401:
                hint = f"; check the key in {self.cfg.api_key_env}"
            elif exc.status_code == 403:
                hint = "; check the key's organization/project and its permissions"
            elif exc.status_code == 404:
                hint = f" on {self.endpoint.base_url}"
            text = f"{what}: HTTP {exc.status_code}{label}: {message}{param}{hint}"
            return ApiFailure(self.redact(text), exc.status_code, body.get("code"))
        return ApiFailure(self.redact(f"{what}: {type(exc).__name__}: {exc}"))

    def backoff(self, attempt: int) -> float:
        wait = min(self.cfg.retry_max_backoff_s, self.cfg.retry_backoff_s * 2 ** attempt)
        return wait * random.uniform(0.75, 1.0)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, lookup: Callable[[], Any] | None = None,
             **kwargs: Any) -> Any:
        """fn(*args, **kwargs), retried. For a create (not idempotent), `lookup` finds the
        object a lost answer may have created; it runs after the wait, before any retry."""
        import openai

        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except openai.OpenAIError as exc:
                retry, retry_after, reason = self.transient(exc)
                if not retry:
                    raise self.describe(what, exc) from None
                if attempt >= self.cfg.max_retries:
                    failure = self.describe(what, exc)
                    raise ApiFailure(f"{failure} (gave up after {attempt} retries)", failure.status) from None
                if retry_after is not None and retry_after > self.cfg.max_retry_after_s:
                    raise ApiFailure(self.redact(
                        f"{what}: HTTP {getattr(exc, 'status_code', '')} and the server asks to retry after "
                        f"{retry_after:.0f}s, more than train.openai.max_retry_after_s "
                        f"({self.cfg.max_retry_after_s:.0f}s); try again later"), getattr(exc, "status_code", None))
                wait = retry_after if retry_after is not None else self.backoff(attempt)
                attempt += 1
                self.progress.retry(what, attempt, self.cfg.max_retries, wait,
                                    reason + (" (Retry-After)" if retry_after is not None else ""))
                self.sleep(wait)
                if lookup is not None:
                    found = self.call(f"look up {what}", lookup)
                    if found is not None:
                        self.progress.note(f"{what}: the lost answer had gone through; using {found.id}")
                        return found


# --------------------------------------------------------------------------- state


def load_state(work: Path) -> dict[str, Any]:
    path = work / STATE
    return orjson.loads(path.read_bytes()) if path.exists() else {}


def save_state(work: Path, state: dict[str, Any]) -> None:
    write_bytes_atomic(work / STATE, dumps(state))


def load_events(work: Path) -> list[dict[str, Any]]:
    path = work / EVENTS
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@contextlib.contextmanager
def run_lock(work: Path) -> Iterator[None]:
    """One refit process per run: two at once could both decide to create the job."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(work / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainError(f"another refit process is already running {work.name.removeprefix('.work-')}; "
                             "wait for it (or stop it) and run again") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- 2. checks and the estimate


def preflight(split_path: Path, split_manifest: dict[str, Any]) -> dict[str, Any]:
    """The files must have passed the format checks at split time, pass them now, and be the
    files split wrote. Returns the current reports."""
    recorded = split_manifest.get("openai", {}).get("format_checks", {})
    reports = {}
    for name, filename in FILES.items():
        path = split_path / filename
        check = recorded.get(name)
        if not check or not check.get("ok"):
            problems = "; ".join((check or {}).get("problems") or ["no format check recorded"])
            raise TrainError(f"split {split_manifest['id']}: {filename} did not pass OpenAI's format checks ({problems}); "
                             "fix the data and run `make split` again")
        if not path.exists():
            raise TrainError(f"split {split_manifest['id']}: {filename} is missing")
        try:
            report = require_valid(path)
        except FormatError as exc:
            raise TrainError(f"refusing to upload: {exc}") from None
        expected = split_manifest.get("files", {}).get(filename)
        if expected and file_sha256(path) != expected:
            raise TrainError(f"refusing to upload: {path} changed since split {split_manifest['id']} wrote it "
                             "(its sha256 differs from the split manifest); run `make split` again")
        reports[name] = {"examples": report.examples}
    return reports


def estimate(config: PipelineConfig, split_manifest: dict[str, Any]) -> dict[str, Any]:
    """Billed tokens: the split's per-epoch count (each example capped at the per-example
    limit) times the epochs this job will run, priced per million tokens."""
    cfg = config.train.openai
    billing = split_manifest["openai"]["billing"]
    epochs = cfg.n_epochs if cfg.n_epochs != "auto" else default_epochs(billing["examples"])
    price = cfg.price_per_million_tokens if cfg.price_per_million_tokens is not None else billing["price_per_million_tokens"]
    billed = billing["tokens_per_epoch"] * epochs
    return {"model": cfg.model, "examples": billing["examples"], "epochs": epochs,
            "epochs_source": "config" if cfg.n_epochs != "auto" else "OpenAI's default rule",
            "tokens_per_epoch": billing["tokens_per_epoch"], "billed_tokens": billed,
            "price_per_million_tokens": price, "estimated_cost": round(billed * price / 1e6, 4),
            "over_max_tokens": billing.get("over_max_tokens", 0),
            "tokenizer": "the base model's tokenizer (OpenAI's count differs a little)"}


# --------------------------------------------------------------------------- 3. upload and create


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else dict(obj)


def upload_files(api: Api, state: dict[str, Any], work: Path, split_path: Path, run_id: str) -> None:
    files = state.setdefault("files", {})
    for name, filename in FILES.items():
        path = split_path / filename
        data = path.read_bytes()
        upload_name = f"refit-{run_id}-{filename}"
        known = files.get(name)
        if known and known.get("id"):
            try:  # still there? (files can be deleted or expire)
                existing = api.call(f"check uploaded {name} file", api.client.files.retrieve, known["id"])
            except ApiFailure as exc:
                if exc.status != 404:
                    raise
                existing = None
            if existing is not None and existing.bytes == len(data) and existing.status != "error":
                continue

        def lookup(upload_name: str = upload_name, size: int = len(data)) -> Any:
            page = api.client.files.list(purpose="fine-tune", limit=10_000, order="desc")
            return next((f for f in page.data if f.filename == upload_name and f.bytes == size and f.status != "error"),
                        None)

        api.progress.note(f"uploading {filename} ({len(data) / 1e6:.2f} MB)")
        uploaded = api.call(f"upload {filename}", api.client.files.create, file=(upload_name, data),
                            purpose="fine-tune", lookup=lookup)
        files[name] = {"id": uploaded.id, "filename": upload_name, "bytes": len(data), "sha256": file_sha256(path)}
        save_state(work, state)
        api.progress.note(f"uploaded {filename} as {uploaded.id}")


def find_job(api: Api, run_id: str, skip: list[str]) -> Any:
    """The newest job created for this run (metadata refit_run_id), if any. The filter is
    checked here too, for servers that ignore it; at most 10 pages are read."""
    page = api.client.fine_tuning.jobs.list(metadata={"refit_run_id": run_id}, limit=100)
    for _ in range(10):
        for job in page.data:
            if (job.metadata or {}).get("refit_run_id") == run_id and job.id not in skip:
                return job
        if not page.has_more or not page.data:
            return None
        page = api.client.fine_tuning.jobs.list(metadata={"refit_run_id": run_id}, limit=100, after=page.data[-1].id)
    return None


def create_job(api: Api, config: PipelineConfig, state: dict[str, Any], work: Path, run_id: str,
               split_manifest: dict[str, Any]) -> Any:
    cfg = config.train.openai
    hyperparameters = {"n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
                       "learning_rate_multiplier": cfg.learning_rate_multiplier}
    metadata = {"refit_run_id": run_id, "refit_split_id": split_manifest["id"],
                "refit_dataset_id": split_manifest["dataset"]["id"],
                "refit_dataset_sha256": split_manifest["dataset"].get("examples_sha256", ""),
                "refit_pipeline": config.name}
    kwargs: dict[str, Any] = {
        "model": cfg.model, "training_file": state["files"]["train"]["id"],
        "validation_file": state["files"]["validation"]["id"],
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "metadata": metadata,
    }
    if cfg.suffix:
        kwargs["suffix"] = cfg.suffix
    if cfg.seed is not None:
        kwargs["seed"] = cfg.seed
    # The intent goes to disk first: if this process dies before the answer is recorded, the
    # next run looks the job up instead of creating another.
    state["job_create_sent"] = True
    save_state(work, state)
    skip = state.get("discarded_jobs", [])
    job = api.call("create the fine-tuning job", api.client.fine_tuning.jobs.create,
                   lookup=lambda: find_job(api, run_id, skip), **kwargs)
    record_job(work, state, job)
    return job


def record_job(work: Path, state: dict[str, Any], job: Any) -> None:
    state.update(job_id=job.id, status=job.status, job_create_sent=False)
    save_state(work, state)


# --------------------------------------------------------------------------- 4. follow


class Follower:
    """Polls the job, its new events (the API lists them newest first) and its checkpoints."""

    def __init__(self, api: Api, work: Path, state: dict[str, Any], tracker: Callable[[], str | None] | None):
        self.api, self.work, self.state = api, work, state
        self.tracker = tracker  # starts the MLflow run, after the first poll (the status shows at once)
        self.mlflow_run: str | None = None
        self.events = load_events(work)
        self.seen = {e["id"] for e in self.events}
        self.checkpoints: list[dict[str, Any]] = []

    def new_events(self, job_id: str) -> list[dict[str, Any]]:
        client = self.api.client
        page = self.api.call("list job events", client.fine_tuning.jobs.list_events, job_id, limit=100)
        fresh: list[dict[str, Any]] = []
        while True:
            known = False
            for event in page.data:
                if event.id in self.seen:
                    known = True
                    break
                fresh.append(self.api.redact.scrub(_as_dict(event)))
            if known or not page.has_more or not page.data:
                break
            page = self.api.call("list job events", client.fine_tuning.jobs.list_events, job_id, limit=100,
                                 after=page.data[-1].id)
        fresh.reverse()  # oldest first
        if fresh:
            with open(self.work / EVENTS, "ab") as handle:
                handle.write(b"".join(orjson.dumps(e) + b"\n" for e in fresh))
            self.events.extend(fresh)
            self.seen.update(e["id"] for e in fresh)
        return fresh

    def list_checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        page = self.api.call("list job checkpoints", self.api.client.fine_tuning.jobs.checkpoints.list, job_id,
                             limit=100)
        return sorted((self.api.redact.scrub(_as_dict(c)) for c in page.data), key=lambda c: c["step_number"])

    def follow(self, job_id: str, cfg: OpenAITrainConfig) -> dict[str, Any]:
        started = time.monotonic()
        polls = 0
        while True:
            job = self.api.redact.scrub(_as_dict(
                self.api.call("retrieve the job", self.api.client.fine_tuning.jobs.retrieve, job_id)))
            fresh = self.new_events(job_id)
            if job["status"] in ("running",) + TERMINAL or any("Checkpoint" in e["message"] for e in fresh):
                self.checkpoints = self.list_checkpoints(job_id)
            if job["status"] != self.state.get("status"):
                self.state["status"] = job["status"]
                save_state(self.work, self.state)
            self.api.progress.job(job, fresh, self.checkpoints)
            if self.tracker is not None:
                self.mlflow_run, self.tracker = self.tracker(), None
            log_metrics(self.mlflow_run, fresh)
            if job["status"] in TERMINAL:
                return job
            if cfg.wait_timeout_s is not None and time.monotonic() - started > cfg.wait_timeout_s:
                raise TrainError(f"stopped waiting after {cfg.wait_timeout_s:g}s: job {job_id} is still {job['status']} "
                                 "and keeps running on the server. Run the same command again to re-attach, "
                                 "or add --cancel to stop it.")
            # Quick polls first (progress shows up early), then every poll_interval_s.
            self.api.sleep(min(cfg.poll_interval_s, 0.5 * 1.5 ** polls))
            polls += 1


def metric_points(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    points = []
    for event in events:
        data = event.get("data") or {}
        if event.get("type") == "metrics" and isinstance(data, dict) and "step" in data:
            points.append(data)
    return points


# --------------------------------------------------------------------------- tracking


METRIC_KEYS = ("train_loss", "valid_loss", "full_valid_loss", "train_mean_token_accuracy",
               "valid_mean_token_accuracy", "full_valid_mean_token_accuracy")


def start_tracking(config: PipelineConfig, state: dict[str, Any], work: Path, run_id: str,
                   split_manifest: dict[str, Any], endpoint: Endpoint) -> str:
    """The MLflow run of this training run: created once, re-opened by a re-attached run."""
    import mlflow

    from pipelines import tracking

    tracking.setup(config)
    if state.get("mlflow_run_id"):
        return state["mlflow_run_id"]
    cfg = config.train.openai
    run = mlflow.start_run(run_name=run_id)
    mlflow_run = run.info.run_id
    mlflow.end_run()
    state["mlflow_run_id"] = mlflow_run
    save_state(work, state)
    mlflow.log_params({
        "split_id": split_manifest["id"], "dataset_id": split_manifest["dataset"]["id"], "backend": "openai",
        "base_model": cfg.model, "n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
        "learning_rate_multiplier": cfg.learning_rate_multiplier, "suffix": cfg.suffix, "seed": cfg.seed,
        "base_url": endpoint.base_url, "job_id": state.get("job_id"),
        "training_file": state["files"]["train"]["id"], "validation_file": state["files"]["validation"]["id"],
    }, run_id=mlflow_run)
    from mlflow.tracking import MlflowClient

    MlflowClient().set_tag(mlflow_run, "refit.run_id", run_id)
    return mlflow_run


def log_metrics(mlflow_run: str | None, events: list[dict[str, Any]]) -> None:
    points = metric_points(events)
    if not mlflow_run or not points:
        return
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(p[key]), now, int(p["step"])) for p in points for key in METRIC_KEYS
               if isinstance(p.get(key), (int, float)) and math.isfinite(p[key])]
    MlflowClient().log_batch(mlflow_run, metrics=metrics)


def end_tracking(mlflow_run: str | None, status: str, tags: dict[str, str]) -> None:
    if not mlflow_run:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(mlflow_run, key, value)
    client.set_terminated(mlflow_run, status)


# --------------------------------------------------------------------------- 5. the run folder


def download_results(api: Api, job: dict[str, Any], target: Path) -> list[dict[str, Any]]:
    """The job's result files (a step-metrics CSV). A download that fails is recorded, not
    fatal: the model exists and is paid for either way."""
    out = []
    for file_id in job.get("result_files") or []:
        entry: dict[str, Any] = {"id": file_id}
        try:
            meta = api.call("retrieve a result file", api.client.files.retrieve, file_id)
            data = api.call("download a result file", api.client.files.content, file_id).read()
        except ApiFailure as exc:
            entry["error"] = str(exc)
            out.append(entry)
            continue
        if not data.lstrip().startswith(b"step"):
            with contextlib.suppress(binascii.Error, ValueError):  # the API has served these base64-encoded
                decoded = base64.b64decode(data, validate=True)
                if decoded.lstrip().startswith(b"step"):
                    data = decoded
        name = re.sub(r"[^A-Za-z0-9._-]", "_", meta.filename or f"{file_id}.csv")
        path = Path("results") / f"{file_id}-{name}"
        write_bytes_atomic(target / path, data)
        entry.update(filename=meta.filename, path=str(path), bytes=len(data))
        out.append(entry)
    return out


def plot_curves(points: list[dict[str, Any]], checkpoints: list[dict[str, Any]], target: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    reported = {p["step"] for p in points if isinstance(p.get("full_valid_loss"), (int, float))}
    points = points + [{"step": c["step_number"], "full_valid_loss": (c.get("metrics") or {}).get("full_valid_loss")}
                       for c in checkpoints if c["step_number"] not in reported]
    points.sort(key=lambda p: p["step"])
    for key, label, style in (("train_loss", "train loss", {"color": "#4c72b0", "alpha": 0.7}),
                              ("valid_loss", "validation loss (batch)", {"color": "#dd8452", "alpha": 0.8}),
                              ("full_valid_loss", "full validation loss", {"color": "#c44e52", "marker": "o",
                                                                           "linestyle": "none"})):
        series = [(p["step"], p[key]) for p in points if isinstance(p.get(key), (int, float))]
        if series:
            ax.plot(*zip(*series), label=label, **style)
    if not points:
        ax.text(0.5, 0.5, "the job reported no metrics", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    if points:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)


def losses(points: list[dict[str, Any]], checkpoints: list[dict[str, Any]]) -> dict[str, Any]:
    train = [p["train_loss"] for p in points if isinstance(p.get("train_loss"), (int, float))]
    full = [p["full_valid_loss"] for p in points if isinstance(p.get("full_valid_loss"), (int, float))]
    full += [c["metrics"]["full_valid_loss"] for c in checkpoints
             if isinstance((c.get("metrics") or {}).get("full_valid_loss"), (int, float))]
    batch = [p["valid_loss"] for p in points if isinstance(p.get("valid_loss"), (int, float))]
    final_full = next((p["full_valid_loss"] for p in reversed(points) if isinstance(p.get("full_valid_loss"), (int, float))),
                      None)
    valid = full or batch
    return {
        "base_eval_loss": None,  # the API reports no loss for the base model
        "final_eval_loss": final_full if final_full is not None else (batch[-1] if batch else None),
        "best_eval_loss": min(valid) if valid else None,
        "final_train_loss": train[-1] if train else None,
        "mean_train_loss": round(sum(train) / len(train), 6) if train else None,
    }


def write_run(final: Path, *, config: PipelineConfig, run_id: str, split_path: Path, split_manifest: dict[str, Any],
              endpoint: Endpoint, state: dict[str, Any], job: dict[str, Any], follower: Follower, api: Api,
              started: float, mlflow_run: str | None) -> dict[str, Any]:
    cfg = config.train.openai
    events = follower.events
    points = metric_points(events)
    checkpoints = follower.checkpoints
    with atomic_dir(final) as tmp:
        results = download_results(api, job, tmp)
        (tmp / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
        plot_curves(points, checkpoints, tmp / "curves.png", f"refit OpenAI fine-tune ({job['id']})")
        hyper = job.get("hyperparameters") or {}
        manifest = {
            "stage": "train",
            "backend": "openai",
            "id": run_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code_version": code_version(),
            "config_hash": run_key(split_manifest, cfg, endpoint),
            "pipeline": config.name,
            "split": {"id": split_manifest["id"], "path": str(split_path)},
            "dataset": split_manifest["dataset"],
            "base_model": {"name": cfg.model, "provider": "openai"},
            "config": config.train.model_dump(mode="json"),
            "openai": {
                "base_url": endpoint.base_url,
                "organization": endpoint.organization or job.get("organization_id"),
                "project": endpoint.project,
                "model": job.get("model", cfg.model),
                "files": {name: state["files"][name]["id"] for name in FILES},
                "uploads": state["files"],
                "job_id": job["id"],
                "status": job["status"],
                "fine_tuned_model": job["fine_tuned_model"],
                "trained_tokens": job.get("trained_tokens"),
                "result_files": results,
                "hyperparameters": {k: hyper.get(k) for k in ("n_epochs", "batch_size", "learning_rate_multiplier")},
                "requested_hyperparameters": {"n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
                                              "learning_rate_multiplier": cfg.learning_rate_multiplier},
                "suffix": job.get("user_provided_suffix"),
                "seed": job.get("seed"),
                "metadata": job.get("metadata"),
                "job_created_at": job.get("created_at"),
                "job_finished_at": job.get("finished_at"),
                "events": len(events),
                "metric_events": len(points),
                "checkpoints": [{"id": c["id"], "step": c["step_number"],
                                 "fine_tuned_model_checkpoint": c["fine_tuned_model_checkpoint"],
                                 "metrics": c.get("metrics")} for c in checkpoints],
                "estimate": state.get("estimate"),
            },
            "losses": losses(points, checkpoints),
            "steps": {"total": points[-1].get("total_steps") if points else None,
                      "done": int(points[-1]["step"]) if points else None},
            "tokens": {"trained": job.get("trained_tokens"),
                       "estimated_billed": (state.get("estimate") or {}).get("billed_tokens")},
            "timings": {"job_s": (job["finished_at"] - job["created_at"]) if job.get("finished_at") else None,
                        "followed_s": round(time.perf_counter() - started, 1)},
            "mlflow": {"run_id": mlflow_run, "experiment": config.tracking.experiment or f"refit-{config.name}"},
        }
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    return manifest


def finish_tracking(mlflow_run: str | None, final: Path, manifest: dict[str, Any], run_id: str,
                    split_manifest: dict[str, Any]) -> None:
    if not mlflow_run:
        return
    import mlflow

    lo = manifest["losses"]
    step = manifest["steps"]["done"] or 0
    final_metrics = {k: v for k, v in {"final_eval_loss": lo["final_eval_loss"], "best_eval_loss": lo["best_eval_loss"],
                                       "trained_tokens": manifest["openai"]["trained_tokens"]}.items()
                     if isinstance(v, (int, float))}
    if final_metrics:
        mlflow.log_metrics(final_metrics, step=step, run_id=mlflow_run)
    mlflow.log_artifact(str(final / "curves.png"), run_id=mlflow_run)
    mlflow.log_artifact(str(final / "manifest.json"), run_id=mlflow_run)
    for entry in manifest["openai"]["result_files"]:
        if entry.get("path"):
            mlflow.log_artifact(str(final / entry["path"]), artifact_path="results", run_id=mlflow_run)
    end_tracking(mlflow_run, "FINISHED", {"refit.split_id": split_manifest["id"], "refit.run_id": run_id,
                                          "openai.job_id": manifest["openai"]["job_id"],
                                          "openai.fine_tuned_model": manifest["openai"]["fine_tuned_model"] or ""})


# --------------------------------------------------------------------------- the stage


@dataclass
class Run:
    """Where a run lives and what identifies it."""

    split_path: Path
    split_manifest: dict[str, Any]
    endpoint: Endpoint
    run_id: str
    final: Path
    work: Path


def locate(config: PipelineConfig) -> Run:
    split_path = resolve_split(config)
    split_manifest = orjson.loads((split_path / "manifest.json").read_bytes())
    endpoint = resolve_endpoint(config.train.openai)
    run_id = f"run-{run_key(split_manifest, config.train.openai, endpoint)[:12]}"
    out_root = Path(config.train.output_dir)
    return Run(split_path, split_manifest, endpoint, run_id, out_root / run_id, out_root / f".work-{run_id}")


def failure_message(job: dict[str, Any]) -> str:
    if job["status"] == "cancelled":
        return (f"job {job['id']} was cancelled; no model was trained. "
                "`refit train --backend openai --restart` starts a new job (and pays for it).")
    error = job.get("error") or {}
    code = error.get("code") or "unknown_error"
    message = error.get("message") or "the API gave no reason"
    param = f" (param: {error['param']})" if error.get("param") else ""
    return (f"job {job['id']} failed: {code}: {message}{param}. "
            "Fix the cause, then `refit train --backend openai --restart` starts a new job.")


def train(config: PipelineConfig, *, force: bool = False, restart: bool = False, assume_yes: bool = False,
          confirm: Confirm | None = None, progress: Progress | None = None, track: bool = True) -> TrainResult:
    """Steps 1-5. Raises TrainError (an ApiFailure for API errors) with a message fit to show."""
    progress = progress or Progress()
    started = time.perf_counter()
    cfg = config.train.openai

    # 1. Identity and the no-op check.
    run = locate(config)
    if (run.final / "manifest.json").exists() and not force:
        set_latest(run.final.parent, run.run_id)
        return TrainResult(run.run_id, run.final, orjson.loads((run.final / "manifest.json").read_bytes()), skipped=True)
    run.work.mkdir(parents=True, exist_ok=True)
    with run_lock(run.work):
        state = load_state(run.work)
        if force and (run.final / "manifest.json").exists():
            # --force rebuilds the run folder from the recorded job; it never starts a new one.
            previous = orjson.loads((run.final / "manifest.json").read_bytes())
            state.update(files=previous["openai"]["uploads"], job_id=previous["openai"]["job_id"],
                         status=previous["openai"]["status"], mlflow_run_id=previous["mlflow"]["run_id"],
                         estimate=previous["openai"].get("estimate"))
            save_state(run.work, state)
            shutil.rmtree(run.final)
        state.setdefault("run_id", run.run_id)
        state.setdefault("base_url", run.endpoint.base_url)
        api = Api(cfg, run.endpoint, read_api_key(cfg), progress)
        try:
            return _train(config, run, state, api, restart=restart, assume_yes=assume_yes or cfg.assume_yes,
                          confirm=confirm, progress=progress, track=track, started=started)
        finally:
            progress.stop()


def _train(config: PipelineConfig, run: Run, state: dict[str, Any], api: Api, *, restart: bool, assume_yes: bool,
           confirm: Confirm | None, progress: Progress, track: bool, started: float) -> TrainResult:
    cfg = config.train.openai
    work = run.work
    if restart and state.get("job_id"):
        try:
            job = api.call("retrieve the recorded job", api.client.fine_tuning.jobs.retrieve, state["job_id"])
        except ApiFailure as exc:
            if exc.status != 404:
                raise
            job = None
        if job is None or job.status in ("failed", "cancelled"):
            progress.note(f"--restart: leaving job {state['job_id']} ({job.status if job else 'not found'}) behind")
            state.setdefault("discarded_jobs", []).append(state.pop("job_id"))
            for key in ("status", "error", "mlflow_run_id"):
                state.pop(key, None)
            (work / EVENTS).unlink(missing_ok=True)
            save_state(work, state)
        elif job.status in ACTIVE:
            raise TrainError(f"--restart: job {job.id} is still {job.status}; a second job would be paid for too. "
                             "Stop it first with `refit train --backend openai --cancel`.")
    if not state.get("job_id") and state.get("job_create_sent"):
        # A previous run sent the create and died before recording the answer.
        job = api.call("look up this run's job", find_job, api, run.run_id, state.get("discarded_jobs", []))
        if job is not None:
            record_job(work, state, job)

    if state.get("job_id"):
        progress.note(f"re-attaching to job {state['job_id']} (recorded in {work / STATE}); nothing new is paid for")
    else:
        # 2. Checks and the estimate, before anything is uploaded.
        preflight(run.split_path, run.split_manifest)
        state["estimate"] = estimate(config, run.split_manifest)
        progress.estimate(state["estimate"])
        if not assume_yes:
            if confirm is None:
                raise TrainError("refusing to start a paid fine-tuning job without a yes: pass --yes "
                                 "(or set train.openai.assume_yes: true) in a non-interactive run")
            if not confirm(state["estimate"]):
                raise TrainError("not confirmed: nothing was uploaded and no job was created")
        # 3. Upload and create; each id is on disk the moment it exists.
        save_state(work, state)
        upload_files(api, state, work, run.split_path, run.run_id)
        job = create_job(api, config, state, work, run.run_id, run.split_manifest)
        progress.note(f"created job {job.id} (recorded in {work / STATE})")

    # 4. Follow.
    tracker = (lambda: start_tracking(config, state, work, run.run_id, run.split_manifest, run.endpoint)) if track else None
    follower = Follower(api, work, state, tracker)
    try:
        job_dict = follower.follow(state["job_id"], cfg)
    except KeyboardInterrupt:
        raise Detached(f"interrupted: job {state['job_id']} keeps running on the server. Run the same command "
                       "again to re-attach, or add --cancel to stop it.") from None
    except ApiFailure as exc:
        if exc.status == 404:
            hint = "the recorded job is not on this server; `--restart` forgets it and starts a new job"
        else:
            hint = (f"job {state['job_id']} is not affected and keeps running on the server; run the same command "
                    "again to re-attach")
        raise ApiFailure(f"{exc}. {hint}", exc.status, exc.code) from None
    mlflow_run = follower.mlflow_run
    if job_dict["status"] != "succeeded":
        state["error"] = job_dict.get("error")
        save_state(work, state)
        message = failure_message(job_dict)
        end_tracking(mlflow_run, "KILLED" if job_dict["status"] == "cancelled" else "FAILED",
                     {"refit.error": api.redact(message)[:5000]})
        raise ApiFailure(api.redact(message), code=(job_dict.get("error") or {}).get("code"))

    # 5. The run folder.
    manifest = write_run(run.final, config=config, run_id=run.run_id, split_path=run.split_path,
                         split_manifest=run.split_manifest, endpoint=run.endpoint, state=state, job=job_dict,
                         follower=follower, api=api, started=started, mlflow_run=mlflow_run)
    finish_tracking(mlflow_run, run.final, manifest, run.run_id, run.split_manifest)
    shutil.rmtree(work, ignore_errors=True)
    set_latest(run.final.parent, run.run_id)
    return TrainResult(run.run_id, run.final, manifest, skipped=False)


@dataclass
class CancelResult:
    run_id: str
    job_id: str
    status: str
    cancelled: bool  # False: the job had already ended


def cancel(config: PipelineConfig, *, progress: Progress | None = None, track: bool = True) -> CancelResult:
    """Cancel the job recorded for this split and config."""
    progress = progress or Progress()
    cfg = config.train.openai
    run = locate(config)
    if (run.final / "manifest.json").exists():
        manifest = orjson.loads((run.final / "manifest.json").read_bytes())
        return CancelResult(run.run_id, manifest["openai"]["job_id"], manifest["openai"]["status"], cancelled=False)
    state = load_state(run.work)
    api = Api(cfg, run.endpoint, read_api_key(cfg), progress)
    job_id = state.get("job_id")
    if not job_id and state.get("job_create_sent"):
        found = api.call("look up this run's job", find_job, api, run.run_id, state.get("discarded_jobs", []))
        job_id = found.id if found is not None else None
    if not job_id:
        raise TrainError(f"no job is recorded for run {run.run_id} (split {run.split_manifest['id']}, this config): "
                         "nothing to cancel")
    job = api.call("retrieve the job", api.client.fine_tuning.jobs.retrieve, job_id)
    cancelled = False
    if job.status in ACTIVE:
        try:
            job = api.call("cancel the job", api.client.fine_tuning.jobs.cancel, job_id)
            cancelled = True
        except ApiFailure as exc:
            if exc.status != 400:  # 400: it ended in the meantime; report what it is now
                raise
            job = api.call("retrieve the job", api.client.fine_tuning.jobs.retrieve, job_id)
    state.update(job_id=job_id, status=job.status, job_create_sent=False)
    save_state(run.work, state)
    if cancelled and track and state.get("mlflow_run_id"):
        from pipelines import tracking

        tracking.setup(config)
        end_tracking(state["mlflow_run_id"], "KILLED", {"refit.error": f"job {job_id} cancelled with --cancel"})
    return CancelResult(run.run_id, job_id, job.status, cancelled)
