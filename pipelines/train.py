"""train (LoRA backend): a split -> a LoRA adapter for the base model, tracked, checkpointed,
resumable.

Read top to bottom, the recipe (`train`) is:

1. Pick the split (the newest unless named) and hash it with the config into a run id; a
   finished run with that id means there is nothing to do.
2. Render every example through the one prompt template as a conversational
   prompt/completion pair, so trl computes the loss on the assistant's answer only; check
   that the label mask is not empty (a template that hides the answer trains on nothing).
3. Load the base model (the cached conversion of the GGUF for SmolLM2) and wrap it with a
   peft LoRA config.
4. Train with trl's SFTTrainer (`pipelines.trainer`): length-grouped batches on a CPU (little
   padding, no attention across examples) or padding-free packing on a GPU with
   FlashAttention; checkpoints every N steps in a work folder, so a re-run after a crash
   resumes from the last one; validation loss every N steps with early stopping; MLflow
   tracking.
5. Write the run folder atomically: the adapter in PEFT's standard format with the tokenizer
   and chat template, training curves, the log history and the manifest.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipelines import tracking
from pipelines.clock import memory_peak_mb, restart_memory_peak
from pipelines.config import PipelineConfig
from pipelines.contracts import SplitManifest, read_manifest
from pipelines.models import base_model_id, local_model_dir
from pipelines.stage import Stage
from pipelines.storage import code_version, dumps, iter_jsonl, resolve_stage_output, write_bytes_atomic
from pipelines.template import render_messages

CONFIG_SECTIONS = ("train", "model", "output", "prompt")


class TrainError(RuntimeError):
    """A run that cannot start or finish; the message says why."""


@dataclass
class TrainResult:
    run_id: str
    path: Path
    manifest: dict[str, Any]
    skipped: bool
    trainer: Any = None  # the in-memory trainer, for callers that evaluate right away


class Progress:
    """The protocol of the CLI's rich progress bar; silent by default."""

    def start(self, total: int, done: int) -> None: ...
    def step(self, done: int) -> None: ...
    def log(self, logs: dict[str, float]) -> None: ...
    def stop(self) -> None: ...


# --------------------------------------------------------------------------- 1. the split and the run id


def resolve_split(config: PipelineConfig) -> Path:
    return resolve_stage_output(Path(config.split.output_dir), config.train.split, "split", "split", TrainError)


def read_split(config: PipelineConfig) -> tuple[Path, dict[str, Any]]:
    """The split this run trains on: its folder and its (validated) manifest."""
    split_path = resolve_split(config)
    return split_path, read_manifest(split_path / "manifest.json", SplitManifest)


def run_key_payload(config: PipelineConfig, split_manifest: dict[str, Any]) -> dict[str, Any]:
    """What the run id is a hash of: the split's files, the config, the base model, the code."""
    return {
        "split": split_manifest["id"],
        "split_files": split_manifest["files"],
        "config": config.section_hash(*CONFIG_SECTIONS),
        "base": base_model_id(config.model.base),
        "code": code_version(__name__),
    }


# --------------------------------------------------------------------------- 2. data


def prompt_completion(example: dict[str, Any], config: PipelineConfig) -> dict[str, Any]:
    """The one template, split where the model starts answering: trl then masks the prompt
    out of the loss (completion_only_loss)."""
    messages = render_messages(example, config.prompt, config.output)
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def load_sets(split_path: Path, config: PipelineConfig) -> tuple[Any, Any]:
    import datasets

    datasets.disable_progress_bars()
    out = []
    for name in ("train", "validation"):
        rows = [prompt_completion(e, config) for e in iter_jsonl(split_path / f"{name}.jsonl")]
        if name == "validation":
            # Validation loss does not depend on order; sorted by length, its batches carry
            # almost no padding (training batches are grouped by length by the sampler).
            rows.sort(key=lambda r: sum(len(m["content"]) for m in r["prompt"] + r["completion"]))
        out.append(datasets.Dataset.from_list(rows))
    return out[0], out[1]


