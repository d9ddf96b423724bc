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
EXIT_GATE_FAILED = 3  # eval ran and the candidate did not pass the gate; promote refused to move champion
EXIT_LOCKED = 75  # retrain: another run of this pipeline holds the lock (EX_TEMPFAIL: try later)


@app.callback()
def refit() -> None:
    """refit: turn RAG failure logs into fine-tuned models that are proven better before they
    ship. Stages: curate, split, train, eval, promote; retrain runs them all; status, history
    and rollback look after the registry."""


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
    from pipelines.split import SplitError
    from pipelines.split import split as run_split

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


class OpenAIFollow:
    """The live view of an OpenAI fine-tuning job: status, steps, the latest losses, the
    checkpoints and the recent events; a plain line log when stderr is not a terminal."""

    COLORS = {"validating_files": "yellow", "queued": "yellow", "running": "cyan", "succeeded": "green",
              "failed": "red", "cancelled": "red"}

    def __init__(self) -> None:
        self.live: Any = None
        self.current: dict[str, Any] | None = None
        self.recent: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.started = time.monotonic()
        self.last_status: str | None = None
        self.last_tenth = -1

    def _print(self, text: Any) -> None:
        (self.live.console if self.live else console).print(text, highlight=False)

    def estimate(self, e: dict[str, Any]) -> None:
        self._print(f"OpenAI estimate for {e['model']}: {e['billed_tokens']:,} billed tokens ({e['epochs']} epochs, "
                    f"{e['epochs_source']}, x {e['tokens_per_epoch']:,} tokens of {e['examples']} examples) "
                    f"~ ${e['estimated_cost']:.2f} at ${e['price_per_million_tokens']:g}/1M tokens "
                    f"(counted with {e['tokenizer']})")
        if e["over_max_tokens"]:
            self._print(f"[yellow]warning:[/yellow] {e['over_max_tokens']} examples exceed the per-example token limit "
                        "and will be truncated")

    def note(self, text: str) -> None:
        from rich.text import Text

        self._print(Text(f"  {text}"))

    def retry(self, what: str, attempt: int, max_retries: int, wait: float, reason: str) -> None:
        from rich.text import Text

        self._print(Text.assemble(("  retry ", "yellow"), f"{what}: {reason}; again in {wait:.1f}s "
                                                          f"({attempt}/{max_retries})"))

    def job(self, job: dict[str, Any], new_events: list[dict[str, Any]], checkpoints: list[dict[str, Any]]) -> None:
        from rich.text import Text

        self.current, self.checkpoints = job, checkpoints
        for event in new_events:
            if event.get("type") == "metrics" and isinstance(event.get("data"), dict):
                self.metrics = event["data"]
        self.recent = (self.recent + [e for e in new_events if e.get("type") != "metrics"])[-6:]
        if console.is_terminal:
            if self.live is None:
                from rich.live import Live

                self.live = Live(self._render(), console=console, refresh_per_second=4)
                self.live.start()
            else:
                self.live.update(self._render())
        else:
            if job["status"] != self.last_status:
                self._print(Text(f"  job {job['id']}: {job['status']}"))
            for event in new_events:
                data = event.get("data") or {}
                if event.get("type") == "metrics" and isinstance(data, dict):
                    total = data.get("total_steps") or 0
                    tenth = int(10 * data.get("step", 0) / total) if total else 0
                    if tenth > self.last_tenth or data.get("step") == total:
                        self.last_tenth = tenth
                        self._print(Text(f"  {self._losses(data)}"))
                else:
                    self._print(Text(f"  [{event.get('level', 'info')}] {event.get('message', '')}"))
        self.last_status = job["status"]

    @staticmethod
    def _losses(m: dict[str, Any]) -> str:
        text = f"step {m.get('step')}/{m.get('total_steps', '?')}"
        for key, label in (("train_loss", "train loss"), ("valid_loss", "valid loss"),
                           ("full_valid_loss", "full valid loss")):
            if isinstance(m.get(key), (int, float)):
                text += f"  {label} {m[key]:.4f}"
        return text

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        job = self.current or {}
        status = job.get("status", "?")
        elapsed = int(time.monotonic() - self.started)
        rows: list[Any] = [Text.assemble(("OpenAI job ", "bold"), f"{job.get('id')}  ",
                                         (status, self.COLORS.get(status, "white")),
                                         f"  {job.get('model')}  {elapsed // 60}m{elapsed % 60:02d}s")]
        m = self.metrics
        if m.get("total_steps"):
            grid = Table.grid(padding=(0, 1))
            grid.add_row(ProgressBar(total=m["total_steps"], completed=m.get("step", 0), width=40),
                         Text(self._losses(m)))
            rows.append(grid)
        if self.checkpoints:
            table = Table("checkpoint step", "train loss", "valid loss", "full valid loss", "model", box=None,
                          header_style="bold")
            for c in self.checkpoints:
                cm = c.get("metrics") or {}
                fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
                table.add_row(str(c["step_number"]), fmt(cm.get("train_loss")), fmt(cm.get("valid_loss")),
                              fmt(cm.get("full_valid_loss")), c["fine_tuned_model_checkpoint"])
            rows.append(table)
        for event in self.recent:
            style = {"warn": "yellow", "error": "red"}.get(event.get("level", ""), "dim")
            rows.append(Text(f"  {event.get('message', '')}", style=style))
        return Group(*rows)

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self._render())
            self.live.stop()
            self.live = None


