"""The `refit` command. Each stage is a thin wrapper: load the config, run the stage module,
print where its outputs are and what to run next. Make targets call these."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.config import ConfigError, PipelineConfig, load_config
from pipelines.storage import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="refit: RAG failure logs -> proven fine-tunes.")
console = Console(stderr=True)  # progress and diagnostics; results go to stdout
out = Console(highlight=False, soft_wrap=True)

DEFAULT_CONFIG = "pipelines/configs/default.yaml"
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML.")]

# Exit codes shared by every stage, so a scheduler can tell a bad config from a crash.
EXIT_ERROR = 1
EXIT_CONFIG = 2


@app.callback()
def refit() -> None:
    """refit: turn RAG failure logs into fine-tuned models that are proven better before they
    ship. Stages: curate, split, train, eval, promote."""


def _load(config: Path) -> PipelineConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]", markup=True, highlight=False)
        raise typer.Exit(EXIT_CONFIG) from None


class RateProgress:
    """A rich progress bar over input bytes, showing records per second."""

    def __init__(self, label: str):
        self.label = label
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TextColumn("{task.fields[records]} records, {task.fields[rate]}/s"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.task: Any = None
        self.started = 0.0

    def start(self, total_bytes: int) -> None:
        self.started = time.perf_counter()
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=total_bytes, records=0, rate="0")

    def advance(self, done_bytes: int, records: int) -> None:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.update(self.task, completed=done_bytes, records=f"{records:,}", rate=f"{records / elapsed:,.0f}")

    def stop(self) -> None:
        self.bar.stop()


@app.command()
def curate(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    input: Annotated[list[str] | None, typer.Option("--input", "-i", help="Override curate.inputs (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if this dataset exists.")] = False,
) -> None:
    """Read RAG logs; route, scrub, dedupe and write training examples + a RAG backlog."""
    from pipelines.curate import curate as run_curate

    cfg = _load(config)
    if input:
        cfg = cfg.model_copy(update={"curate": cfg.curate.model_copy(update={"inputs": list(input)})})
    progress = RateProgress("curate")
    try:
        result = run_curate(cfg, force=force, progress=progress)
    except (InputError, FileNotFoundError) as exc:
        if progress.task is not None:
            progress.stop()
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    m = result.manifest
    c = m["counts"]
    if result.skipped:
        out.print(f"Nothing to do: these inputs and this config were already curated as {result.dataset_id}.")
    else:
        seconds = m["timings"]["total_s"]
        out.print(f"Curated {c['read']:,} lines in {seconds:.1f}s ({c['read'] / max(seconds, 1e-9):,.0f} lines/s).")
    filtered = sum(c["filtered"].values())
    out.print(
        f"  kept {c['kept']}, backlog {c['backlog']}, quarantined {c['quarantined']}, filtered {filtered}; "
        f"+{sum(c['added'].values())} derived -> {c['examples']} examples"
    )
    out.print(f"  decision: {m['decision']['verdict']} ({m['decision']['why']})")
    out.print(f"Dataset:  {result.path}")
    out.print("  examples.jsonl, rag_backlog.jsonl, quarantine.jsonl, report.md, manifest.json")
    out.print(f"Next:     make split   (or: refit split --config {config})")


@app.command()
def split(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    dataset: Annotated[str | None, typer.Option(help="Curated dataset id (default: the newest).")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if this split exists.")] = False,
) -> None:
    """Split a curated dataset into train / validation, carry the frozen regression set
    forward, export and validate OpenAI chat files."""
    from pipelines.openai_format import FormatError
    from pipelines.split import SplitError, split as run_split

    cfg = _load(config)
    if dataset:
        cfg = cfg.model_copy(update={"split": cfg.split.model_copy(update={"dataset": dataset})})
    try:
        with console.status("splitting"):
            result = run_split(cfg, force=force)
    except (SplitError, FormatError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    m = result.manifest
    c = m["counts"]
    if result.skipped:
        out.print(f"Nothing to do: dataset {m['dataset']['id']} was already split with this config as {result.split_id}.")
    else:
        out.print(f"Split {m['dataset']['id']} -> {result.split_id}")
    r = m["regression"]
    out.print(f"  train {c['train']}, validation {c['validation']}, regression {c['regression']} "
              f"(carried forward {r['carried_forward']}, drawn {r['drawn']}, appended {r['appended']}; "
              f"{c['held_out_for_regression']} curated examples held out)")
    for name in ("train", "validation"):
        t = m["tokens"][name]
        out.print(f"  {name} tokens: mean {t['mean']}, median {t['median']}, p95 {t['p95']}, max {t['max']}, total {t['total']:,}")
    over = {k: v for k, v in m["over_max_seq_tokens"].items() if v}
    if over:
        console.print(f"[yellow]warning:[/yellow] examples over model.max_seq_tokens: {over}", highlight=False)
    b = m["openai"]["billing"]
    if b["over_max_tokens"]:
        console.print(f"[yellow]warning:[/yellow] {b['over_max_tokens']} train examples exceed the OpenAI per-example "
                      f"limit of {cfg.split.openai.max_tokens_per_example} tokens and will be truncated", highlight=False)
    out.print(f"  OpenAI format checks: passed ({m['openai']['format_checks']['train']['examples']} train, "
              f"{m['openai']['format_checks']['validation']['examples']} validation examples)")
    out.print(f"  OpenAI estimate: {b['billed_tokens']:,} billed tokens ({b['epochs']} epochs x {b['tokens_per_epoch']:,}) "
              f"~ ${b['estimated_cost']:.2f} at ${b['price_per_million_tokens']}/1M tokens (base-model tokenizer count)")
    p = m["prompt_tokens_per_query"]
    out.print(f"  prompt tokens per query: fine-tune {p['finetune']}, baseline {p['baseline']}")
    out.print(f"Split:    {result.path}")
    out.print(f"Next:     make train   (or: refit train --config {config})")


class TrainProgress:
    """A rich progress bar over optimizer steps, with the latest loss and tokens/s."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]train"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[rate]} tok/s"),
            TimeElapsedColumn(), console=console, disable=not console.is_terminal)
        self.task: Any = None

    def start(self, total: int, done: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=done, loss="-", val="-", rate="-")

    def step(self, done: int) -> None:
        self.bar.update(self.task, completed=done)

    def log(self, logs: dict[str, float]) -> None:
        fields = {}
        if "loss" in logs:
            fields["loss"] = f"{logs['loss']:.3f}"
        if "tokens_per_second" in logs:
            fields["rate"] = f"{logs['tokens_per_second']:,.0f}"
        if "eval_loss" in logs:
            fields["val"] = f"{logs['eval_loss']:.3f}"
            if not console.is_terminal:
                console.print(f"  step {logs.get('step', '')}: validation loss {logs['eval_loss']:.4f}")
        if self.task is not None:
            self.bar.update(self.task, **fields)

    def stop(self) -> None:
        self.bar.stop()


