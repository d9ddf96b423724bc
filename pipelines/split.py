"""split: a curated dataset -> leakage-free train / validation sets, the frozen regression
set, and validated OpenAI chat files.

Read top to bottom, the recipe is:

1. Pick the curated dataset (the newest unless named) and hash it with the config; an
   existing split with the same hash and the same regression set means nothing to do. A
   rebuild (`--force`, or a changed regression set) is written beside the old split and
   swapped in only when whole (`stage.Stage`).
2. Group examples that must stay together: one near-duplicate cluster (the curate stage's
   cluster ids, plus the same MinHash over all questions again, so general instructions and
   examples of different curations are covered too) or one session is one group.
3. The frozen regression set: loaded as stored with the pipeline and carried forward
   unchanged; drawn (stratified by label, whole groups) only by the first split; appended to
   only when the config asks. Anything near it is kept out of train and validation forever.
4. Train / validation: scikit-learn's StratifiedGroupKFold, one fold as validation.
5. The leakage check: no exact or near duplicate question across the three sets.
6. Write our records, the OpenAI chat exports (rendered by the one prompt template), a
   Hugging Face `datasets` copy and the baseline's few-shot prompt; validate the exports with
   OpenAI's format checks; count tokens and estimate the fine-tuning bill. Preference pairs
   follow their examples into train and validation (pipelines/split_preferences.py).
"""

from __future__ import annotations

import hashlib
import random
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipelines.answers import is_cited_answer, parse_answer
from pipelines.config import OutputConfig, PipelineConfig, SplitConfig
from pipelines.contracts import ContractError, CurateManifest, read_manifest
from pipelines.minhash import MinHasher, band_collisions, components, text_fingerprint
from pipelines.openai_format import billing_estimate, check_file
from pipelines.split_preferences import read_pairs, write_preferences
from pipelines.stage import Stage
from pipelines.storage import (
    code_version,
    dumps,
    file_sha256,
    iter_jsonl,
    resolve_stage_output,
    write_bytes_atomic,
)
from pipelines.template import render_messages

# The config sections a split reads: changing any of them makes a new split.
CONFIG_SECTIONS = ("split", "model", "output", "prompt")


class SplitError(ValueError):
    """A split that cannot be made as configured; the message says what is needed."""


class LeakageError(SplitError):
    """The same or a near-duplicate question in two sets."""


@dataclass
class SplitResult:
    split_id: str
    path: Path
    manifest: dict[str, Any]
    skipped: bool


def _hasher(config: PipelineConfig) -> MinHasher:
    d = config.curate.dedup  # the same settings as curate, so "duplicate" means one thing
    return MinHasher(d.num_perm, d.ngram, d.threshold, d.seed)


def resolve_dataset(config: PipelineConfig) -> Path:
    return resolve_stage_output(Path(config.curate.output_dir), config.split.dataset, "curated dataset",
                                "curate", SplitError)


# --------------------------------------------------------------------------- grouping


def group_ids(examples: list[dict[str, Any]], hasher: MinHasher) -> np.ndarray:
    """One integer per example; examples sharing a cluster id, a session or a near-duplicate
    question share it."""
    n = len(examples)
    rows, cols = band_collisions(hasher.keys([e["query"] for e in examples]))
    extra_rows, extra_cols = [rows], [cols]
    for key in ("cluster_id", "session_id"):
        first: dict[str, int] = {}
        pairs = []
        for i, e in enumerate(examples):
            value = e.get(key)
            if value is None:
                continue
            if value in first:
                pairs.append((i, first[value]))
            else:
                first[value] = i
        if pairs:
            arr = np.asarray(pairs, dtype=np.int64)
            extra_rows.append(arr[:, 0])
            extra_cols.append(arr[:, 1])
    return components(n, np.concatenate(extra_rows), np.concatenate(extra_cols))


