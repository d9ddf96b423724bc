"""`refit status`: the newest output of every stage, the registry's aliases and the last
retrain, gathered (`gather`) and then written as lines (`lines`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import orjson

from pipelines.config import PipelineConfig
from pipelines.registry import (
    CANDIDATE,
    CHAMPION,
    TAG_EVAL,
    TAG_RUN,
    alias_version,
    client,
    fmt_primary,
    history,
    model_name,
    versions_of_run,
)
from pipelines.storage import read_latest


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads((folder / "manifest.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _describe_version(v: Any) -> dict[str, Any]:
    return {"version": str(v.version), "run_id": v.tags.get(TAG_RUN), "eval_id": v.tags.get(TAG_EVAL),
            "gate": v.tags.get("refit.gate"), "primary": v.tags.get("refit.primary"),
            "dataset_id": v.tags.get("refit.dataset_id"), "forced": v.tags.get("refit.forced") == "true",
            "method": v.tags.get("refit.method"), "shutdown_date": v.tags.get("refit.openai_shutdown_date"),
            "source": v.source}


SHUTDOWN_WARNING_DAYS = 30


def shutdown_warning(version: dict[str, Any], today: dt.date | None = None) -> str | None:
    """A warning when an OpenAI champion's base model shuts down within 30 days (or has)."""
    raw = version.get("shutdown_date")
    if not raw:
        return None
    try:
        date = dt.date.fromisoformat(str(raw)[:10])
    except ValueError:
        return None
    days = (date - (today or dt.datetime.now(dt.UTC).date())).days
    if days > SHUTDOWN_WARNING_DAYS:
        return None
    when = f"shut down on {date.isoformat()}" if days <= 0 else f"shuts down on {date.isoformat()} (in {days} days)"
    return (f"  WARNING    the champion's base model {when}; its fine-tune stops answering then. Train a "
            "replacement on another model, Azure OpenAI or the LoRA backend, and promote it.")


def wall_seconds(manifest: dict[str, Any]) -> float | None:
    """The wall time of the run that wrote this output. Curate's own total leaves out loading
    the tokenizer (a first run converts it); the wall time a user waited includes it."""
    timings = manifest.get("timings") or {}
    if not isinstance(timings.get("total_s"), (int, float)):
        return None
    return round(float(timings["total_s"]) + float(timings.get("tokenizer_s") or 0.0), 1)


def _took(info: dict[str, Any]) -> str:
    took = f", took {info['wall_s']:,.1f} s" if isinstance(info.get("wall_s"), float) else ""
    peak = info.get("peak_rss_mb")
    return took + (f", peak memory {peak / 1024:.1f} GiB" if isinstance(peak, (int, float)) else "")


