"""Fine-tuning jobs: creation checked like the real API, and the state machine that moves a job
validating_files -> queued -> running -> succeeded (or failed, or cancelled) on the server's
clock, emitting the API's events, metrics, checkpoints and result file on the way. Jobs advance
lazily, whenever they are read."""

from __future__ import annotations

import csv
import io
import math
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.openai_format import MIN_EXAMPLES, default_epochs

from .api import ApiError, messages_tokens, page
from .files import StoredFile, store
from .models import check_job_allowed
from .settings import JobFailure

if TYPE_CHECKING:
    from .state import FakeOpenAI

TERMINAL = ("succeeded", "failed", "cancelled")
# name -> (accepted types, low, high); learning_rate_multiplier excludes its low end
HYPERPARAMETERS = {"n_epochs": (int, 1, 50), "batch_size": (int, 1, 256), "learning_rate_multiplier": ((int, float), 0, 10)}
DPO_HYPERPARAMETERS = HYPERPARAMETERS | {"beta": ((int, float), 0, 2)}  # beta excludes its low end too
METHODS = ("supervised", "dpo")


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


# ---- creation

def _check_model(api: FakeOpenAI, body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "Missing required parameter: 'model'.", param="model")
    if api.settings.base_models is not None and model not in api.settings.base_models:
        raise ApiError(400, f"Model {model} is not available for fine-tuning or does not exist.", param="model",
                       code="model_not_available")
    return model


def _training_file(api: FakeOpenAI, body: dict[str, Any]) -> StoredFile:
    """The training file, once it and the validation file (if any) are known fine-tune files."""
    files = {}
    for param in ("training_file", "validation_file"):
        file_id = body.get(param)
        if file_id is None and param == "validation_file":
            continue
        if not isinstance(file_id, str):
            raise ApiError(400, f"Missing required parameter: '{param}'.", param=param)
        stored = api.files.get(file_id)
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
    return train


def method_type(body: dict[str, Any]) -> str:
    method = body.get("method") or {"type": "supervised"}
    if not isinstance(method, dict) or method.get("type") not in METHODS:
        raise ApiError(400, "This server fine-tunes with method 'supervised' or 'dpo' only.", param="method.type")
    return method["type"]


def _hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    kind_of = method_type(body)
    allowed = DPO_HYPERPARAMETERS if kind_of == "dpo" else HYPERPARAMETERS
    method = body.get("method") or {"type": "supervised"}
    hyper = dict(((method.get(kind_of) or {}).get("hyperparameters") or body.get("hyperparameters") or {}))
    for name, value in hyper.items():
        param = f"method.{kind_of}.hyperparameters.{name}"
        if name not in allowed:
            raise ApiError(400, f"Unknown hyperparameter: '{name}'", param=param)
        kind, low, high = allowed[name]
        number = isinstance(value, kind) and not isinstance(value, bool)
        open_low = name in ("learning_rate_multiplier", "beta")
        in_range = number and (low < value <= high if open_low else low <= value <= high)
        if value != "auto" and not in_range:
            raise ApiError(400, f"Invalid value for '{name}': {value!r}", param=param)
    return {k: hyper.get(k, "auto") for k in allowed}


def _check_suffix_and_metadata(body: dict[str, Any]) -> None:
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


def _job_object(job_id: str, body: dict[str, Any], model: str, train: StoredFile, hyper: dict[str, Any],
                seed: int, organization_id: str) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job", "id": job_id, "model": model, "created_at": int(time.time()),
        "finished_at": None, "fine_tuned_model": None, "organization_id": organization_id,
        "result_files": [], "status": "validating_files", "validation_file": body.get("validation_file"),
        "training_file": train.obj["id"], "hyperparameters": dict(hyper), "trained_tokens": None,
        "error": None, "user_provided_suffix": body.get("suffix"), "seed": seed, "estimated_finish": None,
        "integrations": [], "metadata": body.get("metadata"),
        "method": {"type": method_type(body), method_type(body): {"hyperparameters": dict(hyper)}},
    }


def create_job(api: FakeOpenAI, body: dict[str, Any], organization_id: str) -> dict[str, Any]:
    model = _check_model(api, body)
    check_job_allowed(api, model)
    train = _training_file(api, body)
    hyper = _hyperparameters(body)
    _check_suffix_and_metadata(body)
    with api.lock:
        seed = body.get("seed")
        if seed is None:
            seed = api.rng.randrange(2**31)
        api.jobs_created += 1
        job_id = api.new_id("ftjob-")
        obj = _job_object(job_id, body, model, train, hyper, seed, organization_id)
        examples = train.report.examples if train.report else 0
        tokens = sum(example_tokens(e) for e in train.examples)
        job = Job(obj, api.now(), api.jobs_created, examples, tokens, rng_seed=seed)
        fail = api.settings.fail
        if fail and (fail.nth is None or job.number in fail.nth):
            job.failure = fail
        api.jobs[job_id] = job
        event(api, job, f"Created fine-tuning job: {job_id}")
        event(api, job, f"Validating training file: {train.obj['id']}"
                        + (f" and validation file: {body['validation_file']}" if body.get("validation_file") else ""))
        return dict(obj)