def _confirm_spend(estimate: dict[str, Any]) -> bool:
    return typer.confirm(f"Upload the split and start a paid fine-tuning job on {estimate['model']} "
                         f"(~${estimate['estimated_cost']:.2f})?", default=False, err=True)


def _train_openai(cfg: PipelineConfig, config: Path, *, force: bool, restart: bool, yes: bool, cancel: bool) -> None:
    """`refit train --backend openai`: run (or re-attach to) the job, or cancel it."""
    from rich.text import Text

    from pipelines import train_openai
    from pipelines.train import TrainError

    follow = OpenAIFollow()
    try:
        if cancel:
            c = train_openai.cancel(cfg, progress=follow)
            if c.cancelled:
                out.print(f"Cancelled job {c.job_id} of {c.run_id} (status: {c.status}).")
            else:
                out.print(f"Nothing to cancel: job {c.job_id} of {c.run_id} is already {c.status}.")
            return
        confirm = _confirm_spend if sys.stdin.isatty() else None
        result = train_openai.train(cfg, force=force, restart=restart, assume_yes=yes, confirm=confirm,
                                    progress=follow)
    except TrainError as exc:
        follow.stop()
        console.print(Text.assemble(("error: ", "red"), str(exc)), highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    except train_openai.Detached as exc:
        console.print(Text(exc.message, style="yellow"), highlight=False)
        raise typer.Exit(130) from None
    m = result.manifest
    o = m["openai"]
    if result.skipped:
        out.print(f"Nothing to do: split {m['split']['id']} was already fine-tuned with this config as {result.run_id} "
                  f"(job {o['job_id']}).")
    else:
        job_s = m["timings"]["job_s"]
        took = f" in {job_s // 60:.0f}m{job_s % 60:02.0f}s" if job_s is not None else ""
        tokens = f", {o['trained_tokens']:,} trained tokens" if o["trained_tokens"] else ""
        out.print(f"Fine-tuned {result.run_id} on OpenAI: job {o['job_id']} {o['status']}{took}{tokens}")
    out.print(f"  model:    {o['fine_tuned_model']}")
    losses = m["losses"]
    if losses["final_eval_loss"] is not None:
        out.print(f"  validation loss {losses['final_eval_loss']:.4f} (best {losses['best_eval_loss']:.4f}); "
                  f"{len(o['checkpoints'])} checkpoint(s)")
    out.print(f"Run:      {result.path}   (manifest.json, curves.png, events.jsonl, results/; "
              f"MLflow run {m['mlflow']['run_id']})")
    out.print(f"Next:     make eval   (or: refit eval --config {config})")


@app.command()
def train(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    backend: Annotated[str | None, typer.Option(help="lora or openai (default: train.backend).")] = None,
    split_id: Annotated[str | None, typer.Option("--split", help="Split id (default: the newest).")] = None,
    resume: Annotated[bool, typer.Option("--resume/--restart",
                                         help="Continue from the last checkpoint or the recorded job (default), or "
                                              "start over (openai: replace a failed or cancelled job).")] = True,
    force: Annotated[bool, typer.Option(help="Train again even if this run finished (openai: rebuild the run "
                                              "folder from the recorded job; never a second job).")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="openai: spend without asking (a non-interactive run "
                                                          "needs this or train.openai.assume_yes).")] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="openai: cancel the job recorded for this split and "
                                                          "config.")] = False,
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
    if cfg.train.backend == "openai":
        return _train_openai(cfg, config, force=force, restart=not resume, yes=yes, cancel=cancel)
    if cancel:
        console.print("[red]error:[/red] --cancel applies to the openai backend (a LoRA run stops with Ctrl-C "
                      "and resumes from its last checkpoint)", highlight=False)
        raise typer.Exit(EXIT_ERROR)
    from pipelines.train import TrainError
    from pipelines.train import train as run_train

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
    out.print(f"Next:     make eval   (or: refit eval --config {config})")