def check_label_mask(dataset: Any, name: str) -> dict[str, int]:
    """Fail loudly when no token is trained on; count examples whose answer was cut off."""
    trained = empty = total = 0
    for labels in dataset["labels"]:
        n = sum(1 for x in labels if x != -100)
        trained += n
        total += len(labels)
        empty += n == 0
    if trained == 0:
        raise TrainError(
            f"every label of the {name} set is -100: the loss would be computed on nothing. The chat template "
            "probably does not separate the assistant's answer; check the tokenizer's chat_template."
        )
    return {"examples": len(dataset), "trained_tokens": trained, "tokens": total, "examples_without_answer": empty}


# --------------------------------------------------------------------------- 3-4. the trainer


@dataclass
class TokenMeter:
    """Counts what the batches hold: real tokens, padding, and tokens trained on."""

    real: int = 0
    padded: int = 0
    trained: int = 0
    window_real: int = 0
    window_started: float = field(default_factory=time.perf_counter)
    started: float = field(default_factory=time.perf_counter)

    def add(self, inputs: dict[str, Any]) -> None:
        ids = inputs["input_ids"]
        if "attention_mask" in inputs:
            real = int(inputs["attention_mask"].sum())
        elif "position_ids" in inputs:  # padding-free: one packed row, padding only at its end
            real = int((inputs["labels"] != -100).sum()) if "labels" in inputs else ids.numel()
            real = max(real, int((inputs["position_ids"] != 0).sum()))
        else:
            real = ids.numel()
        if not self.window_real:
            # A window starts at its first batch: validation and checkpoints since the last
            # log line (or the base model's validation before step 1) are not training time.
            self.window_started = time.perf_counter()
        self.real += real
        self.window_real += real
        self.padded += ids.numel()
        if "labels" in inputs:
            self.trained += int((inputs["labels"] != -100).sum())

    def window(self) -> dict[str, float]:
        now = time.perf_counter()
        rate = self.window_real / max(now - self.window_started, 1e-9)
        self.window_real, self.window_started = 0, now
        return {"tokens_per_second": round(rate, 1)}

    @property
    def padding_share(self) -> float:
        return 1 - self.real / self.padded if self.padded else 0.0


@dataclass
class Prepared:
    trainer: Any
    tokenizer: Any
    precision: str
    batching: str
    attention: str
    layers: list[int] | None
    n_layers: int
    max_steps: int
    mask: dict[str, Any]
    method: str = "sft"
    sft_phase: dict[str, Any] | None = None  # sft+dpo: what the SFT phase did
    pairs: dict[str, dict[str, int]] | None = None  # dpo, sft+dpo: pairs per set and source


def build_trainer(config: PipelineConfig, split_path: Path, work: Path, callbacks: list[Any]) -> Prepared:
    """Steps 2-4 up to the first optimizer step: data, model, LoRA, SFTTrainer, mask check."""
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    from pipelines import trainer as sft  # torch, transformers and trl: loaded when a run starts

    hf_logging.disable_progress_bar()  # no per-file "Loading weights" bars in a stage's output
    cfg = config.train
    base = sft.set_up_base(config, str(local_model_dir(config.model.base, with_weights=True)))
    train_set, validation_set = load_sets(split_path, config)
    max_steps, evaluate_each = sft.plan_steps(cfg, len(train_set), PartialState().num_processes)
    args = sft.training_arguments(cfg, str(work), max_steps, evaluate_each, base.precision, base.batching)
    trainer = sft.RefitSFTTrainer(model=base.model, args=args, train_dataset=train_set, eval_dataset=validation_set,
                                  processing_class=base.tokenizer, peft_config=base.lora, precision=base.precision,
                                  callbacks=list(callbacks) + sft.early_stopping(cfg))
    mask = {"train": check_label_mask(trainer.train_dataset, "train"),
            "validation": check_label_mask(trainer.eval_dataset, "validation")}
    return Prepared(trainer, base.tokenizer, base.precision, base.batching, base.attention, base.layers,
                    base.n_layers, max_steps, mask)


# --------------------------------------------------------------------------- the recipe