def stratified_group_fold(labels: list[str], groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of one fold holding about `fraction` of the examples, stratified by label,
    never splitting a group."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    if len(set(groups.tolist())) < n_splits:
        raise SplitError(f"only {len(set(groups.tolist()))} independent groups; {n_splits} are needed for this split")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # Labels rarer than n_splits cannot appear in every fold; that is expected here.
        warnings.simplefilter("ignore", UserWarning)
        _, fold = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return np.sort(fold)


# --------------------------------------------------------------------------- leakage


def find_leaks(sets: dict[str, list[dict[str, Any]]], hasher: MinHasher) -> list[dict[str, Any]]:
    """Pairs of examples in different sets whose questions are the same (after
    normalisation) or near-duplicates (estimated Jaccard >= the dedup threshold), or that
    share an id."""
    names, items = [], []
    for name, examples in sets.items():
        for e in examples:
            names.append(name)
            items.append(e)
    if not items:
        return []
    queries = [e["query"] for e in items]
    signatures = hasher.signatures(queries)
    rows, cols = band_collisions(hasher.band_keys(signatures))
    prints = [text_fingerprint(q) for q in queries]
    fingerprints: dict[int, int] = {}
    ids: dict[str, int] = {}
    for i, e in enumerate(items):
        fp = prints[i]
        if fp in fingerprints:
            rows, cols = np.append(rows, i), np.append(cols, fingerprints[fp])
        fingerprints.setdefault(fp, i)
        if e["id"] in ids:
            rows, cols = np.append(rows, i), np.append(cols, ids[e["id"]])
        ids.setdefault(e["id"], i)
    leaks, seen = [], set()
    for i, j in zip(rows.tolist(), cols.tolist()):
        if names[i] == names[j] or (min(i, j), max(i, j)) in seen:
            continue
        seen.add((min(i, j), max(i, j)))
        similarity = float((signatures[i] == signatures[j]).mean())
        exact = prints[i] == prints[j] or items[i]["id"] == items[j]["id"]
        if exact or similarity >= hasher.threshold:
            a, b = sorted([(names[i], items[i]["id"]), (names[j], items[j]["id"])])
            leaks.append({"a": f"{a[0]}:{a[1]}", "b": f"{b[0]}:{b[1]}", "similarity": 1.0 if exact else round(similarity, 3)})
    return sorted(leaks, key=lambda x: (x["a"], x["b"]))


def check_leakage(sets: dict[str, list[dict[str, Any]]], hasher: MinHasher) -> None:
    leaks = find_leaks(sets, hasher)
    if leaks:
        shown = "\n".join(f"  {x['a']}  <->  {x['b']}  (similarity {x['similarity']})" for x in leaks[:20])
        more = f"\n  ... and {len(leaks) - 20} more" if len(leaks) > 20 else ""
        raise LeakageError(f"{len(leaks)} question(s) leak across sets:\n{shown}{more}")


# --------------------------------------------------------------------------- the regression set


def load_regression(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path)) if path.exists() else []


def near_regression(examples: list[dict[str, Any]], regression: list[dict[str, Any]], hasher: MinHasher) -> set[int]:
    """Indices of examples that are, or are near, a regression item: kept out forever."""
    if not regression:
        return set()
    combined = regression + examples
    groups = group_ids([{"query": e["query"], "id": e["id"]} for e in combined], hasher)
    reg_groups = set(groups[: len(regression)].tolist())
    reg_ids = {e["id"] for e in regression}
    reg_clusters = {e.get("cluster_id") for e in regression} - {None}
    # New turns of a session already in the regression set stay out too.
    reg_sessions = {e.get("session_id") for e in regression} - {None}
    return {i for i, e in enumerate(examples)
            if groups[len(regression) + i] in reg_groups or e["id"] in reg_ids
            or e.get("cluster_id") in reg_clusters or e.get("session_id") in reg_sessions}


# --------------------------------------------------------------------------- the stage


