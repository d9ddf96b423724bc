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
import json
import random
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipelines.answers import is_cited_answer, parse_answer
from pipelines.clock import memory_peak_mb, restart_memory_peak
from pipelines.config import OutputConfig, PipelineConfig, SplitConfig
from pipelines.contracts import ContractError, CurateManifest, read_manifest
from pipelines.minhash import MinHasher
from pipelines.openai_format import billing_estimate, check_lines
from pipelines.split_index import (
    CuratedLineError,
    ExampleIndex,
    Keys,
    build_index,
    group_labels,
    leaks,
    near_regression_mask,
)
from pipelines.split_preferences import SetLookup, iter_pairs, write_preferences
from pipelines.split_write import HFSetWriter, Written, hf_row, write_examples
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
    question share it (split_index.group_labels on their keys)."""
    return group_labels(Keys.of(examples, hasher))


def stratified_group_fold(labels: Any, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of one fold holding about `fraction` of the examples, stratified by label,
    never splitting a group. `labels`: the label names, or integer codes in the names' sorted
    order (scikit-learn encodes names by np.unique, so both give the same fold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1 / fraction))
    n_groups = len(np.unique(groups))
    if n_groups < n_splits:
        raise SplitError(f"only {n_groups} independent groups; {n_splits} are needed for this split")
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
    items = [e for examples in sets.values() for e in examples]
    codes = np.repeat(np.arange(len(sets)), [len(v) for v in sets.values()])
    return leaks(Keys.of(items, hasher), codes, list(sets), hasher, lambda rows: [items[i] for i in rows.tolist()])


def raise_on_leaks(found: list[dict[str, Any]]) -> None:
    if found:
        shown = "\n".join(f"  {x['a']}  <->  {x['b']}  (similarity {x['similarity']})" for x in found[:20])
        more = f"\n  ... and {len(found) - 20} more" if len(found) > 20 else ""
        raise LeakageError(f"{len(found)} question(s) leak across sets:\n{shown}{more}")


def check_leakage(sets: dict[str, list[dict[str, Any]]], hasher: MinHasher) -> None:
    raise_on_leaks(find_leaks(sets, hasher))


def check_leakage_rows(index: ExampleIndex, train: np.ndarray, validation: np.ndarray,
                       regression: list[dict[str, Any]], hasher: MinHasher) -> None:
    """find_leaks over train and validation as rows of the index, and the regression set."""
    rows = np.concatenate([train, validation])
    keys = Keys.concat([index.keys.take(rows), Keys.of(regression, hasher)])
    codes = np.repeat(np.arange(3), [len(train), len(validation), len(regression)])

    def fetch(positions: np.ndarray) -> list[dict[str, Any]]:
        mine = positions[positions < len(rows)]
        return index.read(rows[mine]) + [regression[p - len(rows)] for p in positions[len(mine):].tolist()]

    raise_on_leaks(leaks(keys, codes, ["train", "validation", "regression"], hasher, fetch))


# --------------------------------------------------------------------------- the regression set


def load_regression(path: Path) -> list[dict[str, Any]]:
    return list(iter_jsonl(path)) if path.exists() else []


def near_regression(examples: list[dict[str, Any]], regression: list[dict[str, Any]], hasher: MinHasher) -> set[int]:
    """Indices of examples that are, or are near, a regression item: kept out forever."""
    mask = near_regression_mask(Keys.of(examples, hasher), Keys.of(regression, hasher))
    return set(np.flatnonzero(mask).tolist())


# --------------------------------------------------------------------------- the stage


def _token_count(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> int:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def _stats(values: list[int] | np.ndarray) -> dict[str, Any]:
    if len(values) == 0:
        return {"examples": 0}
    arr = np.asarray(values)
    return {"examples": len(values), "total": int(arr.sum()), "mean": round(float(arr.mean()), 1),
            "median": int(np.median(arr)), "p95": int(np.percentile(arr, 95)), "max": int(arr.max())}


def choose_few_shot(train: list[dict[str, Any]], k: int, seed: int, output: OutputConfig) -> list[dict[str, Any]]:
    """k RAG examples from train for the baseline prompt (few_shot_rows on parsed examples)."""
    rag = np.array([e.get("kind", "rag") == "rag" for e in train], dtype=bool)
    refusal = np.array([bool(r) and parse_answer(e["ideal_answer"], output.format, output.idk_answer).refusal
                        for e, r in zip(train, rag)], dtype=bool)
    cited = np.array([bool(r) and is_cited_answer(e["ideal_answer"], output) for e, r in zip(train, rag)], dtype=bool)
    codes: dict[str, int] = {}
    labels = np.array([codes.setdefault(e["label"], len(codes)) for e in train], dtype=np.int64)
    rows = few_shot_rows(rag, refusal, cited, labels, k, seed, lambda ps: [train[p] for p in ps])
    return [train[p] for p in rows]


def few_shot_rows(rag: np.ndarray, refusal: np.ndarray, cited: np.ndarray, labels: np.ndarray, k: int, seed: int,
                  fetch: Callable[[list[int]], list[dict[str, Any]]]) -> list[int]:
    """Positions in train of k RAG examples for the baseline prompt: one "I don't know" when
    there is one, the rest answered with citations and spread over labels. The answers are
    read by the answer contract, not matched as text (curate writes compact JSON)."""
    if k <= 0:
        return []
    rng = random.Random(seed)
    idk = np.flatnonzero(rag & refusal).tolist()
    answered = np.flatnonzero(rag & cited).tolist()
    rng.shuffle(answered)
    room = k - (1 if idk else 0)
    chosen: list[int] = []
    labels_used: set[int] = set()
    for p in answered:  # first pass: one per label
        if len(chosen) >= room:
            break
        if labels[p] not in labels_used:
            chosen.append(p)
            labels_used.add(labels[p])
    chosen_examples = fetch(chosen)
    for p in answered:
        if len(chosen) >= room:
            break
        [example] = fetch([p])
        if example not in chosen_examples:  # by value, as a list of examples compares
            chosen.append(p)
            chosen_examples.append(example)
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


def grow_regression(index: ExampleIndex, before: list[dict[str, Any]], config: PipelineConfig,
                    hasher: MinHasher, dataset_id: str, split_id: str) -> list[dict[str, Any]]:
    """The examples newly drawn into the frozen regression set: `size` by the first split,
    `append` by each later one (0 keeps it as it is); whole groups, stratified by label."""
    cfg = config.split
    wanted = cfg.regression.size if not before else cfg.regression.append
    if wanted <= 0:
        return []
    outside = near_regression_mask(index.keys, Keys.of(before, hasher))
    rag = np.flatnonzero(~outside & index.rag)
    needed = wanted + cfg.min_validation + cfg.min_train
    if len(rag) < needed:
        raise SplitError(
            f"dataset {dataset_id} has {len(rag)} RAG examples outside the regression set; "
            f"drawing {wanted} regression examples and keeping {cfg.min_validation} for validation and "
            f"{cfg.min_train} for training needs at least {needed}"
        )
    rag_groups = group_labels(index.keys.take(rag))
    fold = stratified_group_fold(index.labels[rag], rag_groups, wanted / len(rag), cfg.seed + 1)
    drawn = rag[np.isin(rag_groups, rag_groups[fold])]
    return [{**e, "regression_added_by": split_id} for e in index.read(drawn)]


def train_validation(index: ExampleIndex, pool: np.ndarray, cfg: SplitConfig,
                     dataset_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation rows from the `pool` rows the regression set leaves: stratified by
    label, whole groups."""
    needed = max(cfg.min_validation + cfg.min_train, int(np.ceil(cfg.min_validation / cfg.validation_fraction)))
    if len(pool) < needed:
        raise SplitError(
            f"dataset {dataset_id} leaves {len(pool)} examples for train and validation; "
            f"validation_fraction {cfg.validation_fraction} with min_validation {cfg.min_validation} and "
            f"min_train {cfg.min_train} needs at least {needed}"
        )
    groups = group_labels(index.keys.take(pool))
    in_validation = np.zeros(len(pool), dtype=bool)
    in_validation[stratified_group_fold(index.labels[pool], groups, cfg.validation_fraction, cfg.seed)] = True
    train, validation = pool[~in_validation], pool[in_validation]
    if len(validation) < cfg.min_validation or len(train) < cfg.min_train:
        raise SplitError(
            f"the split gave {len(train)} train and {len(validation)} validation examples; the config asks for at "
            f"least {cfg.min_train} and {cfg.min_validation}: add data or lower split.min_validation"
        )
    return train, validation


