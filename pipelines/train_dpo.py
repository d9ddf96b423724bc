"""train (LoRA backend), methods dpo and sft+dpo: trl's DPOTrainer on split's preference pairs.

- dpo: a fresh LoRA adapter is the policy; the reference is the base model itself, the
  adapter disabled (trl does this when it is given a peft config and no reference model), so
  no second copy of the weights is loaded.
- sft+dpo: the SFT phase runs first (the LoRA recipe of pipelines/train.py, checkpointed in
  `<work>/sft`), its adapter is saved in the work folder, and DPO continues training that
  adapter. trl keeps a frozen copy of the SFT adapter as the reference ("ref" adapter: a few
  MB of LoRA weights, not a copy of the model).

A pair is rendered by the one prompt template as a conversational prompt (system, user) and
two one-message completions, so the loss and the rewards cover the answer tokens only. The
same tracking, checkpoints, resume and early stopping as SFT; the curves add the reward
margins and accuracies (share of validation pairs whose chosen answer the policy prefers).
"""

from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.contrast_pairs import contrast_pairs
from pipelines.models import local_model_dir
from pipelines.storage import iter_jsonl
from pipelines.template import render_messages
from pipelines.train import Prepared, TrainError, WorkFolder

REWARD_KEYS = ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected")


def preference_row(pair: dict[str, Any], config: PipelineConfig) -> dict[str, Any]:
    prompt = render_messages(pair, config.prompt, config.output, with_answer=False)
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def load_pairs(split_path: Path, config: PipelineConfig) -> tuple[Any, Any, dict[str, dict[str, int]]]:
    """The train and validation pairs `train.dpo.pairs` asks for: the logged ones split wrote,
    and context-contrast pairs made from the set's own examples (pipelines/contrast_pairs.py)."""
    import datasets

    datasets.disable_progress_bars()
    wanted = config.train.dpo.pairs
    out, counts = [], {}
    for name in ("train", "validation"):
        pairs: list[dict[str, Any]] = []
        logged = split_path / f"{name}.preferences.jsonl"
        if "logged" in wanted and logged.exists():
            pairs += iter_jsonl(logged)
        if "contrast" in wanted:
            pairs += contrast_pairs(iter_jsonl(split_path / f"{name}.jsonl"), config)
        if not pairs:
            raise TrainError(f"train.method {config.train.method}: no {name} preference pairs of the kinds "
                             f"train.dpo.pairs asks for ({', '.join(wanted)}) in {split_path}; logged pairs need "
                             "behaviour failures with both the production response and a correction, contrast "
                             "pairs answers citing some of several documents (or use train.method: sft)")
        out.append(datasets.Dataset.from_list([preference_row(p, config) for p in pairs]))
        counts[name] = dict(sorted(Counter(p["source"] for p in pairs).items()))
    return out[0], out[1], counts


def sft_phase(config: PipelineConfig, split_path: Path, work: WorkFolder, callbacks: list[Any]) -> dict[str, Any]:
    """sft+dpo's first phase: the SFT recipe in `<work>/sft`, resumable; its adapter is kept
    in `<work>/sft-adapter` so a resumed run goes straight to DPO."""
    from pipelines import train as lora
    from pipelines import trainer as sft

    adapter = work.path / "sft-adapter"
    if "sft_phase" in work.state and (adapter / "adapter_config.json").exists():
        return work.state["sft_phase"]
    sft_work = WorkFolder(work.path / "sft", dict(work.state.get("sft_state", {})), work.is_main)
    sft_work.path.mkdir(parents=True, exist_ok=True)
    prepared = lora.build_trainer(config, split_path, sft_work.path, callbacks)
    lora.measure_base_model(prepared.trainer, sft_work, None)
    fit = lora.run_training(prepared.trainer, sft_work.path)
    prepared.trainer.model.save_pretrained(str(adapter))
    work.state["sft_phase"] = {"steps": prepared.trainer.state.global_step, "base_eval_loss":
                               sft_work.state["base_eval_loss"], "final_eval_loss": fit.final_eval_loss,
                               "mean_train_loss": fit.mean_train_loss, "train_s": round(fit.train_seconds, 1)}
    work.save()
    # The SFT model, optimizer and batches go before DPO loads its own model.
    del prepared, fit
    gc.collect()
    sft.return_freed_memory()
    return work.state["sft_phase"]


