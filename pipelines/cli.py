"""The `refit` command. Each stage command is a thin wrapper: load the config (with its `--set`
overrides), run the stage module, print where its outputs are and what to run next. Make
targets call these. Progress widgets and printing helpers live in `pipelines/console.py`, the
exit codes in `pipelines/exit_codes.py`."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import yaml
from rich.text import Text

from pipelines.config import ConfigError, PipelineConfig, load_config
from pipelines.console import (
    EvalProgress,
    OpenAIFollow,
    RateProgress,
    TrainProgress,
    console,
    error,
    log_line,
    quiet_libraries,
    say,
    warn,
)
from pipelines.exit_codes import EXIT_CONFIG, EXIT_DETACHED, EXIT_ERROR, EXIT_GATE_FAILED
from pipelines.storage import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="refit: RAG failure logs -> proven fine-tunes.")

DEFAULT_CONFIG = "pipelines/configs/default.yaml"
ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Pipeline YAML.")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Override one config value, e.g. train.epochs=2 (the value is YAML); "
                                       "repeatable. Checked like the file.")]


@app.callback()
def refit() -> None:
    """refit: turn RAG failure logs into fine-tuned models that are proven better before they
    ship. Stages: curate, split, train, eval, promote; retrain runs them all; status, history
    and rollback look after the registry."""
    quiet_libraries()


# --------------------------------------------------------------------------- config and errors


def _setting(key: str, value: Any) -> str:
    """A flag's value as a `--set` override, quoted when YAML would read it as something else."""
    if isinstance(value, str):
        try:
            if yaml.safe_load(value) == value:
                return f"{key}={value}"
        except yaml.YAMLError:
            pass
    return f"{key}={json.dumps(value)}"


def _overrides(sets: list[str] | None, flags: dict[str, Any] | None = None) -> list[str]:
    """`--set` values, then the flags that set a config value (given ones only): a flag is an
    override like any other, so it is validated like the file."""
    return [*(sets or []), *(_setting(key, value) for key, value in (flags or {}).items() if value)]


def _load(config: Path, overrides: Sequence[str] = ()) -> PipelineConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        console.print(Text(str(exc), style="red"), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG) from None


def _fail(message: Any, code: int = EXIT_ERROR) -> NoReturn:
    error(message)
    raise typer.Exit(code) from None


@contextlib.contextmanager
def _stage_errors(*kinds: type[BaseException], progress: Any = None) -> Iterator[None]:
    """A stage's known errors end the command with one line and exit 1, not a traceback."""
    from pipelines.models import ModelNotFound

    try:
        yield
    except ModelNotFound as exc:  # model.base names no model: a config error, like the file's own
        if progress is not None:
            progress.stop()
        _fail(exc, EXIT_CONFIG)
    except kinds as exc:
        if progress is not None:
            progress.stop()
        _fail(exc)


# --------------------------------------------------------------------------- curate, split


