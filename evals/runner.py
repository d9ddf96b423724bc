"""eval: the candidate vs. the prompt baseline vs. the champion, on every suite, with paired
confidence intervals and a gate.

Read top to bottom, the recipe is:

1. The contenders. The candidate is the newest trained run (or the one named). The prompt
   baseline is the same base model with the strong prompt frozen by the split (detailed
   instructions and few-shot examples from train). The champion is the run the registry's
   `champion` alias points at, when there is one.
2. The suites: the split's validation set, the frozen regression set, refit's guard suites
   (instruction following, arithmetic, refusal) and any user suites from the config.
3. Identity: the eval id hashes the contenders, the suites' contents and the config; an eval
   that already exists is not run again.
4. Generation: every prompt goes through the one template; outputs are cached on disk by
   (model, prompt, decoding settings), so a re-run only generates what is new.
5. Scoring: per example (exact match, F1, refusals, citations, format, groundedness,
   instruction checks, numeric answers), then per suite and per failure label.
6. Comparison: paired per-example deltas, candidate minus baseline and minus champion, with
   seeded bootstrap intervals.
7. The gate (evals/gate.py), then the outputs, atomically: predictions per contender and
   suite, report.json, report.html, manifest.json; the numbers also go to the candidate's
   MLflow run.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from evals import metrics as M
from evals.gate import decide
from evals.providers import GenerationCache, HFModel, OpenAIModel, ProviderError
from pipelines.config import PipelineConfig, PriceConfig
from pipelines.storage import (
    atomic_dir,
    code_version,
    dumps,
    file_sha256,
    iter_jsonl,
    resolve_stage_output,
    set_latest,
)
from pipelines.template import render_messages

GUARD_DIR = Path(__file__).resolve().parent / "suites"


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


def load_run(config: PipelineConfig, run_id: str | None) -> tuple[Path, dict[str, Any]]:
    path = resolve_stage_output(Path(config.train.output_dir), run_id, "trained run", "train", EvalError)
    return path, orjson.loads((path / "manifest.json").read_bytes())


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
    contender = contender_from_run("champion", config, path, orjson.loads((path / "manifest.json").read_bytes()))
    contender.registry_version = version.version if version is not None else None
    return contender


# --------------------------------------------------------------------------- 2. suites


@dataclass
class Suite:
    name: str
    items: list[dict[str, Any]]
    source: str  # where the items came from
    sha256: str  # of the items as scored


def _ideal_to_item(example: dict[str, Any], config: PipelineConfig, suite: str) -> dict[str, Any]:
    """A split example as an eval item: the gold answer is the ideal answer's text; an
    "I don't know" ideal answer makes the item unanswerable (SQuAD 2.0's NoAns)."""
    item = {"id": example["id"], "suite": suite, "kind": example.get("kind", "rag"), "query": example["query"],
            "contexts": [{"id": c["id"], "text": c["text"]} for c in example.get("contexts") or []],
            "label": example.get("label") or "none"}
    if item["kind"] == "general":
        item.update(answers=[example["ideal_answer"]], answerable=True, scorer="text")
        return item
    gold = M.parse_output(example["ideal_answer"], config.output.format, config.output.idk_answer)
    answerable = not gold.refusal
    item.update(answers=[gold.answer] if answerable else [], answerable=answerable, scorer="rag")
    return item


def _user_items(path: Path, name: str, limit: int | None) -> list[dict[str, Any]]:
    """JSONL {question, context(s), answers}, GSM8K JSONL, or SQuAD 2.0 JSON."""
    items: list[dict[str, Any]] = []
    if path.suffix == ".json":
        data = orjson.loads(path.read_bytes())
        for article in data.get("data", []):
            for p, paragraph in enumerate(article["paragraphs"]):
                doc = {"id": f"{article.get('title', 'doc')}-{p}".replace(" ", "_"), "text": paragraph["context"]}
                for qa in paragraph["qas"]:
                    answers = [a["text"] for a in qa.get("answers", [])]
                    items.append({"id": str(qa["id"]), "query": qa["question"], "contexts": [doc], "answers": answers,
                                  "answerable": not qa.get("is_impossible", False) and bool(answers)})
    else:
        for n, row in enumerate(iter_jsonl(path), 1):
            query = row.get("question") or row.get("query")
            if not isinstance(query, str):
                raise EvalError(f"{path}:{n}: a suite row needs a 'question' string")
            contexts = row.get("contexts")
            if contexts is None and row.get("context"):
                contexts = [{"id": "context", "text": row["context"]}]
            answers = row.get("answers")
            if answers is None and isinstance(row.get("answer"), str):
                answer = row["answer"]
                answers = [answer.rsplit("####", 1)[1].strip().replace(",", "")] if "####" in answer else [answer]
            if not isinstance(answers, list):
                raise EvalError(f"{path}:{n}: a suite row needs 'answers' (a list) or 'answer'")
            items.append({"id": str(row.get("id", f"{name}-{n}")), "query": query,
                          "contexts": [{"id": str(c["id"]), "text": c["text"]} for c in contexts or []],
                          "answers": [str(a) for a in answers], "answerable": bool(answers)})
    out = []
    for item in items[:limit]:
        numeric = bool(item["answers"]) and all(_is_number(a) for a in item["answers"])
        scorer = "numeric" if numeric and not item["contexts"] else ("rag" if item["contexts"] else "text")
        out.append({**item, "suite": name, "kind": "rag" if item["contexts"] else "general",
                    "label": "answerable" if item["answerable"] else "unanswerable", "scorer": scorer})
    return out


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


GUARD_SCORERS = {"instruction_following": "instruction", "arithmetic": "numeric", "refusal": "rag"}


def load_suites(config: PipelineConfig, split_path: Path) -> list[Suite]:
    cfg = config.eval.suites
    suites: list[tuple[str, list[dict[str, Any]], str]] = []
    for name, enabled in (("validation", cfg.validation), ("regression", cfg.regression)):
        if enabled:
            path = split_path / f"{name}.jsonl"
            suites.append((name, [_ideal_to_item(e, config, name) for e in iter_jsonl(path)], str(path)))
    for name in cfg.guards:
        path = GUARD_DIR / f"{name}.jsonl"
        items = [{**item, "scorer": GUARD_SCORERS[name]} for item in iter_jsonl(path)][:cfg.guard_limit]
        suites.append((name, items, str(path)))
    for user in cfg.user:
        path = Path(user.path)
        if not path.exists():
            raise EvalError(f"eval.suites.user {user.name!r}: {path} does not exist")
        suites.append((user.name, _user_items(path, user.name, user.limit), str(path)))
    out = []
    for name, items, source in suites:
        if not items:
            raise EvalError(f"suite {name!r} ({source}) has no items")
        digest = hashlib.sha256(b"".join(orjson.dumps(i, option=orjson.OPT_SORT_KEYS) for i in items)).hexdigest()
        out.append(Suite(name, items, source, digest))
    return out


# --------------------------------------------------------------------------- 4. generation


def render(item: dict[str, Any], contender: Contender, config: PipelineConfig,
           shots: list[dict[str, Any]]) -> list[dict[str, str]]:
    return render_messages(item, config.prompt, config.output, with_answer=False,
                           baseline_shots=shots if contender.prompt == "baseline" else None)


def generate(contender: Contender, suites: list[Suite], config: PipelineConfig, shots: list[dict[str, Any]],
             cache: GenerationCache, progress: Progress) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """Predictions for every item of every suite: cached ones from disk, the rest generated
    in one pass (so batches mix suites and stay full)."""
    decoding = {"greedy": True, "max_new_tokens": config.eval.max_new_tokens}
    if contender.backend == "hf":
        model: Any = HFModel(config.model.base, contender.adapter, config.eval.hf.dtype)
        decoding["dtype"] = config.eval.hf.dtype
    else:
        o = config.eval.openai
        model = OpenAIModel(contender.model, base_url=contender.base_url, api_key_env=o.api_key_env,
                            concurrency=o.concurrency, timeout_s=o.timeout_s, max_retries=o.max_retries)
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
        try:
            todo = [prompts[i] for i in missing_unique]
            if contender.backend == "hf":
                new = model.generate(todo, batch_size=config.eval.hf.batch_size,
                                     max_new_tokens=config.eval.max_new_tokens, on_done=progress.advance)
            else:
                new = model.generate(todo, max_new_tokens=config.eval.max_new_tokens, on_done=progress.advance)
        finally:
            progress.stop()
        cache.put_many(model.key, [(keys[i], g) for i, g in zip(missing_unique, new)])
        found.update({keys[i]: g for i, g in zip(missing_unique, new)})
    out: dict[str, list[Any]] = {}
    position = 0
    for suite in suites:
        out[suite.name] = [found[k] for k in keys[position:position + len(suite.items)]]
        position += len(suite.items)
    return out, {"model_key": model.key, "prompts": len(keys), "cached": len(keys) - len(missing),
                 "generated": len(missing_unique)}




# --------------------------------------------------------------------------- 5. scoring

RAG_METRICS = ["f1", "exact_match", "format_valid", "refusal_accuracy", "false_refusal", "citation_valid",
               "groundedness", "f1_has_answer", "exact_match_has_answer", "f1_no_answer", "exact_match_no_answer"]


def score(item: dict[str, Any], text: str, config: PipelineConfig) -> dict[str, float | None]:
    scorer = item["scorer"]
    if scorer == "instruction":
        from evals.guards import check_instruction

        return {"accuracy": float(check_instruction(text, item["check"]))}
    if scorer == "numeric":
        from evals.guards import numeric_match

        return {"accuracy": float(numeric_match(text, item["answers"]))}
    if scorer == "text":
        return {"f1": M.max_f1(text, item["answers"]), "exact_match": float(M.max_exact(text, item["answers"]))}
    parsed = M.parse_output(text, config.output.format, config.output.idk_answer)
    predicted = "" if parsed.refusal else parsed.answer
    answerable = item["answerable"]
    f1 = M.max_f1(predicted, item["answers"])
    em = float(M.max_exact(predicted, item["answers"]))
    return {
        "f1": f1, "exact_match": em, "format_valid": float(parsed.format_valid),
        "refusal_accuracy": None if answerable else float(parsed.refusal),
        "false_refusal": float(parsed.refusal) if answerable else None,
        "citation_valid": M.citation_valid(parsed, item["contexts"]) if answerable else None,
        "groundedness": M.groundedness(parsed, item["contexts"]),
        "f1_has_answer": f1 if answerable else None, "exact_match_has_answer": em if answerable else None,
        "f1_no_answer": None if answerable else f1, "exact_match_no_answer": None if answerable else em,
    }


def primary_metric(suite: Suite, config: PipelineConfig) -> str:
    scorers = {item["scorer"] for item in suite.items}
    if scorers <= {"instruction", "numeric"}:
        return "accuracy"
    if "rag" in scorers:
        return config.eval.gate.primary_metric
    return "f1"


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


def eval_key(config: PipelineConfig, run_manifest: dict[str, Any], champion: Contender | None, suites: list[Suite],
             shots_ids: list[str]) -> str:
    from pipelines.models import base_model_id

    payload = orjson.dumps({
        "run": run_manifest["id"], "run_created": run_manifest.get("created_at"),
        "champion": champion.run_id if champion else None,
        "suites": {s.name: s.sha256 for s in suites}, "shots": shots_ids,
        "config": config.section_hash("eval", "prompt", "output"),
        "base": base_model_id(config.model.base) if run_manifest.get("backend") != "openai" else None,
        "code": code_version(), "eval_code": _source_hash(),
    }, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(payload).hexdigest()


def _source_hash() -> str:
    """evals/ is not part of the stages' code version (an edit here must not retrain), but
    an eval from older scoring code is not this eval."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def evaluate(config: PipelineConfig, *, force: bool = False, progress: Progress | None = None,
             log: Callable[[str], None] = lambda line: None) -> EvalResult:
    progress = progress or Progress()
    started = time.perf_counter()
    e = config.eval

    # 1. Contenders.
    run_path, run_manifest = load_run(config, e.run)
    split_path = Path(run_manifest["split"]["path"])
    if not (split_path / "manifest.json").exists():
        raise EvalError(f"the run's split {split_path} is missing; run `make split` to rebuild it")
    split_manifest = orjson.loads((split_path / "manifest.json").read_bytes())
    baseline_prompt = orjson.loads((split_path / "baseline_prompt.json").read_bytes())
    shots = baseline_prompt["few_shot"]
    candidate = contender_from_run("candidate", config, run_path, run_manifest)
    contenders = [candidate, baseline_for(config, run_manifest)]
    champion = find_champion(config)
    if champion is not None and champion.run_id == candidate.run_id:
        # The candidate is the champion already: comparing it with itself measures nothing,
        # and leaving it out keeps the eval id (and so the report) of its first evaluation.
        champion = None
    if champion is not None:
        contenders.append(champion)

    # 2-3. Suites and identity.
    suites = load_suites(config, split_path)
    key = eval_key(config, run_manifest, champion, suites, baseline_prompt["few_shot_ids"])
    eval_id = f"eval-{key[:12]}"
    out_root = Path(e.output_dir)
    final = out_root / eval_id
    if (final / "report.json").exists() and not force:
        set_latest(out_root, eval_id)
        return EvalResult(eval_id, final, orjson.loads((final / "report.json").read_bytes()), skipped=True)

    # 4. Generation, through the cache.
    cache = GenerationCache(Path(e.cache))
    generations: dict[str, dict[str, list[Any]]] = {}
    cache_stats: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    try:
        for contender in contenders:
            t0 = time.perf_counter()
            try:
                generations[contender.name], cache_stats[contender.name] = generate(
                    contender, suites, config, shots, cache, progress)
            except ProviderError as exc:
                raise EvalError(f"{contender.name}: {exc}") from None
            timings[f"generate_{contender.name}_s"] = round(time.perf_counter() - t0, 2)
            stats = cache_stats[contender.name]
            log(f"  {contender.name}: {stats['generated']} generated, {stats['cached']} from the cache "
                f"({timings[f'generate_{contender.name}_s']:.1f}s)")
    finally:
        cache.close()

    # 5-6. Scores, summaries and paired comparisons.
    scores = {c.name: {s.name: [score(item, g.text, config) for item, g in zip(s.items, generations[c.name][s.name])]
                       for s in suites} for c in contenders}
    report_suites: dict[str, Any] = {}
    for suite in suites:
        entry: dict[str, Any] = {"n": len(suite.items), "source": suite.source, "primary_metric": primary_metric(suite, config),
                                 "contenders": {}, "comparisons": {}}
        for c in contenders:
            entry["contenders"][c.name] = summarise(suite, scores[c.name][suite.name], generations[c.name][suite.name],
                                                    c.price, config)
        cand = scores["candidate"][suite.name]
        for other in contenders[1:]:
            theirs = scores[other.name][suite.name]
            entry["comparisons"][other.name] = {
                name: M.paired_bootstrap([s.get(name) for s in cand], [s.get(name) for s in theirs],
                                         resamples=e.bootstrap_resamples, seed=e.seed, confidence=e.confidence)
                for name in entry["contenders"]["candidate"]["metrics"]}
        report_suites[suite.name] = entry

    report: dict[str, Any] = {
        "id": eval_id,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pipeline": config.name,
        "run": {"id": run_manifest["id"], "path": str(run_path), "backend": run_manifest.get("backend")},
        "split": {"id": split_manifest["id"], "path": str(split_path)},
        "contenders": {c.name: {"model": c.model, "backend": c.backend, "prompt": c.prompt, "run_id": c.run_id,
                                "registry_version": c.registry_version} for c in contenders},
        "prompts": {"baseline_few_shot_ids": baseline_prompt["few_shot_ids"]},
        "confidence": e.confidence, "bootstrap_resamples": e.bootstrap_resamples, "seed": e.seed,
        "suites": report_suites,
    }
    # 7. The gate, then the outputs.
    report["gate"] = decide(report, e.gate, confidence=e.confidence)
    report["gate"]["primary"] = {"suite": e.gate.primary_suite, "metric": e.gate.primary_metric,
                                 **(report_suites.get(e.gate.primary_suite, {}).get("comparisons", {})
                                    .get("baseline", {}).get(e.gate.primary_metric) or {})}
    from evals.report import write_html

    if force:
        shutil.rmtree(final, ignore_errors=True)  # else the old report would shadow the new one
    with atomic_dir(final) as tmp:
        for c in contenders:
            folder = tmp / "predictions" / c.name
            folder.mkdir(parents=True)
            for suite in suites:
                rows = [{"id": item["id"], "label": item["label"], "prediction": g.text,
                         "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens, "scores": s}
                        for item, g, s in zip(suite.items, generations[c.name][suite.name], scores[c.name][suite.name])]
                (folder / f"{suite.name}.jsonl").write_bytes(
                    b"".join(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) + b"\n" for r in rows))
        (tmp / "report.json").write_bytes(dumps(report))
        write_html(report, suites, generations, scores, config, tmp / "report.html")
        manifest = {
            "stage": "eval", "id": eval_id, "created_at": report["created_at"], "code_version": code_version(),
            "pipeline": config.name, "config_hash": config.section_hash("eval", "prompt", "output"),
            "run": {"id": run_manifest["id"], "config_hash": run_manifest.get("config_hash"),
                    "manifest_sha256": file_sha256(run_path / "manifest.json")},
            "split": {"id": split_manifest["id"], "config_hash": split_manifest.get("config_hash")},
            "dataset": run_manifest.get("dataset"),
            "champion": {"run_id": champion.run_id, "registry_version": champion.registry_version} if champion else None,
            "suites": {s.name: {"items": len(s.items), "source": s.source, "sha256": s.sha256} for s in suites},
            "cache": cache_stats,
            "gate": {"passed": report["gate"]["passed"], "failed": report["gate"]["failed"]},
            "timings": {**timings, "total_s": round(time.perf_counter() - started, 2)},
        }
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    set_latest(out_root, eval_id)
    _track(config, run_manifest, report, final, log)
    return EvalResult(eval_id, final, report, skipped=False)


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