def example_tokens(example: dict[str, Any]) -> int:
    """A chat example's tokens, or a preference pair's: its input and both outputs."""
    if isinstance(example, dict) and isinstance(example.get("input"), dict):
        outputs = [*(example.get("preferred_output") or []), *(example.get("non_preferred_output") or [])]
        return messages_tokens((example["input"].get("messages") or []) + outputs)
    return messages_tokens(example.get("messages") or []) if isinstance(example, dict) else 0


# ---- reading, listing, cancelling

def get_job(api: FakeOpenAI, job_id: str) -> Job:
    job = api.jobs.get(job_id)
    if job is None:
        raise ApiError(404, f"Could not find fine-tuning job {job_id}.", param="fine_tuning_job_id",
                       code="fine_tuning_job_not_found")
    advance(api, job)
    return job


def cancel(api: FakeOpenAI, job_id: str) -> dict[str, Any]:
    job = get_job(api, job_id)
    if job.obj["status"] in TERMINAL:
        raise ApiError(400, f"Job {job_id} has already {job.obj['status']}; it cannot be cancelled.",
                       param="fine_tuning_job_id")
    job.obj.update(status="cancelled", finished_at=int(time.time()), estimated_finish=None)
    event(api, job, "The job has been cancelled")
    return dict(job.obj)


