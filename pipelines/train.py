"""train (LoRA backend): a split -> a LoRA adapter for the base model, tracked, checkpointed,
resumable.

Read top to bottom, the recipe is:

1. Pick the split (the newest unless named) and hash it with the config into a run id; a
   finished run with that id means there is nothing to do.
2. Render every example through the one prompt template as a conversational
   prompt/completion pair, so trl computes the loss on the assistant's answer only; check
   that the label mask is not empty (a template that hides the answer trains on nothing).
3. Load the base model (the cached conversion of the GGUF for SmolLM2) and wrap it with a
   peft LoRA config.
4. Train with trl's SFTTrainer: length-grouped batches on a CPU (little padding, no
   attention across examples) or padding-free packing on a GPU with FlashAttention;
   checkpoints every N steps in a work folder, so a re-run after a crash resumes from the
   last one; validation loss every N steps with early stopping; MLflow tracking.
5. Write the run folder atomically: the adapter in PEFT's standard format with the tokenizer
   and chat template, training curves, the log history and the manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipelines.config import PipelineConfig
from pipelines.models import base_model_id, local_model_dir
from pipelines.storage import (
    atomic_dir,
    code_version,
    dumps,
    iter_jsonl,
    resolve_stage_output,
    set_latest,
    write_bytes_atomic,
)
from pipelines.template import render_messages


class TrainError(RuntimeError):
    """A run that cannot start or finish; the message says why."""


@dataclass
class TrainResult:
    run_id: str
    path: Path
    manifest: dict[str, Any]
    skipped: bool
    trainer: Any = None  # the in-memory trainer, for callers that evaluate right away


def resolve_split(config: PipelineConfig) -> Path:
    return resolve_stage_output(Path(config.split.output_dir), config.train.split, "split", "split", TrainError)


def run_key(config: PipelineConfig, split_manifest: dict[str, Any]) -> str:
    payload = orjson.dumps({
        "split": split_manifest["id"],
        "split_files": split_manifest["files"],
        "config": config.section_hash("train", "model", "output", "prompt"),
        "base": base_model_id(config.model.base),
        "code": code_version(),
    }, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- hardware choices


def choose_precision(config: PipelineConfig) -> str:
    import torch

    wanted = config.train.precision
    if wanted != "auto":
        return wanted
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:  # private helpers, but the only way torch exposes these CPU features
        if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
            return "bf16"
    except AttributeError:
        pass
    return "fp32"


def choose_batching(config: PipelineConfig) -> tuple[str, str]:
    """(batching, attention implementation)."""
    import importlib.util

    import torch

    wanted = config.train.batching
    flash = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    if wanted == "auto":
        wanted = "padding_free" if flash else "grouped"
    if wanted == "padding_free" and not flash:
        raise TrainError("train.batching: padding_free needs a GPU with FlashAttention (pip install flash-attn); "
                         "use grouped on this machine")
    return wanted, ("flash_attention_2" if wanted == "padding_free" else "sdpa")


# --------------------------------------------------------------------------- the trainer


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


def make_trainer_class() -> type:
    from trl import SFTTrainer

    class RefitSFTTrainer(SFTTrainer):
        """SFTTrainer that measures its batches (tokens/s, padding share)."""

        meter: TokenMeter
        eval_autocast: Any = None  # the dtype validation runs in, as training does

        def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                            ignore_keys: Any = None) -> Any:
            # The Trainer autocasts training steps only; validation in fp32 on a CPU is
            # several times slower than the training steps it checks.
            import torch

            with torch.autocast(self.args.device.type, dtype=self.eval_autocast or torch.float32,
                                enabled=self.eval_autocast is not None):
                return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            self.meter.add(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs.update(self.meter.window())
            super().log(logs, start_time)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            """Cross-entropy on the assistant's tokens, computing logits only where they are.

            The answer is a short band at the end of a long prompt, and the vocabulary is large:
            projecting every position to the vocabulary (as the default loss does, plus entropy
            and accuracy over all of them) costs more than the transformer layers on a CPU. The
            model is asked for the logits of the positions between the first and the last
            labelled token of the batch only (`logits_to_keep`); the normalisation follows
            trl's (tokens of the whole accumulated batch when the trainer passes it)."""
            import torch
            import torch.nn.functional as F

            labels = inputs["labels"]
            targets = labels[:, 1:]
            labelled = (targets != -100).nonzero(as_tuple=True)[1]
            if labelled.numel() == 0:
                low, high = targets.shape[1] - 1, targets.shape[1]
            else:
                low, high = int(labelled.min()), int(labelled.max()) + 1
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            outputs = model(**model_inputs, use_cache=False,
                            logits_to_keep=torch.arange(low, high, device=labels.device))
            logits = outputs.logits.float()
            band = targets[:, low:high]
            loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), band.reshape(-1),
                                       ignore_index=-100, reduction="sum")
            valid = band != -100
            n_tokens = valid.sum() if num_items_in_batch is None else num_items_in_batch
            loss = loss_sum / torch.as_tensor(n_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            mode = "train" if model.training else "eval"
            with torch.no_grad():
                correct = (logits.argmax(-1) == band)[valid].float()
                self._metrics[mode]["mean_token_accuracy"].append(float(correct.mean()) if correct.numel() else 0.0)
            return (loss, outputs) if return_outputs else loss

    return RefitSFTTrainer


def make_callbacks(mlflow_run: Any, progress: Any) -> list[Any]:
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        """Per-step train loss, validation loss and tokens/s into the MLflow run."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if mlflow_run is None or not state.is_world_process_zero or not logs:
                return
            import mlflow

            metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            mlflow.log_metrics(metrics, step=state.global_step, run_id=mlflow_run)

    class ProgressBar(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                progress.start(state.max_steps, state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.is_world_process_zero:
                progress.step(state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                progress.log(logs)

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            progress.stop()

    return [MlflowMetrics(), ProgressBar()]


class Progress:
    """The protocol of the CLI's rich progress bar; silent by default."""

    def start(self, total: int, done: int) -> None: ...
    def step(self, done: int) -> None: ...
    def log(self, logs: dict[str, float]) -> None: ...
    def stop(self) -> None: ...


# --------------------------------------------------------------------------- the stage


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


def build_trainer(config: PipelineConfig, split_path: Path, work: Path, callbacks: list[Any]) -> Prepared:
    """Steps 2-4 up to the first optimizer step: data, model, LoRA, SFTTrainer, mask check."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, EarlyStoppingCallback
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig

    hf_logging.disable_progress_bar()  # no per-file "Loading weights" bars in a stage's output
    cfg = config.train
    torch.manual_seed(cfg.seed)
    precision = choose_precision(config)
    batching, attention = choose_batching(config)

    # 2. Data through the one template.
    train_set, validation_set = load_sets(split_path, config)
    model_dir = local_model_dir(config.model.base, with_weights=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # 3. The base model and its LoRA wrapper.
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation=attention)
    n_layers = model.config.num_hidden_layers
    top = cfg.lora.top_layers
    layers = list(range(max(0, n_layers - top), n_layers)) if top and top < n_layers else None
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), layers_to_transform=layers,
                      bias="none", task_type="CAUSAL_LM")

    # 4. Train.
    from accelerate import PartialState

    # Under `accelerate launch` each optimizer step consumes a batch per process.
    world = PartialState().num_processes
    steps_per_epoch = math.ceil(len(train_set) / (cfg.batch_size * cfg.gradient_accumulation * world))
    if cfg.max_steps:
        max_steps = cfg.max_steps
        evaluate_each = min(cfg.eval_steps, max_steps)
    else:
        # Spread the evaluations evenly and end on one, so the last steps are never
        # trained blind (and the final validation loss needs no extra pass).
        planned = max(1, math.ceil(steps_per_epoch * cfg.epochs))
        n_evals = math.ceil(planned / cfg.eval_steps)
        evaluate_each = math.ceil(planned / n_evals)
        max_steps = evaluate_each * n_evals
    args = SFTConfig(
        output_dir=str(work),
        max_steps=max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=int(cfg.warmup_fraction * max_steps),
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        completion_only_loss=True,
        padding_free=batching == "padding_free",
        train_sampling_strategy="group_by_length" if batching == "grouped" else "random",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),  # lets bf16 autocast run on a CPU
        eval_strategy="steps",
        eval_steps=evaluate_each,
        save_strategy="steps",
        save_steps=evaluate_each if cfg.early_stopping_patience else cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=cfg.early_stopping_patience is not None,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        prediction_loss_only=True,  # validation needs the loss, not the logits of every token
        activation_checkpointing=cfg.activation_checkpointing,
    )
    all_callbacks = list(callbacks)
    if cfg.early_stopping_patience:
        all_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = make_trainer_class()(model=model, args=args, train_dataset=train_set, eval_dataset=validation_set,
                                   processing_class=tokenizer, peft_config=lora, callbacks=all_callbacks)
    # Progress is the caller's rich bar; the Trainer's own printer would dump raw dicts.
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.meter = TokenMeter()
    trainer.eval_autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mask = {"train": check_label_mask(trainer.train_dataset, "train"),
            "validation": check_label_mask(trainer.eval_dataset, "validation")}

    return Prepared(trainer, tokenizer, precision, batching, attention, layers, n_layers, max_steps, mask)


def start_tracking(config: PipelineConfig, state: dict[str, Any], state_path: Path, run_id: str,
                   split_manifest: dict[str, Any]) -> str:
    """The MLflow run of this training run: created once, re-opened by a resumed run."""
    import mlflow

    from pipelines import tracking

    cfg = config.train
    tracking.setup(config)
    if state.get("mlflow_run_id"):
        return state["mlflow_run_id"]
    run = mlflow.start_run(run_name=run_id)
    mlflow_run = run.info.run_id
    mlflow.end_run()
    state["mlflow_run_id"] = mlflow_run
    write_bytes_atomic(state_path, orjson.dumps(state))
    mlflow.log_params({
        "split_id": split_manifest["id"], "dataset_id": split_manifest["dataset"]["id"],
        "base_model": config.model.base, "backend": "lora", "lora_r": cfg.lora.r, "lora_alpha": cfg.lora.alpha,
        "lora_dropout": cfg.lora.dropout, "lora_top_layers": cfg.lora.top_layers,
        "target_modules": ",".join(cfg.lora.target_modules), "learning_rate": cfg.learning_rate,
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
        "max_length": cfg.max_length, "seed": cfg.seed, "precision": cfg.precision, "batching": cfg.batching,
    }, run_id=mlflow_run)
    return mlflow_run




def train(config: PipelineConfig, *, force: bool = False, restart: bool = False, progress: Progress | None = None,
          callbacks: list[Any] | None = None, track: bool = True) -> TrainResult:
    import torch
    from transformers.trainer_utils import get_last_checkpoint

    cfg = config.train
    progress = progress or Progress()
    started = time.perf_counter()

    # 1. The split, identity, and the no-op check.
    split_path = resolve_split(config)
    split_manifest = orjson.loads((split_path / "manifest.json").read_bytes())
    key = run_key(config, split_manifest)
    run_id = f"run-{key[:12]}"
    out_root = Path(cfg.output_dir)
    final = out_root / run_id
    if (final / "manifest.json").exists() and not force:
        set_latest(out_root, run_id)
        return TrainResult(run_id, final, orjson.loads((final / "manifest.json").read_bytes()), skipped=True)
    # Under `accelerate launch` every process runs this function; the main one owns the
    # files and the MLflow run, the others only train.
    from accelerate import PartialState

    distributed = PartialState()
    is_main = distributed.is_main_process
    work = out_root / f".work-{run_id}"
    if (restart or force) and is_main:
        shutil.rmtree(work, ignore_errors=True)
    if force and is_main:
        shutil.rmtree(final, ignore_errors=True)  # else the finished run would shadow the new one
    distributed.wait_for_everyone()
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "refit_state.json"
    state: dict[str, Any] = orjson.loads(state_path.read_bytes()) if state_path.exists() else {}

    mlflow_run = start_tracking(config, state, state_path, run_id, split_manifest) if track and is_main else None
    prepared = build_trainer(config, split_path, work, callbacks=make_callbacks(mlflow_run, progress) + list(callbacks or []))
    trainer, tokenizer, args = prepared.trainer, prepared.tokenizer, prepared.trainer.args
    precision, batching, attention = prepared.precision, prepared.batching, prepared.attention
    layers, n_layers, max_steps, mask = prepared.layers, prepared.n_layers, prepared.max_steps, prepared.mask

    # The base model's validation loss is the bar: a fresh LoRA adapter (B = 0) changes
    # nothing, so evaluating before the first step measures the base model itself.
    if "base_eval_loss" not in state:
        state["base_eval_loss"] = float(trainer.evaluate()["eval_loss"])
        if is_main:
            write_bytes_atomic(state_path, orjson.dumps(state))
        if mlflow_run:
            import mlflow

            mlflow.log_metric("base_eval_loss", state["base_eval_loss"], step=0, run_id=mlflow_run)
    checkpoint = get_last_checkpoint(str(work))
    resumed_from = int(checkpoint.rsplit("-", 1)[1]) if checkpoint else None
    train_started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - train_started
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if args.load_best_model_at_end and trainer.state.best_metric is not None:
        final_eval_loss = float(trainer.state.best_metric)  # the best checkpoint is what we keep
    elif evals and evals[-1]["step"] == trainer.state.global_step:
        final_eval_loss = float(evals[-1]["eval_loss"])
    else:
        final_eval_loss = float(trainer.evaluate()["eval_loss"])

    # 5. The run folder.
    history = trainer.state.log_history
    manifest: dict[str, Any] = {}
    if is_main:
        with atomic_dir(final) as tmp:
            trainer.model.save_pretrained(str(tmp / "adapter"))
            tokenizer.save_pretrained(str(tmp / "adapter"))
            _check_adapter(tmp / "adapter")
            (tmp / "log_history.json").write_bytes(dumps(history))
            plot_curves(history, state["base_eval_loss"], tmp / "curves.png")
            train_losses = [h["loss"] for h in history if "loss" in h]
            manifest = {
                "stage": "train",
                "backend": "lora",
                "id": run_id,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "code_version": code_version(),
                "config_hash": config.section_hash("train", "model", "output", "prompt"),
                "pipeline": config.name,
                "split": {"id": split_manifest["id"], "path": str(split_path)},
                "dataset": split_manifest["dataset"],
                "base_model": {"name": config.model.base, "id": base_model_id(config.model.base),
                               "layers": n_layers, "parameters": sum(p.numel() for p in trainer.model.parameters())},
                "config": cfg.model_dump(mode="json"),
                "hardware": {"device": str(trainer.args.device), "precision": precision, "batching": batching,
                             "attention": attention, "torch_threads": torch.get_num_threads()},
                "adapter": {"path": "adapter", "trainable_parameters": sum(p.numel() for p in trainer.model.parameters()
                                                                             if p.requires_grad),
                            "layers_to_transform": layers},
                "label_mask": mask,
                "steps": {"max": max_steps, "done": trainer.state.global_step, "resumed_from": resumed_from,
                          "early_stopped": trainer.state.global_step < max_steps,
                          "best_checkpoint_step": _step_of(trainer.state.best_model_checkpoint)},
                "losses": {
                    "base_eval_loss": state["base_eval_loss"],
                    "final_eval_loss": final_eval_loss,
                    "best_eval_loss": trainer.state.best_metric,
                    "final_train_loss": train_losses[-1] if train_losses else None,
                    "mean_train_loss": float(result.training_loss),
                },
                "tokens": {"seen": int(trainer.state.num_input_tokens_seen),
                           "trained_this_session": trainer.meter.trained,
                           "padding_share": round(trainer.meter.padding_share, 4),
                           "tokens_per_second": round(trainer.meter.real / max(train_seconds, 1e-9), 1)},
                "timings": {"train_s": round(train_seconds, 1), "total_s": round(time.perf_counter() - started, 1)},
                "mlflow": {"run_id": mlflow_run, "experiment": config.tracking.experiment or f"refit-{config.name}"},
            }
            (tmp / "manifest.json").write_bytes(dumps(manifest))
        if mlflow_run:
            import mlflow

            mlflow.log_metrics({"final_eval_loss": manifest["losses"]["final_eval_loss"],
                                "padding_share": manifest["tokens"]["padding_share"],
                                "train_tokens_per_second": manifest["tokens"]["tokens_per_second"]},
                               step=trainer.state.global_step, run_id=mlflow_run)
            mlflow.log_artifact(str(final / "curves.png"), run_id=mlflow_run)
            mlflow.log_artifact(str(final / "manifest.json"), run_id=mlflow_run)
            from mlflow.tracking import MlflowClient

            client = MlflowClient()
            client.set_tag(mlflow_run, "refit.run_id", run_id)
            client.set_tag(mlflow_run, "refit.split_id", split_manifest["id"])
            client.set_terminated(mlflow_run, "FINISHED")
        shutil.rmtree(work, ignore_errors=True)
        set_latest(out_root, run_id)
    return TrainResult(run_id, final, manifest, skipped=False, trainer=trainer)


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#4c72b0", alpha=0.7)
    if evals:
        ax.plot(*zip(*evals), label="validation loss", color="#dd8452", marker="o")
    ax.axhline(base_eval_loss, color="#55a868", linestyle="--", label=f"base model validation loss ({base_eval_loss:.3f})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("refit LoRA fine-tune")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