def build_dpo_trainer(config: PipelineConfig, split_path: Path, work: WorkFolder, callbacks: list[Any]) -> Prepared:
    """Data, model (with the SFT adapter for sft+dpo), DPOTrainer, up to the first step."""
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    from pipelines import trainer as sft

    hf_logging.disable_progress_bar()
    cfg = config.train
    sft_done = sft_phase(config, split_path, work, callbacks) if cfg.method == "sft+dpo" else None
    base = sft.set_up_base(config, str(local_model_dir(config.model.base, with_weights=True)))
    precision, attention, tokenizer, model = base.precision, base.attention, base.tokenizer, base.model
    train_set, validation_set, pair_counts = load_pairs(split_path, config)
    peft_config: Any = base.lora
    if sft_done is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(work.path / "sft-adapter"), is_trainable=True)
        peft_config = None  # trl copies the SFT adapter as the frozen reference
    dpo_cfg = cfg.model_copy(update={"epochs": cfg.dpo.epochs, "max_steps": cfg.dpo.max_steps,
                                     "batch_size": cfg.dpo.batch_size, "learning_rate": cfg.dpo.learning_rate})
    max_steps, evaluate_each = sft.plan_steps(dpo_cfg, len(train_set), PartialState().num_processes)
    args = sft.dpo_arguments(dpo_cfg, str(work.path), max_steps, evaluate_each, precision)
    trainer = sft.RefitDPOTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=validation_set,
                                  processing_class=tokenizer, peft_config=peft_config, precision=precision,
                                  callbacks=list(callbacks) + sft.early_stopping(cfg))
    mask = {"train": completion_counts(trainer.train_dataset), "validation": completion_counts(trainer.eval_dataset)}
    prepared = Prepared(trainer, tokenizer, precision, "padded", attention, base.layers, base.n_layers, max_steps, mask)
    prepared.method, prepared.sft_phase, prepared.pairs = cfg.method, sft_done, pair_counts
    return prepared


def completion_counts(dataset: Any) -> dict[str, int]:
    """The answer tokens each side trains on; a pair with an empty side trains on nothing."""
    chosen = [len(ids) for ids in dataset["chosen_ids"]]
    rejected = [len(ids) for ids in dataset["rejected_ids"]]
    if not any(chosen) or not any(rejected):
        raise TrainError("every chosen or rejected answer tokenized to nothing: the loss would be computed on "
                         "nothing; check the tokenizer's chat_template")
    return {"examples": len(chosen), "trained_tokens": sum(chosen) + sum(rejected),
            "tokens": sum(chosen) + sum(rejected) + sum(len(ids) for ids in dataset["prompt_ids"]) * 2,
            "examples_without_answer": sum(1 for c, r in zip(chosen, rejected) if not c or not r)}


def reward_series(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last validation reward metrics, for the manifest."""
    evals = [h for h in history if "eval_rewards/margins" in h]
    last = evals[-1] if evals else {}
    return {key.removeprefix("rewards/"): last.get(f"eval_{key}") for key in REWARD_KEYS}


def plot_rewards(history: list[dict[str, Any]], target: Path) -> None:
    from pipelines import tracking

    series = []
    for key, label, color in (("rewards/margins", "reward margin", "#4c72b0"),
                              ("rewards/accuracies", "reward accuracy", "#dd8452")):
        series.append((f"train {label}", [(h["step"], h[key]) for h in history if key in h],
                       {"color": color, "alpha": 0.5}))
        series.append((f"validation {label}", [(h["step"], h[f"eval_{key}"]) for h in history if f"eval_{key}" in h],
                       {"color": color, "marker": "o"}))
    tracking.plot_losses(target, "refit DPO: rewards", series, xlabel="optimizer step",
                         ylabel="beta x log-ratio (chosen - rejected); accuracy")
