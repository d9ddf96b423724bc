"""eval: the candidate vs. the prompt baseline vs. the champion, on every suite, with paired
confidence intervals and a gate.

Read top to bottom, the recipe is:

1. The contenders. The candidate is the newest trained run (or the one named). The prompt
   baseline is the same base model with the strong prompt frozen by the split (detailed
   instructions and few-shot examples from train). The champion is the run the registry's
   `champion` alias points at, when there is one.
2. The suites (evals/suites.py, one table): the split's validation set, the frozen regression
   set, refit's guard suites (instruction following, arithmetic, refusal) and any user suites
   from the config.
3. Identity: the eval id hashes the contenders, the suites' contents and scoring versions,
   the gate's version and the config; an eval that already exists is not run again.
4. Generation: every prompt goes through the one template; outputs are cached on disk by
   (model, prompt, decoding settings), each batch (hf) or request (openai) committed as it
   ends, so a re-run, even after a kill, only generates what is new.
5. Scoring (evals/scorers.py): per example (exact match, F1, refusals, citations, format,
   groundedness, instruction checks, numeric answers), then per suite and per failure label.
6. Comparison: paired per-example deltas, candidate minus baseline and minus champion, with
   seeded bootstrap intervals.
7. The gate (evals/gate.py), then the outputs, atomically (pipelines/stage.py; a `--force`
   rebuild keeps the old eval until the new one is whole): predictions per contender and
   suite, report.json, report.html, manifest.json; the numbers also go to the candidate's
   MLflow run.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from evals import metrics as M
from evals.context_split import context_split
from evals.gate import GATE_VERSION, decide
from evals.providers import GenerationCache, HFModel, OpenAIModel, ProviderError, resolve_dtype
from evals.scorers import Scores, score
from evals.suites import Suite, SuiteError, load_suites, suite_versions
from evals.suites import split_item as _ideal_to_item  # noqa: F401  (scripts/bench_eval.py imports it from here)
from pipelines.clock import memory_peak_mb, restart_memory_peak
from pipelines.config import PipelineConfig, PriceConfig
from pipelines.contracts import ContractError, EvalReport, RunManifest, SplitManifest, read_manifest
from pipelines.stage import Stage, utc_now
from pipelines.storage import code_version, dumps, file_sha256, resolve_stage_output
from pipelines.template import render_messages


class EvalError(RuntimeError):
    """Something the eval cannot run with; the message says what and how to fix it."""


@dataclass
class EvalResult:
    eval_id: str
    path: Path
    report: dict[str, Any]
    skipped: bool


class Progress:
    """What the CLI shows; the default shows nothing."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...
    def stop(self) -> None: ...


# --------------------------------------------------------------------------- 1. contenders


@dataclass
class Contender:
    name: str  # candidate, baseline or champion
    backend: str  # hf or openai
    prompt: str  # "finetune" (the short trained prompt) or "baseline" (the strong prompt)
    model: str  # what it is, for the report
    run_id: str | None = None
    adapter: Path | None = None
    base_url: str | None = None
    price: PriceConfig = field(default_factory=PriceConfig)
    registry_version: str | None = None


def read_checked(path: Path, model: type[Any]) -> dict[str, Any]:
    """An upstream file through its contract; a bad one is an EvalError naming file and field."""
    try:
        return read_manifest(path, model)
    except ContractError as exc:
        raise EvalError(str(exc)) from None


def load_run(config: PipelineConfig, run_id: str | None) -> tuple[Path, dict[str, Any]]:
    path = resolve_stage_output(Path(config.train.output_dir), run_id, "trained run", "train", EvalError)
    return path, read_checked(path / "manifest.json", RunManifest)