class EvalProgress:
    """A rich progress bar per contender over the prompts it must generate."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None

    def start(self, label: str, total: int) -> None:
        self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TimeElapsedColumn(), console=console, disable=not console.is_terminal)
        self.bar.start()
        self.task = self.bar.add_task(label, total=total)
        self.label, self.total, self.done, self.tenth, self.started = label, total, 0, 0, time.perf_counter()

    def advance(self, n: int) -> None:
        self.bar.update(self.task, advance=n)
        self.done += n
        if not console.is_terminal and int(10 * self.done / max(self.total, 1)) > self.tenth:
            # Off a terminal (make, cron, CI logs): a line every tenth instead of a bar.
            self.tenth = int(10 * self.done / max(self.total, 1))
            console.print(f"  {self.label}: {self.done}/{self.total} ({time.perf_counter() - self.started:.0f}s)",
                          highlight=False)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_verdict(report: dict[str, Any]) -> None:
    """The per-suite headline numbers and every gate rule, on stdout."""
    for name, suite in report["suites"].items():
        metric = suite["primary_metric"]
        means = ", ".join(f"{c} {v['metrics'][metric]['mean']:.3f}" for c, v in suite["contenders"].items()
                          if v["metrics"].get(metric, {}).get("mean") is not None)
        cmp = suite["comparisons"].get("baseline", {}).get(metric)
        delta = (f"; vs baseline {cmp['delta']:+.3f} [{cmp['low']:+.3f}, {cmp['high']:+.3f}]"
                 if cmp and cmp["n"] else "")
        out.print(f"  {name} (n={suite['n']}) {metric}: {means}{delta}", markup=False)
    gate = report["gate"]
    out.print(f"Gate: {gate['summary']}")
    for rule in gate["rules"]:
        out.print(f"  [{'pass' if rule['passed'] else 'FAIL'}] {rule['rule']}: {rule['detail']} "
                  f"(needs {rule['threshold']})", markup=False)


@app.command(name="eval")
def eval_(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    run: Annotated[str | None, typer.Option(help="Run id to evaluate (default: the newest).")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if this eval exists (the generation cache still applies).")] = False,
) -> None:
    """Evaluate the candidate against the prompt baseline and the champion; decide the gate.
    Exit 0: the gate passed; 3: it failed; 1: error; 2: bad config."""
    from evals.runner import EvalError, evaluate

    cfg = _load(config)
    if run:
        cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"run": run})})
    try:
        result = evaluate(cfg, force=force, progress=EvalProgress(), log=lambda line: console.print(line, highlight=False))
    except EvalError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_ERROR) from None
    report = result.report
    if result.skipped:
        out.print(f"Nothing to do: run {report['run']['id']} was already evaluated with these suites and config "
                  f"as {result.eval_id}.")
    else:
        out.print(f"Evaluated {report['run']['id']} against {', '.join(c for c in report['contenders'] if c != 'candidate')}"
                  f" -> {result.eval_id}")
    print_verdict(report)
    out.print(f"Report:   {result.path / 'report.html'}   (report.json, predictions/, manifest.json)")
    if report["gate"]["passed"]:
        out.print(f"Next:     make promote   (or: refit promote --config {config})")
    else:
        out.print("Next:     the champion stays; see the failed rules above and the report's wins and losses")
        raise typer.Exit(EXIT_GATE_FAILED)


# --------------------------------------------------------------------------- registry


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def _registry_error(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}", highlight=False)
    raise typer.Exit(EXIT_ERROR) from None


def _moves(moves: list[dict[str, Any]]) -> None:
    for m in moves:
        _say(f"  {m['alias']}: {'v' + m['from_version'] if m['from_version'] else 'none'} -> v{m['to_version']}"
                  f"   ({m['action']}, audit #{m['seq']})")


@app.command()
def promote(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    eval_id: Annotated[str | None, typer.Option("--eval", help="Eval id (default: the newest).")] = None,
    force: Annotated[bool, typer.Option(help="Move champion even though the gate failed (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gate is overridden; recorded in the audit log.")] = None,
) -> None:
    """Register the evaluated candidate (alias candidate); move champion to it if its gate passed.

    Exit 0: champion is this version; 3: champion not moved (the gate failed, or the champion
    moved since the eval); 1: error; 2: bad config or usage."""
    from pipelines import registry

    cfg = _load(config)
    if force and not (reason or "").strip():
        console.print('[red]error:[/red] --force needs --reason "...": the override goes in the audit log',
                      highlight=False)
        raise typer.Exit(EXIT_CONFIG)
    try:
        with console.status("registering"):
            result = registry.promote(cfg, eval_id, force=force, reason=reason)
    except registry.RegistryError as exc:
        _registry_error(exc)
    name = registry.model_name(cfg)
    verdict = "PASS" if result.passed else "FAIL"
    if result.created:
        _say(f"Registered {name} v{result.version} from {result.eval_id} (run {result.run_id}): gate {verdict}")
    else:
        _say(f"Already registered: {result.eval_id} is {name} v{result.version} (run {result.run_id}): "
                  f"gate {verdict}")
    _moves(result.moves)
    if result.is_champion:
        if result.forced:
            _say(f"  champion moved despite: {'; '.join(result.refused)}  (forced: {reason})")
        elif not result.champion_moved:
            _say(f"  champion: v{result.version} already")
        _say(f"Model card: {result.card}")
        _say(f"Next:     refit status   (undo: refit rollback --reason \"...\" --config {config})")
        return
    _say(f"  champion stays {'v' + result.champion_before if result.champion_before else 'unset'}: "
              + "; ".join(result.refused))
    for rule in result.failed_rules:
        _say(f"    [FAIL] {rule['rule']}: {rule['detail']} (needs {rule['threshold']})")
    _say(f"Model card: {result.card}")
    _say(f"To ship it anyway: refit promote --eval {result.eval_id} --force --reason \"...\" --config {config}")
    raise typer.Exit(EXIT_GATE_FAILED)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why; recorded in the audit log.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    version: Annotated[str | None, typer.Option(help="The version to make champion (default: the one the "
                                                     "current champion replaced).")] = None,
) -> None:
    """Move champion back to the previous champion (or --version N), audited."""
    from pipelines import registry

    cfg = _load(config)
    if not reason.strip():
        console.print('[red]error:[/red] --reason must say why', highlight=False)
        raise typer.Exit(EXIT_CONFIG)
    try:
        result = registry.rollback(cfg, reason=reason, version=version)
    except registry.RegistryError as exc:
        _registry_error(exc)
    _say(f"Rolled back {registry.model_name(cfg)}: champion v{result.from_version} -> v{result.to_version} "
              f"(run {result.run_id}; audit #{result.entry['seq']} by {result.entry['who']})")
    if result.run_missing:
        console.print(f"[yellow]warning:[/yellow] run {result.run_id} is not in {cfg.train.output_dir}; the next "
                      "eval needs it to compare against the champion", highlight=False)


@app.command()
def history(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    limit: Annotated[int | None, typer.Option(help="Only the last N moves.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Every alias move of this pipeline's model: when, who, from -> to, why, the report."""
    import orjson

    from pipelines import registry

    cfg = _load(config)
    entries = registry.history(cfg)
    if limit:
        entries = entries[-limit:]
    if as_json:
        for e in entries:
            _say(orjson.dumps(e, option=orjson.OPT_SORT_KEYS).decode())
        return
    if not entries:
        _say(f"No alias moves recorded for {registry.model_name(cfg)} yet (make promote registers one).")
        return
    for e in entries:
        frm = f"v{e['from_version']}" if e.get("from_version") else "none"
        to = f"v{e['to_version']}" if e.get("to_version") else "none"
        line = f"#{e['seq']:<3} {e['at']}  {e['alias']:<9} {frm:>5} -> {to:<5} {e['action']:<13} {e['who']}"
        _say(line)
        details = [f"why: {e['reason']}"] if e.get("reason") else []
        if e.get("overrode"):
            details.append(f"overrode: {'; '.join(e['overrode'])}")
        if e.get("report"):
            details.append(f"report: {e['report']}")
        for d in details:
            _say(f"       {d}")