def train(config: PipelineConfig, *, force: bool = False, restart: bool = False, progress: Progress | None = None,
          callbacks: list[Any] | None = None, track: bool = True) -> TrainResult:
    """Steps 1-5. Raises TrainError with a message fit to show."""
    started = time.perf_counter()
    restart_memory_peak()
    split_path, split_manifest = read_split(config)
    stage = Stage.identify("train", "run", Path(config.train.output_dir), run_key_payload(config, split_manifest),
                           code_module=__name__)
    if not force and (done := stage.finished()) is not None:
        return TrainResult(stage.ident, stage.final, done, skipped=True)
    work = WorkFolder.open(stage, fresh=restart or force)
    mlflow_run = start_tracking(config, work, stage.ident, split_manifest) if track and work.is_main else None
    hooks = lora_callbacks(mlflow_run, progress or Progress()) + list(callbacks or [])
    if config.train.method == "sft":
        prepared = build_trainer(config, split_path, work.path, callbacks=hooks)
    else:  # dpo, sft+dpo: trl's DPOTrainer on the preference pairs (pipelines/train_dpo.py)
        from pipelines.train_dpo import build_dpo_trainer

        prepared = build_dpo_trainer(config, split_path, work, callbacks=hooks)
    if config.train.method == "sft":
        measure_base_model(prepared.trainer, work, mlflow_run)
    else:
        log_dpo_starting_point(prepared.trainer, work, mlflow_run)
    fit = run_training(prepared.trainer, work.path)
    if not work.is_main:  # under `accelerate launch` the main process writes the run
        return TrainResult(stage.ident, stage.final, {}, skipped=False, trainer=prepared.trainer)
    manifest = write_run(stage, config, split_path, split_manifest, prepared, fit, work.state, mlflow_run, started)
    finish_tracking(mlflow_run, stage, manifest, split_manifest)
    shutil.rmtree(work.path, ignore_errors=True)
    return TrainResult(stage.ident, stage.final, manifest, skipped=False, trainer=prepared.trainer)


@dataclass
class WorkFolder:
    """`.work-<run id>` beside the runs: checkpoints, and refit_state.json (the MLflow run id,
    the base model's validation loss), so a re-run after a crash resumes where it stopped."""

    path: Path
    state: dict[str, Any]
    is_main: bool  # under `accelerate launch`, only the main process writes

    @classmethod
    def open(cls, stage: Stage, *, fresh: bool) -> WorkFolder:
        """`fresh` (--restart, --force) starts from no checkpoint. The finished run folder, if
        any, stays until the new one replaces it."""
        from accelerate import PartialState

        # Under `accelerate launch` every process runs the recipe; the main one owns the
        # files and the MLflow run, the others only train.
        distributed = PartialState()
        work = stage.root / f".work-{stage.ident}"
        if fresh and distributed.is_main_process:
            shutil.rmtree(work, ignore_errors=True)
        distributed.wait_for_everyone()
        work.mkdir(parents=True, exist_ok=True)
        state_path = work / "refit_state.json"
        state = orjson.loads(state_path.read_bytes()) if state_path.exists() else {}
        return cls(work, state, distributed.is_main_process)

    def save(self) -> None:
        if self.is_main:
            write_bytes_atomic(self.path / "refit_state.json", orjson.dumps(self.state))


def start_tracking(config: PipelineConfig, work: WorkFolder, run_id: str, split_manifest: dict[str, Any]) -> str:
    cfg = config.train
    return tracking.open_run(config, run_id, work.state, work.save, {
        "split_id": split_manifest["id"], "dataset_id": split_manifest["dataset"]["id"],
        "base_model": config.model.base, "backend": "lora", "lora_r": cfg.lora.r, "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout, "lora_top_layers": cfg.lora.top_layers,
        "target_modules": ",".join(cfg.lora.target_modules), "learning_rate": cfg.learning_rate,
        "method": cfg.method, "dpo_beta": cfg.dpo.beta if cfg.method != "sft" else None,
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
        "max_length": cfg.max_length, "seed": cfg.seed, "precision": cfg.precision, "batching": cfg.batching,
    })


def lora_callbacks(mlflow_run: str | None, progress: Progress) -> list[Any]:
    from pipelines.trainer import FreedMemoryBack, MlflowMetrics, ProgressBar

    return [MlflowMetrics(mlflow_run), ProgressBar(progress), FreedMemoryBack()]