def jsonl_bytes(items: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in items)


def exports_section(tmp: Path, written: Written, regression: list[dict[str, Any]], config: PipelineConfig,
                    tokenizer: Any) -> dict[str, Any]:
    """Check the written OpenAI exports with OpenAI's format checks, give their token
    statistics and estimate the fine-tuning bill."""
    format_checks: dict[str, Any] = {}
    token_stats: dict[str, Any] = {}
    for name in ("train", "validation"):
        with open(tmp / f"{name}.openai.jsonl", "rb") as handle:
            report = check_lines(handle)
        format_checks[name] = {"ok": report.ok, "examples": report.examples, "problems": report.problems(),
                               "missing_system": report.missing_system, "missing_user": report.missing_user}
        if not report.ok:
            raise SplitError(f"{name}.openai.jsonl fails OpenAI's format checks: " + "; ".join(report.problems()))
        token_stats[name] = _stats(written.lengths[name])
    token_stats["regression"] = _stats([_token_count(tokenizer, render_messages(e, config.prompt, config.output))
                                        for e in regression])
    openai = config.split.openai
    epochs = None if openai.n_epochs == "auto" else openai.n_epochs
    billing = billing_estimate(written.lengths["train"].tolist(), openai.max_tokens_per_example,
                               openai.price_per_million_tokens, epochs)
    return {"tokens": token_stats,
            "over_max_seq_tokens": {name: int(np.count_nonzero(lengths > config.model.max_seq_tokens))
                                    for name, lengths in written.lengths.items()},
            "openai": {"format_checks": format_checks, "billing": billing}}


