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
   interactive confirmation. Then, before any upload, the base model must still exist on the
   endpoint and not be past its shutdown date (the models API; pipelines/openai_method.py).
3. Upload the train and validation files (purpose "fine-tune"; with `train.method: dpo` the
   preference files) and create the job: method "supervised" (or "dpo", with beta) with its
   hyperparameters, suffix, seed, the validation file, and metadata
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

The pieces: `pipelines.openai_api` (the endpoint, the key and its redaction, the client with
its retry policy) and `pipelines.openai_job` (the work folder's record of the job; upload,
create, follow, result files). This module is the recipe that strings them together.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson

from pipelines import tracking
from pipelines.config import OpenAITrainConfig, PipelineConfig
from pipelines.contracts import RunManifest, read_manifest
from pipelines.openai_api import Api, ApiFailure, Endpoint, read_api_key, resolve_endpoint
from pipelines.openai_api import Redactor as Redactor  # re-exported: imported from here by tests
from pipelines.openai_api import retry_after_seconds as retry_after_seconds  # re-exported, likewise
from pipelines.openai_format import default_epochs
from pipelines.openai_job import (
    ACTIVE,
    EVENTS,
    FILES,
    STATE,
    Follower,
    create_job,
    download_results,
    find_job,
    load_state,
    metric_points,
    record_job,
    run_lock,
    save_state,
    upload_files,
)
from pipelines.openai_method import (
    blocked_explanation,
    check_base_model,
    check_method,
    files,
    recorded,
    require_valid_file,
)
from pipelines.stage import Stage, content_key
from pipelines.storage import dumps, file_sha256
from pipelines.train import TrainError, TrainResult, read_split


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


def job_settings(cfg: OpenAITrainConfig, method: str = "sft", beta: float | None = None) -> dict[str, Any]:
    """The settings that define the job (and so the run id). The method is added only when
    it is not sft, so an SFT job started before methods existed keeps its run id."""
    settings = {"model": cfg.model, "n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
                "learning_rate_multiplier": cfg.learning_rate_multiplier, "suffix": cfg.suffix, "seed": cfg.seed}
    return settings if method == "sft" else settings | {"method": method, "beta": beta}


def run_key_payload(split_manifest: dict[str, Any], cfg: OpenAITrainConfig, endpoint: Endpoint,
                    method: str = "sft", beta: float | None = None) -> dict[str, Any]:
    """What defines the job. No code version on purpose: upgrading refit while a job runs must
    re-attach to it, never pay for a second one."""
    return {
        "backend": "openai",
        "split": split_manifest["id"],
        "split_files": {name: split_manifest["files"].get(name) for name in files(method).values()},
        "job": job_settings(cfg, method, beta),
        "endpoint": {"base_url": endpoint.base_url, "organization": endpoint.organization, "project": endpoint.project},
    }


def run_key(split_manifest: dict[str, Any], cfg: OpenAITrainConfig, endpoint: Endpoint, method: str = "sft",
            beta: float | None = None) -> str:
    return content_key(run_key_payload(split_manifest, cfg, endpoint, method, beta))


@dataclass
class Run:
    """Where a run lives and what identifies it."""

    split_path: Path
    split_manifest: dict[str, Any]
    endpoint: Endpoint
    stage: Stage
    method: str = "sft"

    @property
    def run_id(self) -> str:
        return self.stage.ident

    @property
    def final(self) -> Path:
        return self.stage.final

    @property
    def work(self) -> Path:
        return self.stage.root / f".work-{self.stage.ident}"


def locate(config: PipelineConfig) -> Run:
    split_path, split_manifest = read_split(config)
    endpoint = resolve_endpoint(config.train.openai)
    method = check_method(config)
    stage = Stage.identify("train", "run", Path(config.train.output_dir),
                           run_key_payload(split_manifest, config.train.openai, endpoint, method, config.train.dpo.beta),
                           code_module=__name__)
    return Run(split_path, split_manifest, endpoint, stage, method)


# --------------------------------------------------------------------------- 2. checks and the estimate