def measure_base_model(trainer: Any, work: WorkFolder, mlflow_run: str | None) -> None:
    """The base model's validation loss is the bar: a fresh LoRA adapter (B = 0) changes
    nothing, so evaluating before the first step measures the base model itself. Measured
    once per run; a resumed run keeps the first measurement."""
    if "base_eval_loss" in work.state:
        return
    work.state["base_eval_loss"] = float(trainer.evaluate()["eval_loss"])
    work.save()
    if mlflow_run:
        import mlflow

        mlflow.log_metric("base_eval_loss", work.state["base_eval_loss"], step=0, run_id=mlflow_run)


def log_dpo_starting_point(trainer: Any, work: WorkFolder, mlflow_run: str | None) -> None:
    """DPO's starting point, known without a validation pass: the policy starts as its
    reference (a fresh adapter, or the SFT adapter and its copy), so every pair's log-ratio is
    0, the rewards and their margin are 0 (accuracy counts chosen > rejected: 0), and the
    sigmoid loss is log 2. The first training step's loss shows it, measured. The pass this
    replaces took 38 s of the sample's train stage on a 2-core CPU."""
    if "base_eval_loss" in work.state:
        return
    work.state["base_eval_loss"] = math.log(2)
    work.save()
    trainer.log({"eval_loss": math.log(2), **{f"eval_rewards/{key}": 0.0 for key in
                                               ("chosen", "rejected", "margins", "accuracies")}})
    if mlflow_run:
        import mlflow

        mlflow.log_metric("base_eval_loss", math.log(2), step=0, run_id=mlflow_run)


@dataclass
class Fit:
    resumed_from: int | None
    mean_train_loss: float
    train_seconds: float
    final_eval_loss: float


def run_training(trainer: Any, work: Path) -> Fit:
    """Train from the last checkpoint in the work folder (or from the start)."""
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(str(work))
    train_started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - train_started
    return Fit(_step_of(checkpoint), float(result.training_loss), train_seconds, final_eval_loss(trainer))


def final_eval_loss(trainer: Any) -> float:
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if trainer.args.load_best_model_at_end and trainer.state.best_metric is not None:
        return float(trainer.state.best_metric)  # the best checkpoint is what we keep
    if evals and evals[-1]["step"] == trainer.state.global_step:
        return float(evals[-1]["eval_loss"])
    return float(trainer.evaluate()["eval_loss"])


# --------------------------------------------------------------------------- 5. the run folder


def write_run(stage: Stage, config: PipelineConfig, split_path: Path, split_manifest: dict[str, Any],
              prepared: Prepared, fit: Fit, state: dict[str, Any], mlflow_run: str | None,
              started: float) -> dict[str, Any]:
    """The run folder, swapped in whole (a --force rebuild keeps the old one until then)."""
    trainer, history = prepared.trainer, prepared.trainer.state.log_history
    with stage.commit() as tmp:
        trainer.model.save_pretrained(str(tmp / "adapter"))
        prepared.tokenizer.save_pretrained(str(tmp / "adapter"))
        _check_adapter(tmp / "adapter")
        (tmp / "log_history.json").write_bytes(dumps(history))
        plot_curves(history, state["base_eval_loss"], tmp / "curves.png")
        if prepared.method != "sft":
            from pipelines.train_dpo import plot_rewards

            plot_rewards(history, tmp / "rewards.png")
        manifest = stage.base_manifest(config, CONFIG_SECTIONS, backend="lora") | run_manifest(
            config, split_path, split_manifest, prepared, fit, state, mlflow_run, started)
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    return manifest