@app.command()
def curate(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    input: Annotated[list[str] | None, typer.Option("--input", "-i", help="Override curate.inputs (repeatable).")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if this dataset exists.")] = False,
    set_: SetOption = None,
) -> None:
    """Read RAG logs; route, scrub, dedupe and write training examples + a RAG backlog."""
    from pipelines.curate import curate as run_curate
    from pipelines.curate_engine import EngineError

    cfg = _load(config, _overrides(set_, {"curate.inputs": list(input or [])}))
    progress = RateProgress("curate")
    with _stage_errors(InputError, FileNotFoundError, EngineError, progress=progress):
        result = run_curate(cfg, force=force, progress=progress)
    _show_curated(result)
    say(f"Next:     make split   (or: refit split --config {config})")


def _show_curated(result: Any) -> None:
    m = result.manifest
    c = m["counts"]
    if result.skipped:
        say(f"Nothing to do: these inputs and this config were already curated as {result.dataset_id}.")
    else:
        seconds = m["timings"]["total_s"]
        say(f"Curated {c['read']:,} lines in {seconds:.1f}s ({c['read'] / max(seconds, 1e-9):,.0f} lines/s).")
    filtered = sum(c["filtered"].values())
    say(f"  kept {c['kept']}, backlog {c['backlog']}, quarantined {c['quarantined']}, filtered {filtered}; "
        f"+{sum(c['added'].values())} derived -> {c['examples']} examples")
    say(f"  decision: {m['decision']['verdict']} ({m['decision']['why']})")
    say(f"Dataset:  {result.path}")
    say("  examples.jsonl, rag_backlog.jsonl, quarantine.jsonl, report.md, report.html, manifest.json")
    if m.get("preferences"):
        say(f"  preferences.jsonl: {m['preferences']['pairs']} logged preference pairs (for DPO with train.dpo.pairs: [logged])")


@app.command()
def split(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    dataset: Annotated[str | None, typer.Option(help="Curated dataset id (default: the newest).")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if this split exists.")] = False,
    set_: SetOption = None,
) -> None:
    """Split a curated dataset into train / validation, carry the frozen regression set
    forward, export and validate OpenAI chat files."""
    from pipelines.openai_format import FormatError
    from pipelines.split import SplitError
    from pipelines.split import split as run_split

    cfg = _load(config, _overrides(set_, {"split.dataset": dataset}))
    with _stage_errors(SplitError, FormatError), console.status("splitting"):
        result = run_split(cfg, force=force)
    _show_split(result, cfg)
    say(f"Split:    {result.path}")
    say(f"Next:     make train   (or: refit train --config {config})")


def _show_split(result: Any, cfg: PipelineConfig) -> None:
    m = result.manifest
    c, r, b = m["counts"], m["regression"], m["openai"]["billing"]
    if result.skipped:
        say(f"Nothing to do: dataset {m['dataset']['id']} was already split with this config as {result.split_id}.")
    else:
        say(f"Split {m['dataset']['id']} -> {result.split_id}")
    say(f"  train {c['train']}, validation {c['validation']}, regression {c['regression']} "
        f"(carried forward {r['carried_forward']}, drawn {r['drawn']}, appended {r['appended']}; "
        f"{c['held_out_for_regression']} curated examples held out)")
    for name in ("train", "validation"):
        t = m["tokens"][name]
        say(f"  {name} tokens: mean {t['mean']}, median {t['median']}, p95 {t['p95']}, max {t['max']}, "
            f"total {t['total']:,}")
    over = {k: v for k, v in m["over_max_seq_tokens"].items() if v}
    if over:
        warn(f"examples over model.max_seq_tokens: {over}")
    if b["over_max_tokens"]:
        warn(f"{b['over_max_tokens']} train examples exceed the OpenAI per-example limit of "
             f"{cfg.split.openai.max_tokens_per_example} tokens and will be truncated")
    checks = m["openai"]["format_checks"]
    say(f"  OpenAI format checks: passed ({checks['train']['examples']} train, "
        f"{checks['validation']['examples']} validation examples)")
    say(f"  OpenAI estimate: {b['billed_tokens']:,} billed tokens ({b['epochs']} epochs x {b['tokens_per_epoch']:,}) "
        f"~ ${b['estimated_cost']:.2f} at ${b['price_per_million_tokens']}/1M tokens (base-model tokenizer count)")
    if m.get("preferences"):
        pc = m["preferences"]["counts"]
        say(f"  preference pairs: train {pc['train']}, validation {pc['validation']} "
            f"({m['preferences']['held_out']} held out with the regression set)")
    p = m["prompt_tokens_per_query"]
    say(f"  prompt tokens per query: fine-tune {p['finetune']}, baseline {p['baseline']}")


# --------------------------------------------------------------------------- train


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
    set_: SetOption = None,
) -> None:
    """Fine-tune on a split: a local LoRA adapter (default) or an OpenAI fine-tuning job."""
    cfg = _load(config, _overrides(set_, {"train.backend": backend, "train.split": split_id}))
    if cfg.train.backend == "openai":
        return _train_openai(cfg, config, force=force, restart=not resume, yes=yes, cancel=cancel)
    if cancel:
        _fail("--cancel applies to the openai backend (a LoRA run stops with Ctrl-C and resumes from its last "
              "checkpoint)")
    from pipelines.train import TrainError
    from pipelines.train import train as run_train

    with _stage_errors(TrainError):
        result = run_train(cfg, force=force, restart=not resume, progress=TrainProgress())
    if not result.manifest:  # a non-main process under `accelerate launch`: the main one reports
        return
    _show_trained(result)
    say(f"Next:     make eval   (or: refit eval --config {config})")


def _show_trained(result: Any) -> None:
    m = result.manifest
    if result.skipped:
        say(f"Nothing to do: split {m['split']['id']} was already trained with this config as {result.run_id}.")
    else:
        s, t = m["steps"], m["tokens"]
        resumed = f", resumed from step {s['resumed_from']}" if s["resumed_from"] else ""
        stopped = " (early stopped)" if s["early_stopped"] else ""
        say(f"Trained {result.run_id}: {s['done']}/{s['max']} steps{stopped}{resumed} in {m['timings']['train_s']:.0f}s, "
            f"{t['tokens_per_second']:,.0f} tokens/s, padding {t['padding_share']:.1%}")
    losses = m["losses"]
    verdict = "below" if losses["final_eval_loss"] < losses["base_eval_loss"] else "NOT below"
    say(f"  validation loss {losses['final_eval_loss']:.4f} ({verdict} the base model's {losses['base_eval_loss']:.4f})")
    if m.get("dpo"):  # DPO: the starting loss is log 2, the policy being the reference
        r = m["dpo"]["rewards"]
        margin, accuracy = (f"{r[k]:.3f}" if isinstance(r.get(k), float) else r.get(k) for k in ("margins", "accuracies"))
        say(f"  method {m['method']} (beta {m['dpo']['beta']}): validation reward margin {margin}, "
            f"accuracy {accuracy} (rewards.png)")
        if pairs := m["dpo"].get("pairs"):
            say("  pairs: " + "; ".join(f"{name} " + ", ".join(f"{n} {source}" for source, n in by.items())
                                        for name, by in pairs.items()))
    say(f"Run:      {result.path}   (adapter/, curves.png, manifest.json; MLflow run {m['mlflow']['run_id']})")


def _confirm_spend(estimate: dict[str, Any]) -> bool:
    return typer.confirm(f"Upload the split and start a paid fine-tuning job on {estimate['model']} "
                         f"(~${estimate['estimated_cost']:.2f})?", default=False, err=True)


def _train_openai(cfg: PipelineConfig, config: Path, *, force: bool, restart: bool, yes: bool, cancel: bool) -> None:
    """`refit train --backend openai`: run (or re-attach to) the job, or cancel it."""
    from pipelines import train_openai
    from pipelines.train import TrainError

    follow = OpenAIFollow()
    try:
        with _stage_errors(TrainError, progress=follow):
            if cancel:
                c = train_openai.cancel(cfg, progress=follow)
                say(f"Cancelled job {c.job_id} of {c.run_id} (status: {c.status})." if c.cancelled
                    else f"Nothing to cancel: job {c.job_id} of {c.run_id} is already {c.status}.")
                return
            confirm = _confirm_spend if sys.stdin.isatty() else None
            result = train_openai.train(cfg, force=force, restart=restart, assume_yes=yes, confirm=confirm,
                                        progress=follow)
    except train_openai.Detached as exc:
        console.print(Text(exc.message, style="yellow"), highlight=False)
        raise typer.Exit(EXIT_DETACHED) from None
    _show_openai_trained(result)
    say(f"Next:     make eval   (or: refit eval --config {config})")


def _show_openai_trained(result: Any) -> None:
    m = result.manifest
    o = m["openai"]
    if result.skipped:
        say(f"Nothing to do: split {m['split']['id']} was already fine-tuned with this config as {result.run_id} "
            f"(job {o['job_id']}).")
    else:
        job_s = m["timings"]["job_s"]
        took = f" in {job_s // 60:.0f}m{job_s % 60:02.0f}s" if job_s is not None else ""
        tokens = f", {o['trained_tokens']:,} trained tokens" if o["trained_tokens"] else ""
        say(f"Fine-tuned {result.run_id} on OpenAI: job {o['job_id']} {o['status']}{took}{tokens}")
    say(f"  model:    {o['fine_tuned_model']}")
    losses = m["losses"]
    if losses["final_eval_loss"] is not None:
        say(f"  validation loss {losses['final_eval_loss']:.4f} (best {losses['best_eval_loss']:.4f}); "
            f"{len(o['checkpoints'])} checkpoint(s)")
    say(f"Run:      {result.path}   (manifest.json, curves.png, events.jsonl, results/; "
        f"MLflow run {m['mlflow']['run_id']})")


# --------------------------------------------------------------------------- eval


def _show_verdict(report: dict[str, Any]) -> None:
    """The per-suite headline numbers and every gate rule, on stdout."""
    for name, suite in report["suites"].items():
        metric = suite["primary_metric"]
        means = ", ".join(f"{c} {v['metrics'][metric]['mean']:.3f}" for c, v in suite["contenders"].items()
                          if v["metrics"].get(metric, {}).get("mean") is not None)
        cmp = suite["comparisons"].get("baseline", {}).get(metric)
        delta = (f"; vs baseline {cmp['delta']:+.3f} [{cmp['low']:+.3f}, {cmp['high']:+.3f}]"
                 if cmp and cmp["n"] else "")
        say(f"  {name} (n={suite['n']}) {metric}: {means}{delta}")
    gate = report["gate"]
    say(f"Gate: {gate['summary']}")
    for rule in gate["rules"]:
        say(f"  [{'pass' if rule['passed'] else 'FAIL'}] {rule['rule']}: {rule['detail']} (needs {rule['threshold']})")


@app.command(name="eval")
def eval_(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    run: Annotated[str | None, typer.Option(help="Run id to evaluate (default: the newest).")] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if this eval exists (the generation cache still applies).")] = False,
    set_: SetOption = None,
) -> None:
    """Evaluate the candidate against the prompt baseline and the champion; decide the gate.
    Exit 0: the gate passed; 3: it failed; 1: error; 2: bad config."""
    from evals.runner import EvalError, evaluate

    cfg = _load(config, _overrides(set_, {"eval.run": run}))
    with _stage_errors(EvalError):
        result = evaluate(cfg, force=force, progress=EvalProgress(), log=log_line)
    report = result.report
    if result.skipped:
        say(f"Nothing to do: run {report['run']['id']} was already evaluated with these suites and config "
            f"as {result.eval_id}.")
    else:
        others = ", ".join(c for c in report["contenders"] if c != "candidate")
        say(f"Evaluated {report['run']['id']} against {others} -> {result.eval_id}")
    _show_verdict(report)
    say(f"Report:   {result.path / 'report.html'}   (report.json, predictions/, manifest.json)")
    if report["gate"]["passed"]:
        say(f"Next:     make promote   (or: refit promote --config {config})")
    else:
        say("Next:     the champion stays; see the failed rules above and the report's wins and losses")
        raise typer.Exit(EXIT_GATE_FAILED)


# --------------------------------------------------------------------------- registry


@app.command()
def promote(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    eval_id: Annotated[str | None, typer.Option("--eval", help="Eval id (default: the newest).")] = None,
    force: Annotated[bool, typer.Option(help="Move champion even though the gate failed (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gate is overridden; recorded in the audit log.")] = None,
    set_: SetOption = None,
) -> None:
    """Register the evaluated candidate (alias candidate); move champion to it if its gate passed.

    Exit 0: champion is this version; 3: champion not moved (the gate failed, or the champion
    moved since the eval); 1: error; 2: bad config or usage."""
    from pipelines import registry

    cfg = _load(config, _overrides(set_))
    if force and not (reason or "").strip():
        _fail('--force needs --reason "...": the override goes in the audit log', EXIT_CONFIG)
    with _stage_errors(registry.RegistryError), console.status("registering"):
        result = registry.promote(cfg, eval_id, force=force, reason=reason)
    _show_promoted(result, registry.model_name(cfg), reason)
    say(f"Model card: {result.card}")
    if result.is_champion:
        say(f"Next:     refit status   (undo: refit rollback --reason \"...\" --config {config})")
        return
    say(f"To ship it anyway: refit promote --eval {result.eval_id} --force --reason \"...\" --config {config}")
    raise typer.Exit(EXIT_GATE_FAILED)


def _show_promoted(result: Any, name: str, reason: str | None) -> None:
    verdict = "PASS" if result.passed else "FAIL"
    if result.created:
        say(f"Registered {name} v{result.version} from {result.eval_id} (run {result.run_id}): gate {verdict}")
    else:
        say(f"Already registered: {result.eval_id} is {name} v{result.version} (run {result.run_id}): gate {verdict}")
    for m in result.moves:
        say(f"  {m['alias']}: {'v' + m['from_version'] if m['from_version'] else 'none'} -> v{m['to_version']}"
            f"   ({m['action']}, audit #{m['seq']})")
    if result.is_champion:
        if result.forced:
            say(f"  champion moved despite: {'; '.join(result.refused)}  (forced: {reason})")
        elif not result.champion_moved:
            say(f"  champion: v{result.version} already")
        return
    say(f"  champion stays {'v' + result.champion_before if result.champion_before else 'unset'}: "
        + "; ".join(result.refused))
    for rule in result.failed_rules:
        say(f"    [FAIL] {rule['rule']}: {rule['detail']} (needs {rule['threshold']})")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why; recorded in the audit log.")],
    config: ConfigOption = Path(DEFAULT_CONFIG),
    version: Annotated[str | None, typer.Option(help="The version to make champion (default: the one the "
                                                     "current champion replaced).")] = None,
    set_: SetOption = None,
) -> None:
    """Move champion back to the previous champion (or --version N), audited."""
    from pipelines import registry

    cfg = _load(config, _overrides(set_))
    if not reason.strip():
        _fail("--reason must say why", EXIT_CONFIG)
    with _stage_errors(registry.RegistryError):
        result = registry.rollback(cfg, reason=reason, version=version)
    say(f"Rolled back {registry.model_name(cfg)}: champion v{result.from_version} -> v{result.to_version} "
        f"(run {result.run_id}; audit #{result.entry['seq']} by {result.entry['who']})")
    if result.run_missing:
        warn(f"run {result.run_id} is not in {cfg.train.output_dir}; the next eval needs it to compare against "
             "the champion")