def preflight(split_path: Path, split_manifest: dict[str, Any], method: str = "sft") -> dict[str, Any]:
    """The method's files must have passed the format checks at split time, pass them now,
    and be the files split wrote. Returns the current reports."""
    checks = recorded(split_manifest, method)[0]
    reports = {}
    for name, filename in files(method).items():
        path = split_path / filename
        check = checks.get(name)
        if not check or not check.get("ok"):
            problems = "; ".join((check or {}).get("problems") or ["no format check recorded"])
            raise TrainError(f"split {split_manifest['id']}: {filename} did not pass OpenAI's format checks ({problems}); "
                             "fix the data and run `make split` again")
        if not path.exists():
            raise TrainError(f"split {split_manifest['id']}: {filename} is missing")
        report = require_valid_file(path, method)
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
    billing = recorded(split_manifest, config.train.method)[1]
    epochs = cfg.n_epochs if cfg.n_epochs != "auto" else default_epochs(billing["examples"])
    price = cfg.price_per_million_tokens if cfg.price_per_million_tokens is not None else billing["price_per_million_tokens"]
    billed = billing["tokens_per_epoch"] * epochs
    return {"model": cfg.model, "method": config.train.method, "examples": billing["examples"], "epochs": epochs,
            "epochs_source": "config" if cfg.n_epochs != "auto" else "OpenAI's default rule",
            "tokens_per_epoch": billing["tokens_per_epoch"], "billed_tokens": billed,
            "price_per_million_tokens": price, "estimated_cost": round(billed * price / 1e6, 4),
            "over_max_tokens": billing.get("over_max_tokens", 0),
            "tokenizer": "the base model's tokenizer (OpenAI's count differs a little)"}


def confirm_spend(estimate: dict[str, Any], *, assume_yes: bool, confirm: Confirm | None) -> None:
    if assume_yes:
        return
    if confirm is None:
        raise TrainError("refusing to start a paid fine-tuning job without a yes: pass --yes "
                         "(or set train.openai.assume_yes: true) in a non-interactive run")
    if not confirm(estimate):
        raise TrainError("not confirmed: nothing was uploaded and no job was created")


# --------------------------------------------------------------------------- the recipe


def train(config: PipelineConfig, *, force: bool = False, restart: bool = False, assume_yes: bool = False,
          confirm: Confirm | None = None, progress: Progress | None = None, track: bool = True) -> TrainResult:
    """Steps 1-5. Raises TrainError (an ApiFailure for API errors) with a message fit to show."""
    progress = progress or Progress()
    started = time.perf_counter()
    cfg = config.train.openai
    run = locate(config)
    if not force and (done := run.stage.finished()) is not None:
        return TrainResult(run.run_id, run.final, done, skipped=True)
    run.work.mkdir(parents=True, exist_ok=True)
    with run_lock(run.work):
        state = load_state(run.work)
        if force:
            adopt_finished_job(run, state)
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
    if restart and state.get("job_id"):
        forget_ended_job(api, run, state, progress)
    if not state.get("job_id") and state.get("job_create_sent"):
        recover_lost_create(api, run, state)
    if state.get("job_id"):
        progress.note(f"re-attaching to job {state['job_id']} (recorded in {run.work / STATE}); nothing new is paid for")
    else:
        start_job(config, run, state, api, assume_yes=assume_yes, confirm=confirm, progress=progress)
    job, follower = follow_job(config, run, state, api, track=track)
    if job["status"] != "succeeded":
        job_failed(run, state, api, job, follower.mlflow_run)
    manifest = write_run(config, run, state, job, follower, api, started)
    finish_tracking(follower.mlflow_run, run, manifest)
    shutil.rmtree(run.work, ignore_errors=True)
    return TrainResult(run.run_id, run.final, manifest, skipped=False)


def adopt_finished_job(run: Run, state: dict[str, Any]) -> None:
    """--force rebuilds the run folder from the recorded job; it never starts a new one. The
    old folder stays until the rebuilt one replaces it."""
    if not run.stage.manifest_path.exists():
        return
    previous = read_manifest(run.stage.manifest_path, RunManifest)
    state.update(files=previous["openai"]["uploads"], job_id=previous["openai"]["job_id"],
                 status=previous["openai"]["status"], mlflow_run_id=previous["mlflow"]["run_id"],
                 estimate=previous["openai"].get("estimate"))
    save_state(run.work, state)


def forget_ended_job(api: Api, run: Run, state: dict[str, Any], progress: Progress) -> None:
    """--restart: a failed, cancelled or vanished job is left behind (a new one is created);
    an active one is refused, since both would be paid for."""
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
        (run.work / EVENTS).unlink(missing_ok=True)
        save_state(run.work, state)
    elif job.status in ACTIVE:
        raise TrainError(f"--restart: job {job.id} is still {job.status}; a second job would be paid for too. "
                         "Stop it first with `refit train --backend openai --cancel`.")


