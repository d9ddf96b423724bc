"""retrain: curate -> split -> train -> eval -> promote, safe to run every night.

Read top to bottom:

1. One run per pipeline at a time: an flock on `<retrain.dir>/<name>.lock` that records the
   holder's pid, host and start time. A second run exits at once (EXIT_LOCKED, 75) naming the
   holder; a lock left by a killed run is taken over (the kernel released it with its holder).
2. curate. Every stage is skipped when its inputs and config are unchanged, so a re-run after
   a crash picks up where the last one stopped (train also resumes from its last checkpoint).
3. Enough new data? The curated examples are compared with the dataset the newest run was
   trained on; fewer than `retrain.min_new_examples` new ones (synthetic "I don't know" and
   general examples do not count) and nothing is trained.
4. split, train.
5. eval and promote, unless the run was already decided (registered from an eval with the
   same eval config): a night with no new logs ends here, in seconds, "nothing new".
6. The summary: JSON (`<retrain.dir>/<name>/last.json`, and one line per run appended to
   `summaries.jsonl`), one line on stdout (the CLI prints it), an optional webhook POST.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pipelines.config import PipelineConfig
from pipelines.exit_codes import RETRAIN_EXIT_CODES
from pipelines.storage import dumps, iter_jsonl, read_latest, write_bytes_atomic

# Examples made by curate rather than taken from a log: they follow the data, they are not news.
DERIVED_SOURCES = {"idk_synthetic", "general"}


def lock_path(config: PipelineConfig) -> Path:
    return Path(config.retrain.dir) / f"{config.name}.lock"


def summary_dir(config: PipelineConfig) -> Path:
    return Path(config.retrain.dir) / config.name


def _example_key(example: dict[str, Any]) -> str:
    text = f"{example.get('query', '')}\x1f{example.get('ideal_answer', '')}"
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def count_new_examples(dataset: Path, reference: Path | None) -> int:
    """Examples of `dataset` (taken from logs) whose question and ideal answer are not in
    `reference`; all of them when there is no reference to compare with."""
    seen: set[str] = set()
    if reference is not None:
        seen = {_example_key(e) for e in iter_jsonl(reference / "examples.jsonl")}
    return sum(1 for e in iter_jsonl(dataset / "examples.jsonl")
               if e.get("source") not in DERIVED_SOURCES and _example_key(e) not in seen)


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads((path / "manifest.json").read_bytes())
    except FileNotFoundError:
        return None


def decided_version(config: PipelineConfig, run_id: str) -> Any | None:
    """The registry version made from this run by an eval with today's eval config: the run
    was evaluated and promotion was decided (champion moved, or the gate refused it)."""
    from pipelines.registry import versions_of_run

    wanted = config.section_hash("eval", "prompt", "output")
    for version in reversed(versions_of_run(config, run_id)):
        if version.tags.get("refit.eval_config_hash") == wanted:
            return version
    return None


class Stages:
    """The stage functions, so a test can stand in for one (a crash in the middle)."""

    @staticmethod
    def curate(config: PipelineConfig, progress: Any) -> Any:
        from pipelines.curate import curate

        return curate(config, progress=progress)

    @staticmethod
    def split(config: PipelineConfig) -> Any:
        from pipelines.split import split

        return split(config)

    @staticmethod
    def train(config: PipelineConfig, progress: Any, assume_yes: bool) -> Any:
        if config.train.backend == "openai":
            from pipelines import train_openai

            return train_openai.train(config, assume_yes=assume_yes, confirm=None, progress=progress)
        from pipelines.train import train

        return train(config, progress=progress)

    @staticmethod
    def eval(config: PipelineConfig, progress: Any, log: Callable[[str], None]) -> Any:
        from evals.runner import evaluate

        return evaluate(config, progress=progress, log=log)

    @staticmethod
    def promote(config: PipelineConfig, eval_id: str) -> Any:
        from pipelines.registry import promote

        return promote(config, eval_id)


def _known_errors() -> tuple[type[BaseException], ...]:
    from evals.runner import EvalError
    from pipelines.models import ModelNotFound
    from pipelines.openai_format import FormatError
    from pipelines.registry import RegistryError
    from pipelines.split import SplitError
    from pipelines.storage import InputError
    from pipelines.train import TrainError

    return (InputError, FileNotFoundError, SplitError, FormatError, TrainError, EvalError, RegistryError,
            ModelNotFound)


def _new_summary(config: PipelineConfig, started: float) -> dict[str, Any]:
    return {
        "pipeline": config.name, "outcome": None, "exit_code": None, "message": None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "finished_at": None,
        "duration_s": None, "host": socket.gethostname(), "pid": os.getpid(), "stages": {},
        "data": None, "dataset": None, "split": None, "run": None, "eval": None, "gate": None, "version": None,
        "champion": None, "lock": {"path": str(lock_path(config))},
    }


def retrain(config: PipelineConfig, *, assume_yes: bool = False, progress: dict[str, Any] | None = None,
            log: Callable[[str], None] = lambda line: None, stages: type[Stages] = Stages) -> dict[str, Any]:
    """Run every stage that has work; return the summary (its `exit_code` is the process's)."""
    from pipelines.locks import LockHeld, describe, hold

    started = time.time()
    summary = _new_summary(config, started)
    try:
        with hold(lock_path(config), what="refit retrain") as lock:
            summary["lock"]["holder"] = lock.holder
            if (note := lock.took_over_note()) is not None:
                log(f"retrain: {note}")
                summary["lock"]["took_over"] = lock.took_over
            _run(config, summary, assume_yes=assume_yes, progress=progress or {}, log=log, stages=stages)
    except LockHeld as exc:
        summary["outcome"] = "locked"
        summary["lock"]["holder"] = exc.holder
        summary["message"] = f"another retrain of {config.name!r} is running: {describe(exc.holder)}"
    except _known_errors() as exc:
        summary["outcome"] = "error"
        summary["message"] = str(exc)
    except KeyboardInterrupt as exc:
        summary["outcome"] = "error"
        summary["message"] = f"interrupted{': ' + str(exc) if str(exc) else ''}; run it again to continue"
    except Exception as exc:  # noqa: BLE001 - a scheduler needs the summary whatever happened
        summary["outcome"] = "error"
        summary["message"] = f"{type(exc).__name__}: {exc}"
        summary["traceback"] = traceback.format_exc()
        log(summary["traceback"].rstrip())
    _finish(config, summary, started, log)
    return summary


def _finish(config: PipelineConfig, summary: dict[str, Any], started: float, log: Callable[[str], None]) -> None:
    """The exit code, the timings, the one line; then the webhook and the summary files."""
    summary["exit_code"] = RETRAIN_EXIT_CODES[summary["outcome"]]
    summary["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary["duration_s"] = round(time.time() - started, 2)
    summary["line"] = one_line(summary)
    summary["webhook"] = notify(config, summary, log)
    write_summary(config, summary)


def _stage(summary: dict[str, Any], name: str, started: float, ident: str | None, skipped: bool,
           log: Callable[[str], None], note: str = "") -> None:
    seconds = round(time.perf_counter() - started, 2)
    summary["stages"][name] = {"id": ident, "skipped": skipped, "seconds": seconds}
    log(f"retrain: {name}: {'nothing to do' if skipped else 'done'}{f' ({ident})' if ident else ''}"
        f"{'; ' + note if note else ''} [{seconds:.1f}s]")


def _run(config: PipelineConfig, summary: dict[str, Any], *, assume_yes: bool, progress: dict[str, Any],
         log: Callable[[str], None], stages: type[Stages]) -> None:
    """The steps of one retrain, in order; each returns early when the night's work is done."""
    cur = _curate(config, summary, progress, log, stages)
    latest_run, reference = _newest_run(config)
    if not _enough_new_data(config, summary, cur, latest_run, reference, log):
        # The newest run stays the candidate; finish it if a crash left it undecided.
        decided = decided_version(config, latest_run)
        if decided is not None:
            _not_trained(config, summary, cur, latest_run, reference, decided)
            return
        log(f"retrain: run {latest_run} was not evaluated and promoted yet; finishing it")
    else:
        latest_run = _split_and_train(config, summary, progress, log, stages, assume_yes)
        if latest_run is None:  # a non-main process under accelerate
            return
    summary["run"] = latest_run
    decided = decided_version(config, latest_run)
    if decided is not None:
        _already_decided(config, summary, cur.dataset_id, latest_run, decided, log)
        return
    ev = _eval(config, summary, progress, log, stages)
    _promote(config, summary, ev, latest_run, log, stages)


def _curate(config: PipelineConfig, summary: dict[str, Any], progress: dict[str, Any], log: Callable[[str], None],
            stages: type[Stages]) -> Any:
    t0 = time.perf_counter()
    cur = stages.curate(config, progress.get("curate"))
    summary["dataset"] = cur.dataset_id
    _stage(summary, "curate", t0, cur.dataset_id, cur.skipped, log)
    return cur


def _newest_run(config: PipelineConfig) -> tuple[str | None, dict[str, Any] | None]:
    """The newest run and the dataset it was trained on (None, None before the first run)."""
    runs_dir = Path(config.train.output_dir)
    latest_run = read_latest(runs_dir)
    run_manifest = _manifest(runs_dir / latest_run) if latest_run else None
    return latest_run, ((run_manifest.get("dataset") or {}) if run_manifest is not None else None)


def _enough_new_data(config: PipelineConfig, summary: dict[str, Any], cur: Any, latest_run: str | None,
                     reference: dict[str, Any] | None, log: Callable[[str], None]) -> bool:
    """Enough new examples since the newest run to train again? Always, before the first run
    and when the dataset is the one it was trained on (split and train then skip themselves)."""
    if reference is None:
        return True
    minimum = config.retrain.min_new_examples
    if reference.get("id") == cur.dataset_id:
        summary["data"] = {"dataset": cur.dataset_id, "reference": reference.get("id"), "new_examples": 0,
                           "min_new_examples": minimum}
        return True
    ref_path = Path(reference["path"]) if reference.get("path") else None
    if ref_path is not None and not (ref_path / "examples.jsonl").exists():
        log(f"retrain: the newest run's dataset {reference.get('id')} is gone; counting every example as new")
        ref_path = None
    new = count_new_examples(cur.path, ref_path)
    summary["data"] = {"dataset": cur.dataset_id, "reference": reference.get("id"), "new_examples": new,
                       "min_new_examples": minimum}
    log(f"retrain: {new} new example(s) since {reference.get('id')} (run {latest_run}); "
        f"{minimum} needed to train again")
    return new >= minimum


def _not_trained(config: PipelineConfig, summary: dict[str, Any], cur: Any, latest_run: str,
                 reference: dict[str, Any], decided: Any) -> None:
    """Too little new data, and the newest run is decided: the night ends here."""
    summary["run"] = latest_run
    new = summary["data"]["new_examples"]
    if new == 0:  # new log files (or a new refit) that bring no new example
        summary["outcome"] = "nothing_new"
        summary["message"] = (f"no new examples: {cur.dataset_id} adds none to {reference.get('id')}; run "
                              f"{latest_run} already decided as v{decided.version}")
    else:
        summary["outcome"] = "not_enough_new_data"
        summary["message"] = (f"{new} new example(s) in {cur.dataset_id}, fewer than retrain.min_new_examples="
                              f"{config.retrain.min_new_examples}; nothing trained")
    _registry_state(config, summary, decided)


def _split_and_train(config: PipelineConfig, summary: dict[str, Any], progress: dict[str, Any],
                     log: Callable[[str], None], stages: type[Stages], assume_yes: bool) -> str | None:
    """The new run's id; None in a non-main process under accelerate (the main one goes on)."""
    t0 = time.perf_counter()
    spl = stages.split(config)
    summary["split"] = spl.split_id
    _stage(summary, "split", t0, spl.split_id, spl.skipped, log)
    t0 = time.perf_counter()
    run = stages.train(config, progress.get("train"), assume_yes)
    if not run.manifest:
        return None
    _stage(summary, "train", t0, run.run_id, run.skipped, log)
    return run.run_id


def _already_decided(config: PipelineConfig, summary: dict[str, Any], dataset_id: str, latest_run: str,
                     decided: Any, log: Callable[[str], None]) -> None:
    """This run was evaluated and promotion decided with today's eval config: nothing new."""
    gate = decided.tags.get("refit.gate")
    summary["eval"] = decided.tags.get("refit.eval_id")
    failed = decided.tags.get("refit.gate_failed", "none")
    summary["gate"] = {"passed": gate == "passed", "failed": [r for r in failed.split(",") if r != "none"]}
    summary["stages"]["eval"] = {"id": summary["eval"], "skipped": True, "seconds": 0.0}
    summary["stages"]["promote"] = {"id": f"v{decided.version}", "skipped": True, "seconds": 0.0}
    log(f"retrain: eval, promote: nothing to do (run {latest_run} is v{decided.version}, gate {gate})")
    _registry_state(config, summary, decided)
    summary["outcome"] = "nothing_new"
    fresh = [name for name, st in summary["stages"].items() if not st["skipped"]]
    summary["message"] = (f"{'no new logs: ' if not fresh else ''}dataset {dataset_id}, run {latest_run} "
                          f"already decided as v{decided.version} (gate {gate})")


def _eval(config: PipelineConfig, summary: dict[str, Any], progress: dict[str, Any], log: Callable[[str], None],
          stages: type[Stages]) -> Any:
    t0 = time.perf_counter()
    ev = stages.eval(config, progress.get("eval"), log)
    gate = ev.report["gate"]
    summary["eval"] = ev.eval_id
    summary["gate"] = {"passed": gate["passed"], "failed": gate["failed"], "summary": gate["summary"]}
    _stage(summary, "eval", t0, ev.eval_id, ev.skipped, log, note=gate["summary"])
    return ev


def _promote(config: PipelineConfig, summary: dict[str, Any], ev: Any, latest_run: str, log: Callable[[str], None],
             stages: type[Stages]) -> None:
    t0 = time.perf_counter()
    result = stages.promote(config, ev.eval_id)
    _stage(summary, "promote", t0, f"v{result.version}", not result.created and not result.moves, log,
           note="; ".join(f"{m['alias']} {'v' + m['from_version'] if m['from_version'] else 'none'} -> "
                     f"v{m['to_version']}" for m in result.moves))
    summary["version"] = result.version
    summary["champion"] = {"before": result.champion_before, "after": result.champion_after}
    was = f"v{result.champion_before}" if result.champion_before else "none"
    if result.champion_moved:
        summary["outcome"] = "promoted"
        summary["message"] = (f"v{result.version} (run {latest_run}) is the champion"
                              f"{f' (was {was})' if result.champion_before else ''}; "
                              f"gate {ev.report['gate']['summary']}")
    elif result.refused:
        summary["outcome"] = "gate_failed"
        summary["message"] = (f"v{result.version} (run {latest_run}) registered as candidate; champion unchanged "
                              f"({was}): " + "; ".join(result.refused))
    else:
        summary["outcome"] = "nothing_new"
        summary["message"] = f"v{result.version} (run {latest_run}) is already the champion"


def _registry_state(config: PipelineConfig, summary: dict[str, Any], decided: Any | None) -> None:
    from pipelines.registry import CHAMPION, alias_version

    champion = alias_version(config, CHAMPION)
    current = str(champion.version) if champion is not None else None
    summary["version"] = str(decided.version) if decided is not None else None
    summary["champion"] = {"before": current, "after": current}


def one_line(summary: dict[str, Any]) -> str:
    return (f"refit retrain {summary['pipeline']}: {summary['outcome']} (exit {summary['exit_code']}, "
            f"{summary['duration_s']:.1f}s): {summary['message']}")


def write_summary(config: PipelineConfig, summary: dict[str, Any]) -> None:
    folder = summary_dir(config)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "summaries.jsonl", "ab") as handle:
        handle.write(orjson.dumps({k: v for k, v in summary.items() if k != "traceback"},
                                  option=orjson.OPT_SORT_KEYS) + b"\n")
    if summary["outcome"] != "locked":  # last.json describes the last run that ran
        write_bytes_atomic(folder / "last.json", dumps(summary))


def webhook_url(config: PipelineConfig) -> str | None:
    w = config.retrain.webhook
    return w.url or os.environ.get(w.url_env) or None


def notify(config: PipelineConfig, summary: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any] | None:
    """POST the summary; a failure is logged and recorded, never fatal."""
    url = webhook_url(config)
    w = config.retrain.webhook
    if not url or summary["outcome"] not in w.notify_on:
        return None
    host = urllib.parse.urlsplit(url).netloc or "?"  # never log the URL: it may carry a token
    body = orjson.dumps({"text": summary["line"], **{k: v for k, v in summary.items() if k != "traceback"}})
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "refit-retrain"})
    try:
        with urllib.request.urlopen(request, timeout=w.timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        log(f"retrain: webhook to {host} answered HTTP {exc.code}; carrying on")
        return {"host": host, "ok": False, "error": f"HTTP {exc.code}"}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        log(f"retrain: webhook to {host} failed ({reason}); carrying on")
        return {"host": host, "ok": False, "error": str(reason)}
    return {"host": host, "ok": True, "status": status}
