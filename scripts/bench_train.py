"""Benchmark refit's LoRA training configuration against a plain padded HF Trainer.

    python scripts/bench_train.py              # 12 optimizer steps each, on the newest split
    python scripts/bench_train.py --steps 30

Same data (the split's train set, through the same prompt template and the same
assistant-only labels), same base model, same LoRA settings, same batch size, learning rate
and seed. What differs is what refit chooses: batches grouped by length, bf16 autocast where
the CPU has it, no gradient checkpointing, and a loss that projects only the answer's
positions onto the vocabulary. The reference is `transformers.Trainer` with a collator that
pads each random batch to its longest example, fp32, and the model's own loss over full
logits. Both are measured in this one run: tokens/s (real, non-padding tokens through the
model per second of training step, the first step excluded as warm-up), trained (answer)
tokens/s, the padding share, and the losses side by side. Target: >= 1.3x.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, int, int]] = []
            self.meter: Any = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.marks.append((time.perf_counter(), self.meter.real, self.meter.trained))

        def rates(self) -> tuple[float, float]:
            (t0, r0, l0), (t1, r1, l1) = self.marks[0], self.marks[-1]
            return (r1 - r0) / (t1 - t0), (l1 - l0) / (t1 - t0)

    return StepTimer()


def run_refit(config: Any, split_path: Path, work: Path, steps: int) -> dict[str, Any]:
    from pipelines.train import build_trainer

    timer = step_timer()
    prepared = build_trainer(config, split_path, work, callbacks=[timer])
    trainer = prepared.trainer
    timer.meter = trainer.meter
    trainer.train()
    real, trained = timer.rates()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    return {"tokens_per_s": real, "trained_tokens_per_s": trained, "padding": trainer.meter.padding_share,
            "final_train_loss": sum(losses[-3:]) / len(losses[-3:]), "eval_loss": evals[-1],
            "precision": prepared.precision, "batching": prepared.batching}


def run_plain(config: Any, split_path: Path, work: Path, steps: int) -> dict[str, Any]:
    """The straightforward version: Trainer, padded random batches, fp32, full-logit loss."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from pipelines.models import local_model_dir
    from pipelines.train import TokenMeter, build_trainer

    # The same tokenized examples and labels as refit's (taken from its prepared dataset).
    reference = build_trainer(config, split_path, work / "tokenize-only", callbacks=[]).trainer
    train_rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in reference.train_dataset]
    eval_rows = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in reference.eval_dataset]
    del reference
    model_dir = local_model_dir(config.model.base, with_weights=True)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    cfg = config.train
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    n_layers = model.config.num_hidden_layers
    top = cfg.lora.top_layers
    layers = list(range(n_layers - top, n_layers)) if top and top < n_layers else None
    model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=list(cfg.lora.target_modules),
                                             layers_to_transform=layers, task_type="CAUSAL_LM"))
    meter = TokenMeter()

    class MeteredTrainer(Trainer):
        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            meter.add(inputs)
            return super().training_step(model, inputs, num_items_in_batch)

    timer = step_timer()
    timer.meter = meter
    args = TrainingArguments(output_dir=str(work / "plain"), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
                             per_device_eval_batch_size=cfg.eval_batch_size, learning_rate=cfg.learning_rate,
                             lr_scheduler_type=cfg.lr_scheduler, warmup_steps=int(cfg.warmup_fraction * steps),
                             logging_steps=1, report_to="none", disable_tqdm=True, save_strategy="no",
                             seed=cfg.seed, use_cpu=not torch.cuda.is_available(), remove_unused_columns=False)
    trainer = MeteredTrainer(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                             data_collator=collate, callbacks=[timer])
    trainer.train()
    real, trained = timer.rates()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"tokens_per_s": real, "trained_tokens_per_s": trained, "padding": meter.padding_share,
            "final_train_loss": sum(losses[-3:]) / len(losses[-3:]), "eval_loss": trainer.evaluate()["eval_loss"],
            "precision": "fp32", "batching": "padded (random)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "pipelines/configs/default.yaml"))
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()

    import transformers

    from pipelines.config import load_config
    from pipelines.train import resolve_split

    transformers.logging.set_verbosity_error()
    config = load_config(args.config, overrides={"train.max_steps": args.steps, "train.eval_steps": args.steps,
                                                 "train.early_stopping_patience": None})
    try:
        split_path = resolve_split(config)
    except Exception as exc:  # noqa: BLE001 - a bench needs a split; say how to make one
        sys.exit(f"{exc}\n(run `make split` first)")
    print(f"split {split_path.name}, base model {config.model.base}, {args.steps} steps, "
          f"batch {config.train.batch_size}, LoRA r={config.train.lora.r} top_layers={config.train.lora.top_layers}, "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="refit-bench-train-") as tmp:
        refit = run_refit(config, split_path, Path(tmp) / "refit", args.steps)
        plain = run_plain(config, split_path, Path(tmp), args.steps)
    rows = [("refit", refit), ("plain padded Trainer", plain)]
    print(f"\n{'':22} {'tokens/s':>9} {'answer tok/s':>12} {'padding':>8} {'train loss':>10} {'val loss':>9}  setup")
    for name, r in rows:
        print(f"{name:22} {r['tokens_per_s']:9.0f} {r['trained_tokens_per_s']:12.0f} {r['padding']:8.1%} "
              f"{r['final_train_loss']:10.4f} {r['eval_loss']:9.4f}  {r['precision']}, {r['batching']}")
    print(f"\nspeed-up (tokens/s): {refit['tokens_per_s'] / plain['tokens_per_s']:.2f}x   (target >= 1.3x)")


if __name__ == "__main__":
    main()