def contender_from_run(name: str, config: PipelineConfig, path: Path, manifest: dict[str, Any]) -> Contender:
    if manifest.get("backend") == "openai":
        ft = manifest["openai"]
        return Contender(name, "openai", "finetune", ft["fine_tuned_model"], run_id=manifest["id"],
                         base_url=config.eval.openai.base_url or ft.get("base_url"), price=config.eval.price_openai)
    return Contender(name, "hf", "finetune", f"{config.model.base} + LoRA {manifest['id']}", run_id=manifest["id"],
                     adapter=path / manifest["adapter"]["path"], price=config.eval.price_local)


def baseline_for(config: PipelineConfig, candidate_manifest: dict[str, Any]) -> Contender:
    """The base model the candidate was tuned from, with the strong prompt."""
    if candidate_manifest.get("backend") == "openai":
        ft = candidate_manifest["openai"]
        return Contender("baseline", "openai", "baseline", ft["model"],
                         base_url=config.eval.openai.base_url or ft.get("base_url"), price=config.eval.price_openai)
    return Contender("baseline", "hf", "baseline", config.model.base, price=config.eval.price_local)


def find_champion(config: PipelineConfig) -> Contender | None:
    setting = config.eval.champion
    if setting == "none":
        return None
    version = None
    if setting == "registry":
        from pipelines.registry import alias_version

        version = alias_version(config, "champion")
        if version is None:
            return None
        run_id = version.tags.get("refit.run_id")
        if not run_id:
            raise EvalError(f"the champion (version {version.version}) has no refit.run_id tag")
    else:
        run_id = setting
    path = Path(config.train.output_dir) / run_id
    if not (path / "manifest.json").exists():
        raise EvalError(f"the champion's run {run_id} is not in {config.train.output_dir}; "
                        f"set eval.champion to 'none' or restore the run folder")
    contender = contender_from_run("champion", config, path, read_checked(path / "manifest.json", RunManifest))
    contender.registry_version = version.version if version is not None else None
    return contender


# --------------------------------------------------------------------------- 4. generation


def render(item: dict[str, Any], contender: Contender, config: PipelineConfig,
           shots: list[dict[str, Any]]) -> list[dict[str, str]]:
    return render_messages(item, config.prompt, config.output, with_answer=False,
                           baseline_shots=shots if contender.prompt == "baseline" else None)


def _model_for(contender: Contender, config: PipelineConfig) -> tuple[Any, dict[str, Any]]:
    """The contender's model, and the decoding settings its cached generations are keyed by."""
    decoding: dict[str, Any] = {"greedy": True, "max_new_tokens": config.eval.max_new_tokens}
    if contender.backend == "hf":
        decoding["dtype"] = resolve_dtype(config.eval.hf.dtype)  # the same for every hf contender
        return HFModel(config.model.base, contender.adapter, decoding["dtype"]), decoding
    o = config.eval.openai
    return OpenAIModel(contender.model, base_url=contender.base_url, api_key_env=o.api_key_env,
                       concurrency=o.concurrency, timeout_s=o.timeout_s, max_retries=o.max_retries), decoding