def _token_count(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def _stats(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"examples": 0}
    arr = np.asarray(values)
    return {"examples": len(values), "total": int(arr.sum()), "mean": round(float(arr.mean()), 1),
            "median": int(np.median(arr)), "p95": int(np.percentile(arr, 95)), "max": int(arr.max())}


def choose_few_shot(train: list[dict[str, Any]], k: int, seed: int, output: OutputConfig) -> list[dict[str, Any]]:
    """k RAG examples from train for the baseline prompt: one "I don't know" when there is
    one, the rest answered with citations and spread over labels."""
    if k <= 0:
        return []
    rng = random.Random(seed)
    rag = [e for e in train if e.get("kind", "rag") == "rag"]
    # Read by the answer contract, not matched as text (curate writes compact JSON).
    idk = [e for e in rag if parse_answer(e["ideal_answer"], output.format, output.idk_answer).refusal]
    answered = [e for e in rag if is_cited_answer(e["ideal_answer"], output)]
    rng.shuffle(answered)
    chosen: list[dict[str, Any]] = []
    labels_used: set[str] = set()
    for e in answered:  # first pass: one per label
        if len(chosen) >= k - (1 if idk else 0):
            break
        if e["label"] not in labels_used:
            chosen.append(e)
            labels_used.add(e["label"])
    for e in answered:
        if len(chosen) >= k - (1 if idk else 0):
            break
        if e not in chosen:
            chosen.append(e)
    if idk:
        chosen.insert(len(chosen) // 2, rng.choice(idk))
    return chosen[:k]


@dataclass(frozen=True)
class CuratedSource:
    """The curated dataset a split reads: its folder, validated manifest and examples hash."""

    path: Path
    manifest: dict[str, Any]
    examples_sha256: str

    @property
    def id(self) -> str:
        return self.manifest["id"]


def read_curated(config: PipelineConfig) -> CuratedSource:
    path = resolve_dataset(config)
    try:
        manifest = read_manifest(path / "manifest.json", CurateManifest)
    except ContractError as exc:
        raise SplitError(str(exc)) from None
    return CuratedSource(path, manifest, file_sha256(path / "examples.jsonl"))


def identify(config: PipelineConfig, source: CuratedSource) -> Stage:
    """The split's id: a hash of the dataset, the config sections it reads and the code."""
    return Stage.identify("split", "spl", Path(config.split.output_dir), {
        "dataset": source.id, "examples": source.examples_sha256,
        "config": config.section_hash(*CONFIG_SECTIONS),
        "dedup": config.curate.dedup.model_dump(), "name": config.name, "code": code_version(__name__),
    }, code_module=__name__)


def finished_split(stage: Stage, regression_path: Path) -> dict[str, Any] | None:
    """The manifest of this split when it exists and was made with today's regression set."""
    current = file_sha256(regression_path) if regression_path.exists() else None
    return stage.finished(still_valid=lambda manifest: manifest["regression"]["sha256"] == current)


def grow_regression(examples: list[dict[str, Any]], before: list[dict[str, Any]], config: PipelineConfig,
                    hasher: MinHasher, dataset_id: str, split_id: str) -> list[dict[str, Any]]:
    """The examples newly drawn into the frozen regression set: `size` by the first split,
    `append` by each later one (0 keeps it as it is); whole groups, stratified by label."""
    cfg = config.split
    wanted = cfg.regression.size if not before else cfg.regression.append
    if wanted <= 0:
        return []
    outside = near_regression(examples, before, hasher)
    rag = [e for i, e in enumerate(examples) if i not in outside and e.get("kind", "rag") == "rag"]
    needed = wanted + cfg.min_validation + cfg.min_train
    if len(rag) < needed:
        raise SplitError(
            f"dataset {dataset_id} has {len(rag)} RAG examples outside the regression set; "
            f"drawing {wanted} regression examples and keeping {cfg.min_validation} for validation and "
            f"{cfg.min_train} for training needs at least {needed}"
        )
    rag_groups = group_ids(rag, hasher)
    fold = stratified_group_fold([e["label"] for e in rag], rag_groups, wanted / len(rag), cfg.seed + 1)
    chosen = set(rag_groups[fold].tolist())
    return [{**e, "regression_added_by": split_id} for e, g in zip(rag, rag_groups.tolist()) if g in chosen]


def train_validation(pool: list[dict[str, Any]], cfg: SplitConfig, hasher: MinHasher,
                     dataset_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train and validation from what the regression set leaves: stratified by label, whole groups."""
    needed = max(cfg.min_validation + cfg.min_train, int(np.ceil(cfg.min_validation / cfg.validation_fraction)))
    if len(pool) < needed:
        raise SplitError(
            f"dataset {dataset_id} leaves {len(pool)} examples for train and validation; "
            f"validation_fraction {cfg.validation_fraction} with min_validation {cfg.min_validation} and "
            f"min_train {cfg.min_train} needs at least {needed}"
        )
    groups = group_ids(pool, hasher)
    validation_index = set(stratified_group_fold([e["label"] for e in pool], groups, cfg.validation_fraction,
                                                 cfg.seed).tolist())
    train = [e for i, e in enumerate(pool) if i not in validation_index]
    validation = [e for i, e in enumerate(pool) if i in validation_index]
    if len(validation) < cfg.min_validation or len(train) < cfg.min_train:
        raise SplitError(
            f"the split gave {len(train)} train and {len(validation)} validation examples; the config asks for at "
            f"least {cfg.min_train} and {cfg.min_validation}: add data or lower split.min_validation"
        )
    return train, validation


def jsonl_bytes(items: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in items)


def write_openai_exports(tmp: Path, sets: dict[str, list[dict[str, Any]]], config: PipelineConfig,
                         tokenizer: Any) -> dict[str, Any]:
    """Write <set>.openai.jsonl for train and validation, check them with OpenAI's format
    checks, count their tokens and estimate the fine-tuning bill."""
    lengths: dict[str, list[int]] = {}
    format_checks: dict[str, Any] = {}
    token_stats: dict[str, Any] = {}
    for name in ("train", "validation"):
        lines, lengths[name] = [], []
        for e in sets[name]:
            messages = render_messages(e, config.prompt, config.output)
            lines.append(orjson.dumps({"messages": messages}) + b"\n")
            lengths[name].append(_token_count(tokenizer, messages))
        path = tmp / f"{name}.openai.jsonl"
        write_bytes_atomic(path, b"".join(lines))
        report = check_file(path)
        format_checks[name] = {"ok": report.ok, "examples": report.examples, "problems": report.problems(),
                               "missing_system": report.missing_system, "missing_user": report.missing_user}
        if not report.ok:
            raise SplitError(f"{name}.openai.jsonl fails OpenAI's format checks: " + "; ".join(report.problems()))
        token_stats[name] = _stats(lengths[name])
    token_stats["regression"] = _stats([_token_count(tokenizer, render_messages(e, config.prompt, config.output))
                                        for e in sets["regression"]])
    openai = config.split.openai
    epochs = None if openai.n_epochs == "auto" else openai.n_epochs
    billing = billing_estimate(lengths["train"], openai.max_tokens_per_example, openai.price_per_million_tokens, epochs)
    return {"tokens": token_stats,
            "over_max_seq_tokens": {name: sum(n > config.model.max_seq_tokens for n in lengths[name])
                                    for name in lengths},
            "openai": {"format_checks": format_checks, "billing": billing}}


def write_baseline_prompt(tmp: Path, validation: list[dict[str, Any]], shots: list[dict[str, Any]],
                          config: PipelineConfig, tokenizer: Any) -> dict[str, Any]:
    """The baseline prompt, frozen with the split so eval uses exactly these shots; returns
    the prompt tokens per validation query of the fine-tune and of the baseline."""
    prompt_tokens: dict[str, list[int]] = {"finetune": [], "baseline": []}
    for e in validation:
        if e.get("kind", "rag") != "rag":
            continue
        prompt_tokens["finetune"].append(_token_count(
            tokenizer, render_messages(e, config.prompt, config.output, with_answer=False), True))
        prompt_tokens["baseline"].append(_token_count(
            tokenizer, render_messages(e, config.prompt, config.output, with_answer=False, baseline_shots=shots), True))
    (tmp / "baseline_prompt.json").write_bytes(dumps({
        "system": config.prompt.baseline_system.replace("{idk}", config.output.idk_answer),
        "few_shot_ids": [e["id"] for e in shots],
        "few_shot": shots,
    }))
    return {"prompt_tokens_per_query": {k: round(float(np.mean(v)), 1) if v else 0 for k, v in prompt_tokens.items()}}


def describe_split(sets: dict[str, list[dict[str, Any]]], curated: int, excluded: int,
                   regression_path: Path, before: list[dict[str, Any]], drawn: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's counts, labels, groups and regression-set bookkeeping."""
    return {
        "counts": {name: len(items) for name, items in sets.items()}
        | {"curated": curated, "held_out_for_regression": excluded},
        "labels": {name: dict(sorted(Counter(e["label"] for e in items).items())) for name, items in sets.items()},
        "groups": {name: len({e.get("cluster_id") for e in sets[name]}) for name in ("train", "validation")},
        "regression": {
            "path": str(regression_path),
            "carried_forward": len(before),
            "drawn": len(drawn) if not before else 0,
            "appended": len(drawn) if before else 0,
            "size": len(sets["regression"]),
            "sha256": hashlib.sha256(jsonl_bytes(sets["regression"])).hexdigest(),
        },
    }


def split(config: PipelineConfig, *, force: bool = False, tokenizer: Any = None) -> SplitResult:
    """The recipe of the module docstring, step by step."""
    started = time.perf_counter()
    source = read_curated(config)
    regression_path = config.regression_path()
    stage = identify(config, source)
    if not force and (done := finished_split(stage, regression_path)) is not None:
        return SplitResult(stage.ident, stage.final, done, skipped=True)

    examples = list(iter_jsonl(source.path / "examples.jsonl"))
    hasher = _hasher(config)
    regression_before = load_regression(regression_path)
    drawn = grow_regression(examples, regression_before, config, hasher, source.id, stage.ident)
    regression = regression_before + drawn
    # Whatever is, or is near, a regression item stays out of train and validation forever.
    # The first split and every later one take this same path, so a forced re-split of the
    # same data gives the same sets.
    excluded = near_regression(examples, regression, hasher)
    pool = [e for i, e in enumerate(examples) if i not in excluded]
    train, validation = train_validation(pool, config.split, hasher, source.id)
    sets = {"train": train, "validation": validation, "regression": regression}
    check_leakage(sets, hasher)

    if tokenizer is None:
        from pipelines.models import load_tokenizer

        tokenizer = load_tokenizer(config.model.base)
    shots = choose_few_shot(train, config.prompt.few_shot, config.split.seed, config.output)
    with stage.commit(latest=False) as tmp:
        for name, items in sets.items():
            write_bytes_atomic(tmp / f"{name}.jsonl", jsonl_bytes(items))
        exports = write_openai_exports(tmp, sets, config, tokenizer)
        baseline = write_baseline_prompt(tmp, validation, shots, config, tokenizer)
        # Each pair goes where its example went (curate's pairs carry the example's id).
        preferences = write_preferences(tmp, read_pairs(source.path), sets, config,
                                        lambda messages: _token_count(tokenizer, messages))
        _write_hf_copy(tmp / "hf", sets, config)
        dataset = {"id": source.id, "path": str(source.path), "examples_sha256": source.examples_sha256}
        manifest = (stage.base_manifest(config, CONFIG_SECTIONS, dataset=dataset, seed=config.split.seed)
                    | describe_split(sets, len(examples), len(excluded), regression_path, regression_before, drawn)
                    | exports | baseline | preferences
                    | {"few_shot_ids": [e["id"] for e in shots],
                       "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
                       "timings": {"total_s": round(time.perf_counter() - started, 3)}})
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    # The regression set is pipeline state: written only after the split landed.
    if drawn:
        write_bytes_atomic(regression_path, jsonl_bytes(regression))
    stage.mark_latest()
    return SplitResult(stage.ident, stage.final, manifest, skipped=False)


def _write_hf_copy(target: Path, sets: dict[str, list[dict[str, Any]]], config: PipelineConfig) -> None:
    """A `datasets.DatasetDict` on disk (`load_from_disk`), with the rendered messages."""
    import datasets

    datasets.disable_progress_bars()
    columns = ("id", "kind", "source", "label", "query", "ideal_answer", "cluster_id", "session_id")
    splits = {}
    for name, items in sets.items():
        rows = [{**{c: (None if e.get(c) is None else str(e.get(c))) for c in columns},
                 "contexts": [{"id": c["id"], "text": c["text"]} for c in e.get("contexts") or []],
                 "messages": render_messages(e, config.prompt, config.output)} for e in items]
        features = datasets.Features({
            **{c: datasets.Value("string") for c in columns},
            "contexts": datasets.List({"id": datasets.Value("string"), "text": datasets.Value("string")}),
            "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        })
        splits[name] = datasets.Dataset.from_list(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(target))