def run_manifest(config: PipelineConfig, split_path: Path, split_manifest: dict[str, Any], prepared: Prepared,
                 fit: Fit, state: dict[str, Any], mlflow_run: str | None, started: float) -> dict[str, Any]:
    """What the run records beyond the base manifest (see contracts.RunManifest)."""
    import torch

    trainer, meter, steps = prepared.trainer, prepared.trainer.meter, prepared.trainer.state
    train_losses = [h["loss"] for h in steps.log_history if "loss" in h]
    return {
        "method": prepared.method,
        **(preference_record(prepared, steps.log_history) if prepared.method != "sft" else {}),
        "split": {"id": split_manifest["id"], "path": str(split_path)},
        "dataset": split_manifest["dataset"],
        "base_model": {"name": config.model.base, "id": base_model_id(config.model.base), "layers": prepared.n_layers,
                       "parameters": sum(p.numel() for p in trainer.model.parameters())},
        "config": config.train.model_dump(mode="json"),
        "hardware": {"device": str(trainer.args.device), "precision": prepared.precision,
                     "batching": prepared.batching, "attention": prepared.attention,
                     "torch_threads": torch.get_num_threads()},
        "adapter": {"path": "adapter",
                    "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
                    "layers_to_transform": prepared.layers},
        "label_mask": prepared.mask,
        "steps": {"max": prepared.max_steps, "done": steps.global_step, "resumed_from": fit.resumed_from,
                  "early_stopped": steps.global_step < prepared.max_steps,
                  "best_checkpoint_step": _step_of(steps.best_model_checkpoint)},
        "losses": {
            "base_eval_loss": state["base_eval_loss"],
            "final_eval_loss": fit.final_eval_loss,
            "best_eval_loss": steps.best_metric,
            "final_train_loss": train_losses[-1] if train_losses else None,
            "mean_train_loss": fit.mean_train_loss,
        },
        "tokens": {"seen": int(steps.num_input_tokens_seen),
                   "trained_this_session": meter.trained,
                   "padding_share": round(meter.padding_share, 4),
                   "tokens_per_second": round(meter.real / max(fit.train_seconds, 1e-9), 1)},
        "timings": {"train_s": round(fit.train_seconds, 1), "total_s": round(time.perf_counter() - started, 1),
                    "peak_rss_mb": memory_peak_mb()},
        "mlflow": {"run_id": mlflow_run, "experiment": tracking.experiment_name(config)},
    }


def preference_record(prepared: Prepared, history: list[dict[str, Any]]) -> dict[str, Any]:
    """A DPO run's extras: its beta, the SFT phase (sft+dpo) and the last validation rewards."""
    from pipelines.train_dpo import reward_series

    return {"dpo": {"beta": prepared.trainer.args.beta, "sft_phase": prepared.sft_phase, "pairs": prepared.pairs,
                    "rewards": reward_series(history), "curves": "rewards.png"}}


def finish_tracking(mlflow_run: str | None, stage: Stage, manifest: dict[str, Any],
                    split_manifest: dict[str, Any]) -> None:
    tracking.finish_run(
        mlflow_run, "FINISHED", {"refit.run_id": stage.ident, "refit.split_id": split_manifest["id"],
                                 "refit.method": manifest["method"]},
        metrics={"final_eval_loss": manifest["losses"]["final_eval_loss"],
                 "padding_share": manifest["tokens"]["padding_share"],
                 "train_tokens_per_second": manifest["tokens"]["tokens_per_second"]},
        step=manifest["steps"]["done"],
        artifacts=[(stage.final / name, None) for name in ("curves.png", "rewards.png", "manifest.json")
                   if (stage.final / name).exists()])


def _step_of(checkpoint: str | None) -> int | None:
    return int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None


def _check_adapter(folder: Path) -> None:
    """The adapter must load in vLLM and friends: PEFT's two files, no modules_to_save."""
    config = json.loads((folder / "adapter_config.json").read_text())
    if not (folder / "adapter_model.safetensors").exists():
        raise TrainError("the adapter was not saved as adapter_model.safetensors")
    if config.get("modules_to_save"):
        raise TrainError(f"the adapter saves whole modules ({config['modules_to_save']}); vLLM cannot load that")


def plot_curves(history: list[dict[str, Any]], base_eval_loss: float, target: Path) -> None:
    tracking.plot_losses(
        target, "refit LoRA fine-tune",
        [("train loss", [(h["step"], h["loss"]) for h in history if "loss" in h],
          {"color": "#4c72b0", "alpha": 0.7}),
         ("validation loss", [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h],
          {"color": "#dd8452", "marker": "o"})],
        xlabel="optimizer step", ylabel="loss (assistant tokens)",
        baseline=(base_eval_loss, f"base model validation loss ({base_eval_loss:.3f})"))