def generate(contender: Contender, suites: list[Suite], config: PipelineConfig, shots: list[dict[str, Any]],
             cache: GenerationCache, progress: Progress) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Predictions for every item of every suite: cached ones from disk, the rest generated
    in one pass (so batches mix suites and stay full)."""
    model, decoding = _model_for(contender, config)
    prompts: list[Any] = []
    for suite in suites:
        for item in suite.items:
            messages = render(item, contender, config, shots)
            prompts.append(model.render(messages) if contender.backend == "hf" else messages)
    keys = [GenerationCache.key(model.key, p, decoding) for p in prompts]
    found = cache.get_many(keys)
    missing = [i for i, k in enumerate(keys) if k not in found]
    missing_unique = list({keys[i]: i for i in missing}.values())  # the same prompt twice: generate once
    if missing_unique:
        progress.start(f"{contender.name}: generate", len(missing_unique))
        # hf plans its batches over every prompt (cached ones included: see HFModel.generate).
        planned = list({k: i for i, k in enumerate(keys)}.values()) if contender.backend == "hf" else missing_unique

        def commit(done: list[tuple[int, Any]]) -> None:
            # Each batch (hf) or request (openai) is in the cache as soon as it ends: a crash,
            # Ctrl-C or a scheduler's kill loses at most the batches in flight.
            cache.put_many(model.key, [(keys[planned[j]], g) for j, g in done])

        try:
            todo = [prompts[i] for i in planned]
            if contender.backend == "hf":
                new = model.generate(todo, batch_size=config.eval.hf.batch_size,
                                     max_new_tokens=config.eval.max_new_tokens, on_done=progress.advance,
                                     on_results=commit, cached=[j for j, i in enumerate(planned) if keys[i] in found])
            else:
                new = model.generate(todo, max_new_tokens=config.eval.max_new_tokens, on_done=progress.advance,
                                     on_results=commit)
        finally:
            progress.stop()
        fresh = [i for i in planned if keys[i] not in found]  # what `new` answers, in order
        found.update({keys[i]: g for i, g in zip(fresh, new)})
    out: dict[str, list[Any]] = {}
    by_suite: dict[str, dict[str, int]] = {}
    position, generated = 0, set(missing_unique)
    for suite in suites:
        span = range(position, position + len(suite.items))
        out[suite.name] = [found[keys[i]] for i in span]
        by_suite[suite.name] = {"prompts": len(span), "generated": sum(1 for i in span if i in generated)}
        position += len(suite.items)
    return out, {"model_key": model.key, "prompts": len(keys), "cached": len(keys) - len(missing),
                 "generated": len(missing_unique), "suites": by_suite}


# --------------------------------------------------------------------------- 5-6. scoring and comparison


def _mean_interval(values: list[float], resamples: int, seed: int, confidence: float) -> dict[str, Any]:
    if not values:
        return {"mean": None, "n": 0, "low": None, "high": None}
    data = np.asarray(values, dtype=float)
    low, high = M.bootstrap_interval(data, resamples=resamples, seed=seed, confidence=confidence)
    return {"mean": float(data.mean()), "n": int(data.size), "low": low, "high": high}


def summarise(suite: Suite, scores: list[dict[str, float | None]], generations: list[Any], price: PriceConfig,
              config: PipelineConfig) -> dict[str, Any]:
    e = config.eval
    names = list(dict.fromkeys(k for s in scores for k in s))
    summary: dict[str, Any] = {"metrics": {}, "labels": {}}
    for name in names:
        values = [s[name] for s in scores if s.get(name) is not None]
        summary["metrics"][name] = _mean_interval(values, e.bootstrap_resamples, e.seed, e.confidence)
    by_label: dict[str, list[dict[str, float | None]]] = defaultdict(list)
    for item, s in zip(suite.items, scores):
        by_label[item["label"]].append(s)
    for label, rows in sorted(by_label.items()):
        summary["labels"][label] = {"n": len(rows), **{
            name: (float(np.mean(v)) if (v := [r[name] for r in rows if r.get(name) is not None]) else None)
            for name in names}}
    prompt = float(np.mean([g.prompt_tokens for g in generations]))
    completion = float(np.mean([g.completion_tokens for g in generations]))
    summary["tokens"] = {
        "prompt_per_query": round(prompt, 1), "completion_per_query": round(completion, 1),
        "cost_per_1000_queries": round(1000 * (prompt * price.prompt_per_million
                                               + completion * price.completion_per_million) / 1e6, 4)}
    return summary


# --------------------------------------------------------------------------- the stage


@dataclass
class EvalInputs:
    """Everything the eval reads before it generates: the run, its split, contenders, suites."""

    run_path: Path
    run: dict[str, Any]  # the run's manifest
    split_path: Path
    split: dict[str, Any]  # the split's manifest
    baseline_prompt: dict[str, Any]  # the strong prompt the split froze: few-shot examples and their ids
    contenders: list[Contender]  # candidate, baseline, then the champion when there is one
    champion: Contender | None
    suites: list[Suite]


def gather_inputs(config: PipelineConfig) -> EvalInputs:
    """Steps 1-2: the contenders and the suites."""
    run_path, run_manifest = load_run(config, config.eval.run)
    split_path = Path(run_manifest["split"]["path"])
    if not (split_path / "manifest.json").exists():
        raise EvalError(f"the run's split {split_path} is missing; run `make split` to rebuild it")
    split_manifest = read_checked(split_path / "manifest.json", SplitManifest)
    baseline_prompt = orjson.loads((split_path / "baseline_prompt.json").read_bytes())
    candidate = contender_from_run("candidate", config, run_path, run_manifest)
    contenders = [candidate, baseline_for(config, run_manifest)]
    champion = find_champion(config)
    if champion is not None and champion.run_id == candidate.run_id:
        # The candidate is the champion already: comparing it with itself measures nothing,
        # and leaving it out keeps the eval id (and so the report) of its first evaluation.
        champion = None
    if champion is not None:
        contenders.append(champion)
    try:
        suites = load_suites(config, split_path)
    except SuiteError as exc:
        raise EvalError(str(exc)) from None
    return EvalInputs(run_path, run_manifest, split_path, split_manifest, baseline_prompt, contenders, champion,
                      suites)


def eval_key_payload(config: PipelineConfig, inputs: EvalInputs) -> dict[str, Any]:
    """Step 3, identity: what the eval id hashes."""
    from pipelines.models import base_model_id

    run = inputs.run
    return {
        "run": run["id"], "run_created": run.get("created_at"),
        "champion": inputs.champion.run_id if inputs.champion else None,
        "suites": {s.name: s.sha256 for s in inputs.suites}, "shots": inputs.baseline_prompt["few_shot_ids"],
        "config": config.section_hash("eval", "prompt", "output"),
        "base": base_model_id(config.model.base) if run.get("backend") != "openai" else None,
        "dtype": resolve_dtype(config.eval.hf.dtype),  # "auto" resolves per machine
        "code": code_version(__name__),
        # evals/ is not part of the stages' code version (an edit there must not retrain); how
        # each suite is scored and the gate judges is versioned instead: a bump makes old evals stale.
        "scoring": {"suites": suite_versions(inputs.suites), "gate": GATE_VERSION},
    }


def finished_report(stage: Stage) -> dict[str, Any] | None:
    """The report of an eval that exists already (and LATEST pointed at it), or None."""
    if stage.finished() is None:
        return None
    return read_checked(stage.final / "report.json", EvalReport)


def generate_all(config: PipelineConfig, inputs: EvalInputs, progress: Progress, log: Callable[[str], None]
                 ) -> tuple[dict[str, dict[str, list[Any]]], dict[str, dict[str, Any]], dict[str, float]]:
    """Step 4: every contender's predictions, through the cache."""
    cache = GenerationCache(Path(config.eval.cache))
    generations: dict[str, dict[str, list[Any]]] = {}
    cache_stats: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    try:
        for contender in inputs.contenders:
            t0 = time.perf_counter()
            try:
                generations[contender.name], cache_stats[contender.name] = generate(
                    contender, inputs.suites, config, inputs.baseline_prompt["few_shot"], cache, progress)
            except ProviderError as exc:
                raise EvalError(f"{contender.name}: {exc}") from None
            timings[f"generate_{contender.name}_s"] = round(time.perf_counter() - t0, 2)
            stats = cache_stats[contender.name]
            log(f"  {contender.name}: {stats['generated']} generated, {stats['cached']} from the cache "
                f"({timings[f'generate_{contender.name}_s']:.1f}s)")
            for name, n in stats["suites"].items():
                log(f"    {contender.name}/{name}: {n['prompts']} prompts, {n['generated']} generated")
    finally:
        cache.close()
    return generations, cache_stats, timings