def write_baseline_prompt(tmp: Path, written: Written, shots: list[dict[str, Any]],
                          config: PipelineConfig) -> dict[str, Any]:
    """The baseline prompt, frozen with the split so eval uses exactly these shots; returns
    the prompt tokens per validation query of the fine-tune and of the baseline."""
    (tmp / "baseline_prompt.json").write_bytes(dumps({
        "system": config.prompt.baseline_system.replace("{idk}", config.output.idk_answer),
        "few_shot_ids": [e["id"] for e in shots],
        "few_shot": shots,
    }))
    return {"prompt_tokens_per_query": {k: round(total / count, 1) if count else 0
                                        for k, (total, count) in written.prompt_tokens.items()}}


def describe_split(index: ExampleIndex, rows: dict[str, np.ndarray], regression: list[dict[str, Any]],
                   excluded: int, regression_path: Path, before: list[dict[str, Any]],
                   drawn: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's counts, labels, groups and regression-set bookkeeping."""
    labels = {name: {index.label_names[code]: int(n) for code, n in
                     enumerate(np.bincount(index.labels[r], minlength=len(index.label_names))) if n}
              for name, r in rows.items()}
    return {
        "counts": {name: len(r) for name, r in rows.items()} | {"regression": len(regression)}
        | {"curated": len(index), "held_out_for_regression": excluded},
        "labels": labels | {"regression": dict(sorted(Counter(e["label"] for e in regression).items()))},
        # Distinct cluster ids, "none" counting as one, as a set of the values would.
        "groups": {name: len(np.unique(index.keys.clusters[r])) for name, r in rows.items()},
        "regression": {
            "path": str(regression_path),
            "carried_forward": len(before),
            "drawn": len(drawn) if not before else 0,
            "appended": len(drawn) if before else 0,
            "size": len(regression),
            "sha256": hashlib.sha256(jsonl_bytes(regression)).hexdigest(),
        },
    }


def assign_sets(config: PipelineConfig, source: CuratedSource, stage: Stage, hasher: MinHasher,
                regression_before: list[dict[str, Any]]) -> tuple[ExampleIndex, dict[str, np.ndarray],
                                                                   list[dict[str, Any]], list[dict[str, Any]], int]:
    """Steps 2-5 of the recipe on the index: the rows of train and validation, the regression
    set (carried forward + drawn), what was drawn and how many examples were held out."""
    try:
        index = build_index(source.path / "examples.jsonl", hasher, config.output)
    except CuratedLineError as exc:
        raise SplitError(str(exc)) from None
    drawn = grow_regression(index, regression_before, config, hasher, source.id, stage.ident)
    regression = regression_before + drawn
    # Whatever is, or is near, a regression item stays out of train and validation forever.
    # The first split and every later one take this same path, so a forced re-split of the
    # same data gives the same sets.
    excluded = near_regression_mask(index.keys, Keys.of(regression, hasher))
    train, validation = train_validation(index, np.flatnonzero(~excluded), config.split, source.id)
    check_leakage_rows(index, train, validation, regression, hasher)
    return index, {"train": train, "validation": validation}, regression, drawn, int(excluded.sum())


def split(config: PipelineConfig, *, force: bool = False, tokenizer: Any = None) -> SplitResult:
    """The recipe of the module docstring, step by step."""
    started = time.perf_counter()
    restart_memory_peak()
    source = read_curated(config)
    regression_path = config.regression_path()
    stage = identify(config, source)
    if not force and (done := finished_split(stage, regression_path)) is not None:
        return SplitResult(stage.ident, stage.final, done, skipped=True)

    hasher = _hasher(config)
    regression_before = load_regression(regression_path)
    index, rows, regression, drawn, excluded = assign_sets(config, source, stage, hasher, regression_before)
    if tokenizer is None:
        from pipelines.models import load_tokenizer

        tokenizer = load_tokenizer(config.model.base)
    train = rows["train"]
    shot_rows = few_shot_rows(index.rag[train], index.refusal[train], index.cited[train], index.labels[train],
                              config.prompt.few_shot, config.split.seed, lambda ps: index.read(train[ps]))
    shots = index.read(train[shot_rows])
    where = np.full(len(index), -1, dtype=np.int8)
    where[rows["train"]], where[rows["validation"]] = 0, 1
    with stage.commit(latest=False) as tmp:
        write_bytes_atomic(tmp / "regression.jsonl", jsonl_bytes(regression))
        written = write_examples(tmp, index, where, config, tokenizer, shots)
        exports = exports_section(tmp, written, regression, config, tokenizer)
        baseline = write_baseline_prompt(tmp, written, shots, config)
        # Each pair goes where its example went (curate's pairs carry the example's id).
        lookup = SetLookup({"train": index.keys.ids[rows["train"]], "validation": index.keys.ids[rows["validation"]],
                            "regression": Keys.of(regression, hasher).ids})
        preferences = write_preferences(tmp, iter_pairs(source.path), lookup, config,
                                        lambda messages: _token_count(tokenizer, messages))
        _write_hf_copy(tmp / "hf", written, regression, config)
        dataset = {"id": source.id, "path": str(source.path), "examples_sha256": source.examples_sha256}
        manifest = (stage.base_manifest(config, CONFIG_SECTIONS, dataset=dataset, seed=config.split.seed)
                    | describe_split(index, rows, regression, excluded, regression_path, regression_before, drawn)
                    | exports | baseline | preferences
                    | {"few_shot_ids": [e["id"] for e in shots],
                       "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
                       "timings": {"total_s": round(time.perf_counter() - started, 3),
                                   "peak_rss_mb": memory_peak_mb()}})
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    # The regression set is pipeline state: written only after the split landed.
    if drawn:
        write_bytes_atomic(regression_path, jsonl_bytes(regression))
    stage.mark_latest()
    return SplitResult(stage.ident, stage.final, manifest, skipped=False)


def _write_hf_copy(target: Path, written: Written, regression: list[dict[str, Any]], config: PipelineConfig) -> None:
    """Finish the `datasets.DatasetDict` on disk (`load_from_disk`), with the rendered messages:
    train and validation were written by the streaming pass; the regression set and the
    dict's index are written here."""
    for name in ("train", "validation"):
        written.hf[name].close()
    writer = HFSetWriter(target / "regression")
    for e in regression:
        writer.add(hf_row(e, render_messages(e, config.prompt, config.output)))
    writer.close()
    with open(target / "dataset_dict.json", "w", encoding="utf-8") as handle:
        json.dump({"splits": ["train", "validation", "regression"]}, handle)
