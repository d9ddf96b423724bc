"""A fine-tuning job's life on the server, and its record in the run's work folder.

The work folder (`.work-<run id>`) holds `openai_state.json` (the uploaded files, the intent to
create the job, the job id, its status, the MLflow run) and `events.jsonl` (the job's events,
appended as they arrive). Every id is written the moment it exists, so a run that dies at any
point re-attaches to what it already paid for instead of paying again.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from pipelines.config import OpenAITrainConfig, PipelineConfig
from pipelines.openai_api import Api, ApiFailure
from pipelines.openai_method import method_body
from pipelines.storage import dumps, file_sha256, write_bytes_atomic
from pipelines.train import TrainError

ACTIVE = ("validating_files", "queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
FILES = {"train": "train.openai.jsonl", "validation": "validation.openai.jsonl"}
STATE = "openai_state.json"
EVENTS = "events.jsonl"
METRIC_KEYS = ("train_loss", "valid_loss", "full_valid_loss", "train_mean_token_accuracy",
               "valid_mean_token_accuracy", "full_valid_mean_token_accuracy")


# --------------------------------------------------------------------------- the work folder


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


# --------------------------------------------------------------------------- upload and create (recipe step 3)


def _as_dict(obj: Any) -> dict[str, Any]:
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else dict(obj)


def upload_files(api: Api, state: dict[str, Any], work: Path, split_path: Path, run_id: str,
                 names: dict[str, str] = FILES) -> None:
    """Upload `names` (set -> file name; the method's files), each id recorded at once."""
    files = state.setdefault("files", {})
    for name, filename in names.items():
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
    metadata = {"refit_run_id": run_id, "refit_split_id": split_manifest["id"],
                "refit_dataset_id": split_manifest["dataset"]["id"],
                "refit_dataset_sha256": split_manifest["dataset"].get("examples_sha256", ""),
                "refit_pipeline": config.name}
    kwargs: dict[str, Any] = {
        "model": cfg.model, "training_file": state["files"]["train"]["id"],
        "validation_file": state["files"]["validation"]["id"],
        "method": method_body(config),
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


# --------------------------------------------------------------------------- follow (recipe step 4)


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


def log_metrics(mlflow_run: str | None, events: list[dict[str, Any]]) -> None:
    """The metric events' losses and accuracies into the MLflow run, at their step."""
    points = metric_points(events)
    if not mlflow_run or not points:
        return
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    metrics = [Metric(key, float(p[key]), now, int(p["step"])) for p in points for key in METRIC_KEYS
               if isinstance(p.get(key), (int, float)) and math.isfinite(p[key])]
    MlflowClient().log_batch(mlflow_run, metrics=metrics)


# --------------------------------------------------------------------------- the result files (recipe step 5)


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