def score_all(config: PipelineConfig, inputs: EvalInputs, generations: dict[str, dict[str, list[Any]]]
              ) -> dict[str, dict[str, list[Scores]]]:
    """Step 5: per-example scores, by contender and suite."""
    return {c.name: {s.name: [score(item, g.text, config) for item, g in zip(s.items, generations[c.name][s.name])]
                     for s in inputs.suites} for c in inputs.contenders}


def suite_entry(suite: Suite, config: PipelineConfig, inputs: EvalInputs, generations: dict[str, dict[str, list[Any]]],
                scores: dict[str, dict[str, list[Scores]]]) -> dict[str, Any]:
    """Steps 5-6 for one suite: each contender's summary, and the candidate's paired deltas."""
    e = config.eval
    entry: dict[str, Any] = {"n": len(suite.items), "source": suite.source,
                             "primary_metric": suite.primary_metric(config), "contenders": {}, "comparisons": {}}
    for c in inputs.contenders:
        entry["contenders"][c.name] = summarise(suite, scores[c.name][suite.name], generations[c.name][suite.name],
                                                c.price, config)
    entry["by_context"] = context_split(suite.items, {c.name: scores[c.name][suite.name] for c in inputs.contenders},
                                        entry["primary_metric"], resamples=e.bootstrap_resamples, seed=e.seed,
                                        confidence=e.confidence)
    cand = scores["candidate"][suite.name]
    for other in inputs.contenders[1:]:
        theirs = scores[other.name][suite.name]
        entry["comparisons"][other.name] = {
            name: M.paired_bootstrap([s.get(name) for s in cand], [s.get(name) for s in theirs],
                                     resamples=e.bootstrap_resamples, seed=e.seed, confidence=e.confidence,
                                     higher_is_better=name not in M.LOWER_IS_BETTER)
            for name in entry["contenders"]["candidate"]["metrics"]}
    return entry