def recover_lost_create(api: Api, run: Run, state: dict[str, Any]) -> None:
    """A previous run sent the create and died before recording the answer: find the job."""
    job = api.call("look up this run's job", find_job, api, run.run_id, state.get("discarded_jobs", []))
    if job is not None:
        record_job(run.work, state, job)


def start_job(config: PipelineConfig, run: Run, state: dict[str, Any], api: Api, *, assume_yes: bool,
              confirm: Confirm | None, progress: Progress) -> None:
    """Steps 2-3: the checks and the estimate before anything is uploaded, the yes, then the
    upload and the create, each id on disk the moment it exists."""
    preflight(run.split_path, run.split_manifest, run.method)
    state["estimate"] = estimate(config, run.split_manifest)
    progress.estimate(state["estimate"])
    confirm_spend(state["estimate"], assume_yes=assume_yes, confirm=confirm)
    # No request at all before the yes; then the model is looked up before anything is uploaded.
    state["base_model"] = check_base_model(api, config.train.openai.model)
    save_state(run.work, state)
    upload_files(api, state, run.work, run.split_path, run.run_id, files(run.method))
    try:
        job = create_job(api, config, state, run.work, run.run_id, run.split_manifest)
    except ApiFailure as exc:  # an organisation that may no longer fine-tune gets the why
        raise blocked_explanation(exc) or exc from None
    progress.note(f"created job {job.id} (recorded in {run.work / STATE})")


def follow_job(config: PipelineConfig, run: Run, state: dict[str, Any], api: Api, *,
               track: bool) -> tuple[dict[str, Any], Follower]:
    """Step 4, until the job ends. Ctrl-C and API failures leave the job running on the server."""
    tracker = (lambda: start_tracking(config, state, run)) if track else None
    follower = Follower(api, run.work, state, tracker)
    try:
        return follower.follow(state["job_id"], config.train.openai), follower
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


def job_failed(run: Run, state: dict[str, Any], api: Api, job: dict[str, Any], mlflow_run: str | None) -> NoReturn:
    """A failed or cancelled job: recorded, its MLflow run ended, and no run folder."""
    state["error"] = job.get("error")
    save_state(run.work, state)
    message = failure_message(job)
    tracking.finish_run(mlflow_run, "KILLED" if job["status"] == "cancelled" else "FAILED",
                        {"refit.error": api.redact(message)[:5000]})
    raise ApiFailure(api.redact(message), code=(job.get("error") or {}).get("code"))


# --------------------------------------------------------------------------- tracking


def start_tracking(config: PipelineConfig, state: dict[str, Any], run: Run) -> str:
    """The MLflow run of this training run: created once, re-opened by a re-attached run."""
    cfg = config.train.openai
    return tracking.open_run(config, run.run_id, state, lambda: save_state(run.work, state), {
        "split_id": run.split_manifest["id"], "dataset_id": run.split_manifest["dataset"]["id"], "backend": "openai",
        "base_model": cfg.model, "n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
        "learning_rate_multiplier": cfg.learning_rate_multiplier, "suffix": cfg.suffix, "seed": cfg.seed,
        "base_url": run.endpoint.base_url, "job_id": state.get("job_id"),
        "training_file": state["files"]["train"]["id"], "validation_file": state["files"]["validation"]["id"],
    }, tags={"refit.run_id": run.run_id})


def finish_tracking(mlflow_run: str | None, run: Run, manifest: dict[str, Any]) -> None:
    o, lo = manifest["openai"], manifest["losses"]
    results = [(run.final / e["path"], "results") for e in o["result_files"] if e.get("path")]
    tracking.finish_run(
        mlflow_run, "FINISHED",
        {"refit.split_id": run.split_manifest["id"], "refit.run_id": run.run_id, "openai.job_id": o["job_id"],
         "openai.fine_tuned_model": o["fine_tuned_model"] or ""},
        metrics={"final_eval_loss": lo["final_eval_loss"], "best_eval_loss": lo["best_eval_loss"],
                 "trained_tokens": o["trained_tokens"]},
        step=manifest["steps"]["done"] or 0,
        artifacts=[(run.final / "curves.png", None), (run.final / "manifest.json", None), *results])


# --------------------------------------------------------------------------- 5. the run folder