def _stage_summary(key: str, folder: Path, ident: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """What `status` shows of one stage's newest output."""
    info: dict[str, Any] = {"id": ident, "created_at": manifest.get("created_at"), "wall_s": wall_seconds(manifest),
                            "peak_rss_mb": (manifest.get("timings") or {}).get("peak_rss_mb")}
    if key == "dataset":
        info["examples"] = manifest["counts"]["examples"]
        info["decision"] = manifest["decision"]["verdict"]
    elif key == "split":
        info["counts"] = {k: manifest["counts"][k] for k in ("train", "validation", "regression")}
        info["dataset"] = manifest["dataset"]["id"]
    elif key == "run":
        info["backend"] = manifest.get("backend", "lora")
        info["method"] = manifest.get("method", "sft")
        info["split"] = manifest["split"]["id"]
        info["final_eval_loss"] = (manifest.get("losses") or {}).get("final_eval_loss")
    elif key == "eval":
        info["run"] = manifest["run"]["id"]
        gate = manifest.get("gate") or {}
        info["gate"] = {"passed": gate.get("passed"), "failed": gate.get("failed")}
        try:
            info["primary"] = fmt_primary(orjson.loads((folder / ident / "report.json").read_bytes()))
        except FileNotFoundError:
            pass
    return info


def _registry_state(config: PipelineConfig, found: dict[str, Any]) -> None:
    """The aliases, the last champion move and the versions of the newest run, into `found`."""
    try:
        c = client(config)
        for alias in (CHAMPION, CANDIDATE):
            v = alias_version(config, alias, c)
            found[alias] = _describe_version(v) if v is not None else None
        entries = history(config, c)
        found["last_champion_move"] = next((e for e in reversed(entries) if e["alias"] == CHAMPION), None)
        if found.get("run"):
            found["run"]["versions"] = [str(v.version) for v in versions_of_run(config, found["run"]["id"], c)]
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        found["registry_error"] = f"{type(exc).__name__}: {exc}"


def gather(config: PipelineConfig) -> dict[str, Any]:
    """The newest output of every stage, the registry's aliases and the last retrain."""
    found: dict[str, Any] = {"pipeline": config.name, "model": model_name(config)}
    stages = (("dataset", config.curate.output_dir), ("split", config.split.output_dir),
              ("run", config.train.output_dir), ("eval", config.eval.output_dir))
    for key, folder in stages:
        ident = read_latest(Path(folder))
        manifest = _read_manifest(Path(folder) / ident) if ident else None
        if manifest:
            found[key] = _stage_summary(key, Path(folder), ident, manifest)
        else:
            found[key] = {"id": ident, "created_at": None} if ident else None
    _registry_state(config, found)
    summary = Path(config.retrain.dir) / config.name / "last.json"
    if summary.exists():
        try:
            s = orjson.loads(summary.read_bytes())
            found["last_retrain"] = {k: s.get(k) for k in ("outcome", "exit_code", "finished_at", "message")}
        except orjson.JSONDecodeError:
            pass
    return found


# --------------------------------------------------------------------------- as lines


def _stage_lines(s: dict[str, Any]) -> list[str]:
    d, sp, r, e = s.get("dataset"), s.get("split"), s.get("run"), s.get("eval")
    lines = [f"  dataset    {d['id']}: {d.get('examples', '?')} examples, decision {d.get('decision', '?')} "
             f"({d.get('created_at')}{_took(d)})" if d else "  dataset    none yet (make curate)"]
    lines.append(f"  split      {sp['id']}: train {sp['counts']['train']}, validation {sp['counts']['validation']}, "
                 f"regression {sp['counts']['regression']} (from {sp['dataset']}{_took(sp)})" if sp and sp.get("counts")
                 else "  split      none yet (make split)")
    if r:
        loss = f", validation loss {r['final_eval_loss']:.4f}" if isinstance(r.get("final_eval_loss"), float) else ""
        versions = f"; registered as {', '.join('v' + v for v in r['versions'])}" if r.get("versions") else ""
        older = "  [not the newest split: make train]" if sp and r.get("split") != sp["id"] else ""
        lines.append(f"  run        {r['id']}: {r.get('backend', '?')} ({r.get('method', 'sft')}) on {r.get('split')}{loss}{_took(r)}{versions}{older}")
    else:
        lines.append("  run        none yet (make train)")
    if e and e.get("gate"):
        verdict = "PASS" if e["gate"]["passed"] else f"FAIL ({', '.join(e['gate']['failed'] or [])})"
        stale = "" if r and e.get("run") == r["id"] else "  [not the newest run: make eval]"
        lines.append(f"  eval       {e['id']} of {e['run']}: gate {verdict}; {e.get('primary', '')}{_took(e)}{stale}")
    else:
        lines.append("  eval       none yet (make eval)")
    return lines


def _registry_lines(s: dict[str, Any]) -> list[str]:
    lines = [f"  registry   unreachable: {s['registry_error']}"] if s.get("registry_error") else []
    for alias in (CHAMPION, CANDIDATE):
        v = s.get(alias)
        if v:
            forced = ", FORCED" if v.get("forced") else ""
            lines.append(f"  {alias:<10} v{v['version']}: run {v['run_id']}, eval {v['eval_id']}, gate {v['gate']}"
                         f"{forced}")
            warning = shutdown_warning(v) if alias == CHAMPION else None
            if warning:
                lines.append(warning)
        elif "registry_error" not in s:
            lines.append(f"  {alias:<10} none" + (" (make promote)" if alias == CHAMPION else ""))
    last = s.get("last_champion_move")
    if last:
        lines.append(f"             champion set {last['at']} by {last['who']} ({last['action']}): "
                     f"{last.get('reason') or ''}")
    return lines


def lines(s: dict[str, Any]) -> list[str]:
    """`gather`'s answer as the lines `refit status` prints."""
    out = [f"Pipeline {s['pipeline']} (registered model {s['model']})", *_stage_lines(s), *_registry_lines(s)]
    if s.get("last_retrain"):
        lr = s["last_retrain"]
        out.append(f"  retrain    last: {lr['outcome']} (exit {lr['exit_code']}) at {lr['finished_at']}: "
                   f"{lr['message']}")
    return out