def build_report(stage: Stage, config: PipelineConfig, inputs: EvalInputs,
                 generations: dict[str, dict[str, list[Any]]], scores: dict[str, dict[str, list[Scores]]]
                 ) -> dict[str, Any]:
    """Steps 6-7: the report, its gate verdict included."""
    e = config.eval
    report: dict[str, Any] = {
        "id": stage.ident,
        "created_at": utc_now(),
        "pipeline": config.name,
        "run": {"id": inputs.run["id"], "path": str(inputs.run_path), "backend": inputs.run.get("backend"),
                "method": inputs.run.get("method", "sft")},
        "split": {"id": inputs.split["id"], "path": str(inputs.split_path)},
        "contenders": {c.name: {"model": c.model, "backend": c.backend, "prompt": c.prompt, "run_id": c.run_id,
                                "registry_version": c.registry_version,
                                "dtype": resolve_dtype(e.hf.dtype) if c.backend == "hf" else None}
                       for c in inputs.contenders},
        "prompts": {"baseline_few_shot_ids": inputs.baseline_prompt["few_shot_ids"]},
        "confidence": e.confidence, "bootstrap_resamples": e.bootstrap_resamples, "seed": e.seed,
        "suites": {s.name: suite_entry(s, config, inputs, generations, scores) for s in inputs.suites},
    }
    report["gate"] = decide(report, e.gate, confidence=e.confidence)
    report["gate"]["primary"] = {"suite": e.gate.primary_suite, "metric": e.gate.primary_metric,
                                 **(report["suites"].get(e.gate.primary_suite, {}).get("comparisons", {})
                                    .get("baseline", {}).get(e.gate.primary_metric) or {})}
    EvalReport.model_validate(report)  # what promote, the model card and status will read back
    return report


def write_outputs(folder: Path, config: PipelineConfig, inputs: EvalInputs, report: dict[str, Any],
                  generations: dict[str, dict[str, list[Any]]], scores: dict[str, dict[str, list[Scores]]]) -> None:
    """Step 7: predictions per contender and suite, report.json and report.html."""
    from evals.report import write_html

    for c in inputs.contenders:
        target = folder / "predictions" / c.name
        target.mkdir(parents=True)
        for suite in inputs.suites:
            rows = [{"id": item["id"], "label": item["label"], "prediction": g.text,
                     "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens, "scores": s}
                    for item, g, s in zip(suite.items, generations[c.name][suite.name], scores[c.name][suite.name])]
            (target / f"{suite.name}.jsonl").write_bytes(
                b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in rows))
    (folder / "report.json").write_bytes(dumps(report))
    write_html(report, inputs.suites, generations, scores, config, folder / "report.html")