def list_jobs(api: FakeOpenAI, query: dict[str, str]) -> dict[str, Any]:
    wanted = {k[len("metadata["):-1]: v for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")}
    items = []
    for job in reversed(list(api.jobs.values())):
        advance(api, job)
        metadata = job.obj["metadata"] or {}
        if all(metadata.get(k) == v for k, v in wanted.items()):
            items.append(dict(job.obj))
    return page(items, query, default_limit=20)


# ---- the state machine

def event(api: FakeOpenAI, job: Job, message: str, level: str = "info", data: dict[str, Any] | None = None,
          kind: str = "message") -> None:
    job.events.append({"object": "fine_tuning.job.event", "id": api.new_id("ftevent-"),
                       "created_at": int(time.time()), "level": level, "message": message,
                       "data": data or {}, "type": kind})


def fail(api: FakeOpenAI, job: Job, code: str, message: str, param: str | None) -> None:
    job.obj.update(status="failed", error={"code": code, "message": message, "param": param},
                   finished_at=int(time.time()), estimated_finish=None)
    event(api, job, message, level="error")
    event(api, job, "The job failed")


def advance(api: FakeOpenAI, job: Job) -> None:
    """Move the job along its schedule up to now, emitting what happened on the way."""
    s = api.settings
    now = api.now()
    obj = job.obj
    if obj["status"] == "validating_files" and now >= job.started + s.validating_s and not _validated(api, job):
        return
    run_start = job.started + s.validating_s + s.queued_s
    if obj["status"] == "queued" and now >= run_start:
        obj["status"] = "running"
        obj["estimated_finish"] = int(time.time() + s.running_s / max(s.speed, 1e-9))
        event(api, job, "Fine-tuning job started")
    if obj["status"] != "running":
        return
    done = min(1.0, (now - run_start) / s.running_s) if s.running_s > 0 else 1.0
    _train(api, job, target=math.floor(done * job.total_steps))


def _validated(api: FakeOpenAI, job: Job) -> bool:
    """End validating_files: fail on a bad file (or a failure planned at 0), else resolve the
    "auto" hyperparameters, plan the steps and queue the job."""
    obj = job.obj
    kind = obj["method"]["type"]
    for param, file_id in (("training_file", obj["training_file"]), ("validation_file", obj["validation_file"])):
        report = api.files[file_id].report_for(kind) if file_id else None
        if report is not None and report.errors:
            which = "training" if param == "training_file" else "validation"
            fail(api, job, f"invalid_{which}_file",
                 f"The job failed due to an invalid {which} file. " + "; ".join(report.problems()), param)
            return False
    if job.failure and job.failure.at <= 0:
        fail(api, job, job.failure.code, job.failure.message, job.failure.param)
        return False
    hyper = obj["hyperparameters"]
    n = max(job.train_examples, 1)
    if hyper["n_epochs"] == "auto":
        hyper["n_epochs"] = default_epochs(n)
    if hyper["batch_size"] == "auto":
        hyper["batch_size"] = max(1, min(256, round(n * 0.002)))
    if hyper["learning_rate_multiplier"] == "auto":
        hyper["learning_rate_multiplier"] = 1.8 if hyper["batch_size"] <= 4 else 2.0
    if kind == "dpo" and hyper.get("beta") == "auto":
        hyper["beta"] = 0.1
    obj["method"][kind]["hyperparameters"] = dict(hyper)
    job.steps_per_epoch = math.ceil(n / hyper["batch_size"])
    job.total_steps = job.steps_per_epoch * hyper["n_epochs"]
    job.metric_every = max(1, job.total_steps // max(1, api.settings.metrics_events))
    obj["status"] = "queued"
    event(api, job, "Files validated, moving job to queued state")
    return True


def _train(api: FakeOpenAI, job: Job, target: int) -> None:
    """Run the steps up to ``target``: metrics events, a checkpoint per epoch, a planned failure,
    success after the last step."""
    fail_step = max(1, math.ceil(job.failure.at * job.total_steps)) if job.failure else None
    while job.step < target:
        job.step += 1
        step = job.step
        if fail_step is not None and step >= fail_step:
            return fail(api, job, job.failure.code, job.failure.message, job.failure.param)
        if step % job.metric_every == 0 or step % job.steps_per_epoch == 0:
            _metrics_event(api, job, step)
        if step % job.steps_per_epoch == 0:
            checkpoint(api, job, step)
    if job.step >= job.total_steps:
        succeed(api, job)


def _metrics_event(api: FakeOpenAI, job: Job, step: int) -> None:
    m = metrics(job, step)
    validating = bool(job.obj["validation_file"])
    data = {"step": step, "train_loss": m["train_loss"], "train_mean_token_accuracy": m["train_mean_token_accuracy"],
            "total_steps": job.total_steps}
    text = f"Step {step}/{job.total_steps}: training loss={m['train_loss']:.4f}"
    if validating:
        data |= {"valid_loss": m["valid_loss"], "valid_mean_token_accuracy": m["valid_mean_token_accuracy"]}
        text += f", validation loss={m['valid_loss']:.4f}"
    if step % job.steps_per_epoch == 0 and validating:
        data |= {"full_valid_loss": m["full_valid_loss"],
                 "full_valid_mean_token_accuracy": m["full_valid_mean_token_accuracy"]}
        text += f", full validation loss={m['full_valid_loss']:.4f}"
    event(api, job, text, data=data, kind="metrics")


def metrics(job: Job, step: int) -> dict[str, float]:
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


def model_name(api: FakeOpenAI, job: Job) -> str:
    suffix = job.obj["user_provided_suffix"] or ""
    return f"ft:{job.obj['model']}:{api.settings.organization}:{suffix}:{job.obj['id'][-8:]}"


def checkpoint(api: FakeOpenAI, job: Job, step: int) -> None:
    m = metrics(job, step)
    name = f"{model_name(api, job)}:ckpt-step-{step}"
    job.checkpoints.append({
        "object": "fine_tuning.job.checkpoint", "id": api.new_id("ftckpt_"), "created_at": int(time.time()),
        "fine_tuned_model_checkpoint": name, "fine_tuning_job_id": job.obj["id"], "step_number": step,
        "metrics": {"step": float(step), "train_loss": m["train_loss"],
                    "train_mean_token_accuracy": m["train_mean_token_accuracy"],
                    "valid_loss": m["valid_loss"], "valid_mean_token_accuracy": m["valid_mean_token_accuracy"],
                    "full_valid_loss": m["full_valid_loss"],
                    "full_valid_mean_token_accuracy": m["full_valid_mean_token_accuracy"]},
    })
    del job.checkpoints[:-3]  # the API keeps the last three
    event(api, job, f"Checkpoint created at step {step} with Snapshot ID: {name}")


def _step_metrics_csv(job: Job) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"])
    has_valid = bool(job.obj["validation_file"])
    for step in range(1, job.total_steps + 1):
        m = metrics(job, step)
        writer.writerow([step, m["train_loss"], m["train_mean_token_accuracy"],
                         m["valid_loss"] if has_valid else "", m["valid_mean_token_accuracy"] if has_valid else ""])
    return buffer.getvalue().encode()


def succeed(api: FakeOpenAI, job: Job) -> None:
    result = store(api, "fine-tune-results", "step_metrics.csv", _step_metrics_csv(job))
    model = model_name(api, job)
    job.obj.update(status="succeeded", fine_tuned_model=model, finished_at=int(time.time()), estimated_finish=None,
                   result_files=[result["id"]], trained_tokens=job.train_tokens * job.obj["hyperparameters"]["n_epochs"])
    event(api, job, f"New fine-tuned model created: {model}")
    event(api, job, "The job has successfully completed")