@app.command()
def history(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    limit: Annotated[int | None, typer.Option(help="Only the last N moves.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    set_: SetOption = None,
) -> None:
    """Every alias move of this pipeline's model: when, who, from -> to, why, the report."""
    import orjson

    from pipelines import registry

    cfg = _load(config, _overrides(set_))
    entries = registry.history(cfg)
    if limit:
        entries = entries[-limit:]
    if as_json:
        for e in entries:
            say(orjson.dumps(e, option=orjson.OPT_SORT_KEYS).decode())
    elif not entries:
        say(f"No alias moves recorded for {registry.model_name(cfg)} yet (make promote registers one).")
    else:
        for e in entries:
            _show_move(e)


def _show_move(e: dict[str, Any]) -> None:
    frm = f"v{e['from_version']}" if e.get("from_version") else "none"
    to = f"v{e['to_version']}" if e.get("to_version") else "none"
    say(f"#{e['seq']:<3} {e['at']}  {e['alias']:<9} {frm:>5} -> {to:<5} {e['action']:<13} {e['who']}")
    details = [f"why: {e['reason']}"] if e.get("reason") else []
    if e.get("overrode"):
        details.append(f"overrode: {'; '.join(e['overrode'])}")
    if e.get("report"):
        details.append(f"report: {e['report']}")
    for d in details:
        say(f"       {d}")


@app.command()
def status(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    as_json: Annotated[bool, typer.Option("--json", help="The same, as JSON.")] = False,
    set_: SetOption = None,
) -> None:
    """The pipeline at a glance: newest dataset, split, run, eval verdict, champion and candidate."""
    import orjson

    from pipelines import status as pipeline_status

    found = pipeline_status.gather(_load(config, _overrides(set_)))
    if as_json:
        say(orjson.dumps(found, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode())
        return
    for line in pipeline_status.lines(found):
        say(line)


# --------------------------------------------------------------------------- retrain


@app.command()
def retrain(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="openai backend: start paid jobs without asking.")] = False,
    set_: SetOption = None,
) -> None:
    """Every stage, curate to promote, each skipped when unchanged: for schedulers.

    Exit 0: promoted, nothing new, or not enough new data; 3: gate failed (champion unchanged);
    75: another retrain holds the lock; 1: error; 2: bad config. Prints one summary line."""
    from pipelines.retrain import retrain as run_retrain

    cfg = _load(config, _overrides(set_))
    train_progress: Any = OpenAIFollow() if cfg.train.backend == "openai" else TrainProgress()
    try:
        with _sigterm_as_interrupt():
            summary = run_retrain(cfg, assume_yes=yes, log=log_line, progress={
                "curate": RateProgress("curate"), "train": train_progress, "eval": EvalProgress()})
    finally:
        if isinstance(train_progress, OpenAIFollow):
            train_progress.stop()
    say(summary["line"])
    raise typer.Exit(summary["exit_code"])


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A scheduler's stop (SIGTERM) as Ctrl-C: recorded in the summary as interrupted, and the
    lock released."""
    import signal

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