@app.command()
def train(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    backend: Annotated[str | None, typer.Option(help="lora or openai (default: train.backend).")] = None,
    split_id: Annotated[str | None, typer.Option("--split", help="Split id (default: the newest).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart",
                                         help="Continue from the last checkpoint (default) or start over.")] = True,
    force: Annotated[bool, typer.Option(help="Train again even if this run finished.")] = False,
) -> None:
    """Fine-tune on a split: a local LoRA adapter (default) or an OpenAI fine-tuning job."""
    cfg = _load(config)
    updates: dict[str, Any] = {}
    if backend:
        updates["backend"] = backend
    if split_id:
        updates["split"] = split_id
    if updates:
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=updates)})
    if cfg.train.backend != "lora":
        console.print(f"[red]error:[/red] backend {cfg.train.backend!r} is not available yet", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    from pipelines.train import TrainError, train as run_train

    try:
        result = run_train(cfg, force=force, restart=not resume, progress=TrainProgress())
    except TrainError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    m = result.manifest
    if not m:  # a non-main process under `accelerate launch`: the main one reports
        return
    if result.skipped:
        out.print(f"Nothing to do: split {m['split']['id']} was already trained with this config as {result.run_id}.")
    else:
        s, losses, t = m["steps"], m["losses"], m["tokens"]
        resumed = f", resumed from step {s['resumed_from']}" if s["resumed_from"] else ""
        stopped = " (early stopped)" if s["early_stopped"] else ""
        out.print(f"Trained {result.run_id}: {s['done']}/{s['max']} steps{stopped}{resumed} in {m['timings']['train_s']:.0f}s, "
                  f"{t['tokens_per_second']:,.0f} tokens/s, padding {t['padding_share']:.1%}")
    losses = m["losses"]
    verdict = "below" if losses["final_eval_loss"] < losses["base_eval_loss"] else "NOT below"
    out.print(f"  validation loss {losses['final_eval_loss']:.4f} ({verdict} the base model's {losses['base_eval_loss']:.4f})")
    out.print(f"Run:      {result.path}   (adapter/, curves.png, manifest.json; MLflow run {m['mlflow']['run_id']})")
    out.print(f"Next:     evaluate the adapter against the prompt baseline (the eval stage is not built yet);\n"
              f"          it loads with peft: PeftModel.from_pretrained(base_model, \"{result.path / 'adapter'}\")")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