def eval_manifest(stage: Stage, config: PipelineConfig, inputs: EvalInputs, report: dict[str, Any],
                  cache_stats: dict[str, dict[str, Any]], timings: dict[str, float]) -> dict[str, Any]:
    champion = inputs.champion
    return stage.base_manifest(config, ("eval", "prompt", "output"), created_at=report["created_at"]) | {
        "run": {"id": inputs.run["id"], "config_hash": inputs.run.get("config_hash"),
                "manifest_sha256": file_sha256(inputs.run_path / "manifest.json")},
        "split": {"id": inputs.split["id"], "config_hash": inputs.split.get("config_hash")},
        "dataset": inputs.run.get("dataset"),
        "champion": {"run_id": champion.run_id, "registry_version": champion.registry_version} if champion else None,
        "suites": {s.name: {"items": len(s.items), "source": s.source, "sha256": s.sha256} for s in inputs.suites},
        "cache": cache_stats,
        "gate": {"passed": report["gate"]["passed"], "failed": report["gate"]["failed"]},
        "timings": timings,
    }


def evaluate(config: PipelineConfig, *, force: bool = False, progress: Progress | None = None,
             log: Callable[[str], None] = lambda line: None) -> EvalResult:
    """The eval stage: the recipe in this module's docstring, step by step."""
    progress = progress or Progress()
    started = time.perf_counter()
    restart_memory_peak()
    inputs = gather_inputs(config)
    stage = Stage.identify("eval", "eval", Path(config.eval.output_dir), eval_key_payload(config, inputs),
                           code_module=__name__)
    if not force and (done := finished_report(stage)) is not None:
        return EvalResult(stage.ident, stage.final, done, skipped=True)
    generations, cache_stats, timings = generate_all(config, inputs, progress, log)
    scores = score_all(config, inputs, generations)
    report = build_report(stage, config, inputs, generations, scores)
    with stage.commit() as tmp:  # a --force rebuild keeps the old eval until this one is whole
        write_outputs(tmp, config, inputs, report, generations, scores)
        timings["total_s"] = round(time.perf_counter() - started, 2)
        timings["peak_rss_mb"] = memory_peak_mb()
        manifest = eval_manifest(stage, config, inputs, report, cache_stats, timings)
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    _track(config, inputs.run, report, stage.final, log)
    return EvalResult(stage.ident, stage.final, report, skipped=False)

def _track(config: PipelineConfig, run_manifest: dict[str, Any], report: dict[str, Any], folder: Path,
           log: Callable[[str], None]) -> None:
    """The eval's numbers on the candidate's MLflow run, next to its training curves."""
    run = (run_manifest.get("mlflow") or {}).get("run_id")
    if not run:
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipelines import tracking

    tracking.setup(config)
    values = {}
    for suite, entry in report["suites"].items():
        for name, m in entry["contenders"]["candidate"]["metrics"].items():
            if m["mean"] is not None:
                values[f"eval.{suite}.{name}"] = m["mean"]
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_run(run)
    except MlflowException:
        # A run folder copied from another machine: its MLflow run lives in another store.
        log(f"  note: the run's MLflow run {run} is not in {tracking.tracking_uri(config)}; eval not tracked there")
        return
    mlflow.log_metrics(values, run_id=run)
    client.set_tag(run, "refit.eval_id", report["id"])
    client.set_tag(run, "refit.gate", "passed" if report["gate"]["passed"] else "failed")
    client.log_artifact(run, str(folder / "report.html"), artifact_path=f"evals/{report['id']}")