@app.command()
def status(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json", help="The same, as JSON.")] = False,
) -> None:
    """The pipeline at a glance: newest dataset, split, run, eval verdict, champion and candidate."""
    import orjson

    from pipelines import registry

    cfg = _load(config)
    s = registry.status(cfg)
    if as_json:
        _say(orjson.dumps(s, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode())
        return
    p = _say
    p(f"Pipeline {s['pipeline']} (registered model {s['model']})")
    d = s.get("dataset")
    p(f"  dataset    {d['id']}: {d.get('examples', '?')} examples, decision {d.get('decision', '?')} "
      f"({d.get('created_at')})" if d else "  dataset    none yet (make curate)")
    sp = s.get("split")
    p(f"  split      {sp['id']}: train {sp['counts']['train']}, validation {sp['counts']['validation']}, "
      f"regression {sp['counts']['regression']} (from {sp['dataset']})" if sp and sp.get("counts")
      else "  split      none yet (make split)")
    r = s.get("run")
    if r:
        loss = f", validation loss {r['final_eval_loss']:.4f}" if isinstance(r.get("final_eval_loss"), float) else ""
        versions = f"; registered as {', '.join('v' + v for v in r['versions'])}" if r.get("versions") else ""
        older = "  [not the newest split: make train]" if sp and r.get("split") != sp["id"] else ""
        p(f"  run        {r['id']}: {r.get('backend', '?')} on {r.get('split')}{loss}{versions}{older}")
    else:
        p("  run        none yet (make train)")
    e = s.get("eval")
    if e and e.get("gate"):
        verdict = "PASS" if e["gate"]["passed"] else f"FAIL ({', '.join(e['gate']['failed'] or [])})"
        stale = "" if r and e.get("run") == r["id"] else "  [not the newest run: make eval]"
        p(f"  eval       {e['id']} of {e['run']}: gate {verdict}; {e.get('primary', '')}{stale}")
    else:
        p("  eval       none yet (make eval)")
    if s.get("registry_error"):
        p(f"  registry   unreachable: {s['registry_error']}")
    for alias in ("champion", "candidate"):
        v = s.get(alias)
        if v:
            forced = ", FORCED" if v.get("forced") else ""
            p(f"  {alias:<10} v{v['version']}: run {v['run_id']}, eval {v['eval_id']}, gate {v['gate']}{forced}")
        elif "registry_error" not in s:
            p(f"  {alias:<10} none" + (" (make promote)" if alias == "champion" else ""))
    last = s.get("last_champion_move")
    if last:
        p(f"             champion set {last['at']} by {last['who']} ({last['action']}): {last.get('reason') or ''}")
    if s.get("last_retrain"):
        lr = s["last_retrain"]
        p(f"  retrain    last: {lr['outcome']} (exit {lr['exit_code']}) at {lr['finished_at']}: {lr['message']}")


@app.command()
def retrain(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="openai backend: start paid jobs without asking.")] = False,
) -> None:
    """Every stage, curate to promote, each skipped when unchanged: for schedulers.

    Exit 0: promoted, nothing new, or not enough new data; 3: gate failed (champion unchanged);
    75: another retrain holds the lock; 1: error; 2: bad config. Prints one summary line."""
    import signal

    from pipelines.retrain import retrain as run_retrain

    cfg = _load(config)
    train_progress: Any = OpenAIFollow() if cfg.train.backend == "openai" else TrainProgress()

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    try:  # a scheduler's stop: recorded in the summary as interrupted, and the lock released
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        summary = run_retrain(
            cfg, assume_yes=yes, log=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
            progress={"curate": RateProgress("curate"), "train": train_progress, "eval": EvalProgress()})
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if isinstance(train_progress, OpenAIFollow):
            train_progress.stop()
    _say(summary["line"])
    raise typer.Exit(summary["exit_code"])


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