def plot_curves(points: list[dict[str, Any]], checkpoints: list[dict[str, Any]], target: Path, title: str) -> None:
    """The metric events' losses, plus the full validation loss of checkpoints that the
    events did not report."""
    reported = {p["step"] for p in points if isinstance(p.get("full_valid_loss"), (int, float))}
    points = points + [{"step": c["step_number"], "full_valid_loss": (c.get("metrics") or {}).get("full_valid_loss")}
                       for c in checkpoints if c["step_number"] not in reported]
    points.sort(key=lambda p: p["step"])
    styles = (("train_loss", "train loss", {"color": "#4c72b0", "alpha": 0.7}),
              ("valid_loss", "validation loss (batch)", {"color": "#dd8452", "alpha": 0.8}),
              ("full_valid_loss", "full validation loss", {"color": "#c44e52", "marker": "o", "linestyle": "none"}))
    series = [(label, [(p["step"], p[key]) for p in points if isinstance(p.get(key), (int, float))], style)
              for key, label, style in styles]
    tracking.plot_losses(target, title, series, xlabel="step", ylabel="loss",
                         note=None if points else "the job reported no metrics")


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




def write_run(config: PipelineConfig, run: Run, state: dict[str, Any], job: dict[str, Any], follower: Follower,
              api: Api, started: float) -> dict[str, Any]:
    """The run folder, swapped in whole (a --force rebuild keeps the old one until then)."""
    points = metric_points(follower.events)
    with run.stage.commit() as tmp:
        results = download_results(api, job, tmp)
        (tmp / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in follower.events))
        plot_curves(points, follower.checkpoints, tmp / "curves.png", f"refit OpenAI fine-tune ({job['id']})")
        key = run_key(run.split_manifest, config.train.openai, run.endpoint, run.method, config.train.dpo.beta)
        manifest = run.stage.base_manifest(config, backend="openai", config_hash=key) | {
            "method": run.method,
            "split": {"id": run.split_manifest["id"], "path": str(run.split_path)},
            "dataset": run.split_manifest["dataset"],
            "base_model": {"name": config.train.openai.model, "provider": "openai",
                           "shutdown_date": (state.get("base_model") or {}).get("shutdown_date")},
            "config": config.train.model_dump(mode="json"),
            "openai": job_record(config.train.openai, run.endpoint, state, job, follower, results),
            "losses": losses(points, follower.checkpoints),
            "steps": {"total": points[-1].get("total_steps") if points else None,
                      "done": int(points[-1]["step"]) if points else None},
            "tokens": {"trained": job.get("trained_tokens"),
                       "estimated_billed": (state.get("estimate") or {}).get("billed_tokens")},
            "timings": {"job_s": (job["finished_at"] - job["created_at"]) if job.get("finished_at") else None,
                        "followed_s": round(time.perf_counter() - started, 1)},
            "mlflow": {"run_id": follower.mlflow_run, "experiment": tracking.experiment_name(config)},
        }
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    return manifest


def job_record(cfg: OpenAITrainConfig, endpoint: Endpoint, state: dict[str, Any], job: dict[str, Any],
               follower: Follower, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's `openai` section: the job, the model it made, and how to reach it."""
    hyper = job.get("hyperparameters") or {}
    return {
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
        "method": job.get("method"),  # the resolved method, with its hyperparameters (dpo: beta)
        "requested_hyperparameters": {"n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
                                      "learning_rate_multiplier": cfg.learning_rate_multiplier},
        "suffix": job.get("user_provided_suffix"),
        "seed": job.get("seed"),
        "metadata": job.get("metadata"),
        "job_created_at": job.get("created_at"),
        "job_finished_at": job.get("finished_at"),
        "events": len(follower.events),
        "metric_events": len(metric_points(follower.events)),
        "checkpoints": [{"id": c["id"], "step": c["step_number"],
                         "fine_tuned_model_checkpoint": c["fine_tuned_model_checkpoint"],
                         "metrics": c.get("metrics")} for c in follower.checkpoints],
        "estimate": state.get("estimate"),
    }


# --------------------------------------------------------------------------- cancel


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
    if run.stage.manifest_path.exists():
        manifest = read_manifest(run.stage.manifest_path, RunManifest)
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
        tracking.setup(config)
        tracking.finish_run(state["mlflow_run_id"], "KILLED", {"refit.error": f"job {job_id} cancelled with --cancel"})
    return CancelResult(run.run_id, job_id, job.status, cancelled)
