"""curate: RAG failure logs -> routed, scrubbed, deduplicated training examples.

`curate()` is the recipe; each step is a named method below:

1. Resolve the inputs and hash them with the config (`Inputs`, `Stage`); an existing
   dataset with the same id means there is nothing to do.
2. Cut the inputs into shards at line boundaries and read each once, on every core
   (`curate.workers`) or a Ray cluster (`curate.engine`; pipelines/curate_engine.py). A
   line that is not a valid record goes to `quarantine.jsonl` with its file, line number
   and reason (pipelines/records.py). A valid record is routed by the failure taxonomy
   (pipelines/routing.py): knowledge failures become RAG backlog entries, never training
   data; behaviour failures with a reviewer's ideal answer become training candidates; an
   unlabelled failure is labelled by rules first. Text is scrubbed of PII and secrets the
   moment it is read, so nothing downstream ever holds a raw value (pipelines/curate_shard.py).
3. Shard results are merged in input order (`CurateRun.merge`): candidates and their MinHash
   band keys stay spooled on disk; memory holds 13 bytes per candidate, never the text
   (`Candidates`).
4. Near-duplicate clusters are found from the band keys, read one band at a time; each keeps
   its best-ranked copy.
5. The kept candidates are written as examples, with synthetic "I don't know" examples and a
   share of general instructions added.
6. The backlog, quarantine, report.md, report.html (with the retrieval health of every valid
   record, pipelines/rag_health.py) and manifest are written, and the folder is swapped into
   place. Every input line is in exactly one of kept, quarantined, backlog or filtered.

However many workers or shards, the outputs are byte-identical (only the manifest's
`timings`, `run` and `created_at` describe the run).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import heapq
import random
import shutil
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from pipelines.accounting import Accounting
from pipelines.answers import AnswerContract, content_words
from pipelines.clock import Clock
from pipelines.config import CurateConfig, PipelineConfig
from pipelines.console import warn
from pipelines.curate_engine import plan_shards, run_shards, worker_count
from pipelines.curate_html import render_html, retrieval_markdown
from pipelines.curate_report import Backlog, decide, render_report
from pipelines.curate_shard import POOL, ShardResult, TokenCounter
from pipelines.idk_share import bound_idk, share_summary
from pipelines.minhash import MinHasher, clusters
from pipelines.preferences import PAIR_KEY, PreferenceFile
from pipelines.preferences import render_lines as preference_lines
from pipelines.rag_health import RagHealth
from pipelines.records import sample_general
from pipelines.scrub import Scrubber
from pipelines.sources import content_id, is_url, resolve
from pipelines.stage import Stage
from pipelines.storage import code_version, dumps, file_sha256, skipped_inputs


@dataclass
class CurateResult:
    dataset_id: str
    path: Path
    manifest: dict[str, Any]
    skipped: bool


class Progress:
    """Minimal protocol the CLI's rich progress bar satisfies; a no-op by default."""

    def start(self, total_bytes: int) -> None: ...
    def advance(self, done_bytes: int, records: int) -> None: ...
    def stop(self) -> None: ...


# --------------------------------------------------------------------------- the recipe


def curate(config: PipelineConfig, *, force: bool = False, progress: Progress | None = None,
           tokenizer: Any = None) -> CurateResult:
    progress = progress or Progress()
    clock = Clock()
    inputs = Inputs.resolve(config.curate)
    stage = Stage.identify("curate", "cur", Path(config.curate.output_dir), inputs.key_payload(config),
                           code_module=__name__)
    if not force and (done := stage.finished()) is not None:
        return CurateResult(stage.ident, stage.final, done, skipped=True)
    with clock.excluded("tokenizer_s"):  # the first run converts the tokenizer: not curation time
        tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(config)
        tokens = TokenCounter(tokenizer, config)
    progress.start(sum(inputs.sizes))
    with stage.commit() as tmp:
        run = CurateRun(config, tokens, tmp)
        shards = plan_shards(inputs.files, inputs.sizes, config.curate.shard_bytes)
        with gc_paused():
            for result in run_shards(config, tokens, shards, tmp, sum(inputs.sizes)):
                run.merge(result)
                progress.advance(run.done_bytes, run.accounting.lines["read"])
        run.finish_read()
        clock.lap("read_route_scrub_s")
        run.dedup()
        clock.lap("dedup_s")
        run.write_examples(inputs.general_path)
        backlog_entries = run.write_backlog()
        manifest = run.manifest(stage, inputs, clock.timings())
        report = render_report(manifest, backlog_entries) + "\n".join(preference_lines(manifest))
        (tmp / "report.md").write_text(report + retrieval_markdown(manifest), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(manifest, backlog_entries), encoding="utf-8")
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    progress.stop()
    return CurateResult(stage.ident, stage.final, manifest, skipped=False)


@dataclass(frozen=True)
class Inputs:
    """The log files (local paths or URLs) and the general-instruction file, with their
    content ids (pipelines/sources.py) and sizes."""

    files: list[str]
    hashes: list[tuple[str, str, str]]  # (path, kind: sha256 | etag, value)
    sizes: list[int]
    general_path: Path | None
    general_hash: str | None

    @classmethod
    def resolve(cls, cfg: CurateConfig) -> Inputs:
        files = resolve(cfg.inputs, cfg.storage_options)
        general = Path(cfg.general_mix.path) if cfg.general_mix.path and cfg.general_mix.fraction > 0 else None
        if general is not None and not general.is_file():
            raise FileNotFoundError(f"curate.general_mix.path: {general} does not exist")
        ids = [content_id(p, cfg.storage_options) for p in files]
        return cls(files, [(p, kind, value) for p, (kind, value, _) in zip(files, ids)], [n for *_, n in ids],
                   general, file_sha256(general) if general else None)

    def key_payload(self, config: PipelineConfig) -> dict[str, Any]:
        """What the dataset id hashes: the inputs' contents, the config, the code."""
        return {"inputs": sorted(h if kind == "sha256" else f"{kind}:{h}" for _, kind, h in self.hashes),
                "general": self.general_hash,
                "config": config.section_hash("curate", "model", "output", "prompt"), "code": code_version(__name__)}

    def manifest_entries(self) -> list[dict[str, Any]]:
        return [{"path": p, kind: h, "bytes": n} for (p, kind, h), n in zip(self.hashes, self.sizes)]


def _load_tokenizer(config: PipelineConfig) -> Any:
    from pipelines.models import load_tokenizer

    return load_tokenizer(config.model.base)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector is paused while shards are read and merged: nothing there
    makes reference cycles (refcounting frees everything), and its periodic scans of a
    growing heap cost ~14% of the pass at 400,000 records."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------- candidates & dedup


class Candidates:
    """Training candidates, merged from the shards in input order. Their JSON lines stay in
    the shards' spool files and their MinHash band keys in one file per band (dedup reads one
    band at a time); memory keeps 13 bytes per candidate: its rank, label, whether it came
    from a record (and so counts in the accounting) or was derived, whether its ideal answer
    is a refusal, and its exact-duplicate fingerprint."""

    def __init__(self, bands: int, accounting: Accounting, folder: Path):
        self.accounting = accounting
        self.spools: list[Path] = []
        self.band_paths = [folder / f".bands-{band:02d}.u64" for band in range(bands)]
        self.band_files: list[IO[bytes]] = [open(path, "wb") for path in self.band_paths]
        self.ranks = array("b")
        self.label_names: list[str] = []  # label_of[i] indexes it
        self.label_of = array("H")
        self.from_record, self.refusals = array("b"), array("b")  # 0/1 each
        self.fingerprints = array("Q")
        self.is_rep = np.zeros(0, dtype=bool)  # after dedup: the copy each cluster keeps
        self._label_index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ranks)

    def extend(self, result: ShardResult, spool: Path) -> None:
        self.spools.append(spool)
        self.ranks.extend(result.ranks)
        index = self._label_index
        for label in result.labels:
            if label not in index:
                index[label] = len(self.label_names)
                self.label_names.append(label)
            self.label_of.append(index[label])
        self.from_record.extend(result.from_record)
        self.refusals.extend(result.refusals)
        self.fingerprints.extend(result.fingerprints)
        if len(result.band_keys):
            for band, fh in enumerate(self.band_files):
                fh.write(result.band_keys[:, band].tobytes())

    def label(self, i: int) -> str:
        return self.label_names[self.label_of[i]]

    def _band_columns(self) -> Iterator[np.ndarray]:
        for path in self.band_paths:
            yield np.fromfile(path, dtype=np.uint64)
            path.unlink()

    def dedup(self) -> None:
        """Near-duplicate clusters; each keeps its best-ranked copy (the newest on ties)."""
        n = len(self)
        for fh in self.band_files:
            fh.close()
        cluster_of = clusters(n, self._band_columns())
        order = np.lexsort((np.arange(n), np.frombuffer(self.ranks, dtype=np.int8), cluster_of))
        sorted_clusters = cluster_of[order]
        last_of_cluster = np.r_[sorted_clusters[1:] != sorted_clusters[:-1], True] if n else np.zeros(0, bool)
        representative = np.full(cluster_of.max() + 1 if n else 0, -1, dtype=np.int64)
        representative[sorted_clusters[last_of_cluster]] = order[last_of_cluster]
        self.is_rep = np.zeros(n, dtype=bool)
        self.is_rep[representative[representative >= 0]] = True
        fingerprints = np.frombuffer(self.fingerprints, dtype=np.uint64)
        dropped = np.flatnonzero(~self.is_rep)
        for start in range(0, len(dropped), 65536):  # a slice at a time: a list of them all is 60 bytes each
            chunk = dropped[start:start + 65536]
            exact = fingerprints[chunk] == fingerprints[representative[cluster_of[chunk]]]
            for i, is_exact in zip(chunk.tolist(), exact.tolist()):
                if not self.from_record[i]:
                    self.accounting.drop_added("duplicate")
                else:
                    self.accounting.filter_candidate("duplicate_exact" if is_exact else "duplicate_near", self.label(i))

    def kept(self) -> Iterator[tuple[int, dict[str, Any], bool]]:
        """(index, example with its cluster id, from a record?) of each kept candidate, in
        input order; the spools are removed after."""
        i = 0
        for path in self.spools:
            with open(path, "rb") as spool:
                for line in spool:
                    if self.is_rep[i]:
                        example = orjson.loads(line)
                        example["cluster_id"] = "c-" + hashlib.blake2b(
                            str(self.fingerprints[i]).encode(), digest_size=6).hexdigest()
                        yield i, example, self.from_record[i]
                    i += 1
            path.unlink()


# --------------------------------------------------------------------------- one run


class CurateRun:
    """The state of one curation, written into `tmp` (the folder Stage.commit swaps in)."""

    POOL = POOL  # retrieved-context sets kept (a seeded bottom-k sample) for synthetic IDK examples

    def __init__(self, config: PipelineConfig, tokens: TokenCounter, tmp: Path):
        cfg = self.cfg = config.curate
        self.config, self.tokens, self.tmp = config, tokens, tmp
        self.scrubber = Scrubber(cfg.scrub.extra_patterns, cfg.scrub.phone_regions)
        self.scrub = self.scrubber.scrub
        self.rules = AnswerContract(config.output)
        self.hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.ngram, cfg.dedup.threshold, cfg.dedup.seed)
        self.rng = random.Random(cfg.seed)
        self.accounting = Accounting()
        self.unknown_labels: Counter = Counter()
        self.rule_table: Counter = Counter()
        self.backlog = Backlog()
        self.health = RagHealth(self.rules, self.scrub)  # retrieval metrics over every valid record
        self.candidates = Candidates(self.hasher.bands, self.accounting, tmp)
        self.pool: list[tuple[int, str, int, list[dict[str, str]]]] = []  # the POOL smallest keys
        self.examples = ExampleFile(tmp / "examples.jsonl")
        self.preferences = PreferenceFile(tmp / "preferences.jsonl")
        self.quarantine: IO[bytes] = open(tmp / "quarantine.jsonl", "wb")
        self.general_skipped: Counter = Counter()
        self.notes: list[str] = []
        self.done_bytes = self.shards = 0

    # ----------------------------------------------------------------- 2-3. merge the shards

    def merge(self, result: ShardResult) -> None:
        """Add one shard's result; shards come in input order, so every list keeps input
        order and every dict first-seen order, whatever the number of shards."""
        self.accounting.merge(result.accounting)
        self.unknown_labels.update(result.unknown_labels)
        self.rule_table.update(result.rule_table)
        self.scrubber.counts.update(result.scrubbed)
        self.health.merge(result.health)
        for event in result.backlog:
            self.backlog.apply(event)
        self.pool = heapq.nsmallest(POOL, heapq.merge(self.pool, result.pool, key=_pool_key), key=_pool_key)
        self.preferences.carried += result.carried
        self.candidates.extend(result, self._on_disk(result.spool, result.shard.index, "candidates"))
        quarantine = result.quarantine
        if isinstance(quarantine, Path):
            with open(quarantine, "rb") as fh:
                shutil.copyfileobj(fh, self.quarantine)
            quarantine.unlink()
        else:
            self.quarantine.write(quarantine)
        for note in result.notes:
            warn(note)
        self.notes += result.notes
        self.done_bytes += result.shard.size
        self.shards += 1

    def _on_disk(self, data: Path | bytes, index: int, name: str) -> Path:
        if isinstance(data, Path):
            return data
        path = self.tmp / f".shard-{index:06d}.{name}"
        path.write_bytes(data)
        return path

    def finish_read(self) -> None:
        self.quarantine.close()
        self.context_pool = [contexts for *_, contexts in self.pool]
        self.input_notes = self.notes + skipped_inputs([p for p in self.cfg.inputs if not is_url(p)])

    # ----------------------------------------------------------------- 3-4. dedup

    def dedup(self) -> None:
        self.candidates.dedup()

    # ----------------------------------------------------------------- 5. examples

    def write_examples(self, general_path: Path | None) -> None:
        """Kept candidates in input order, then synthetic IDK examples, then general
        instructions."""
        synthetic = self._write_kept()
        self._write_derived(synthetic, "idk_synthetic", lambda: self.accounting.drop_added("too_long"))
        if general_path is not None:
            fraction = self.cfg.general_mix.fraction
            wanted = round(fraction / (1 - fraction) * (self.accounting.kept + sum(self.accounting.added.values())))
            general = sample_general(general_path, wanted, self.rng, self.scrub, self.general_skipped)
            self._write_derived(general, "general", lambda: self.general_skipped.update(["too_long"]))
        self.examples.close()
        self.preferences.close()

    def _write_kept(self) -> list[dict[str, Any]]:
        """Write the kept candidates; return the synthetic IDK examples made from a seeded share."""
        candidates = self.candidates
        eligible = np.flatnonzero(candidates.is_rep & np.asarray(candidates.from_record, dtype=bool))
        self.idk_plan = bound_idk(candidates, round(self.cfg.idk.synthetic_fraction * len(eligible)), self.cfg)
        sources: set[int] = set()
        if self.context_pool:  # sampling positions, not a list of indices, draws the same sample
            picked = self.rng.sample(range(len(eligible)), min(self.idk_plan.synthetic, len(eligible)))
            sources = set(eligible[picked].tolist())
        synthetic: list[dict[str, Any]] = []
        pool_vocabulary = PoolVocabulary(self.context_pool, self.rules)
        for i, example, from_record in candidates.kept():
            if from_record:
                self.accounting.keep(example["label"])
            else:
                self.accounting.add("idk_from_hallucination")
            rejected = example.pop(PAIR_KEY, None)  # dropped candidates take their pair with them
            self.examples.write(example)
            self.preferences.offer(example, rejected)
            if i in sources:
                made = synthetic_idk(example, self.context_pool, self.rng, self.rules, pool_vocabulary)
                if made is not None:
                    synthetic.append(made)
        return synthetic

    def _write_derived(self, examples: list[dict[str, Any]], source: str, too_long: Any) -> None:
        for example, n_tok in zip(examples, self.tokens.lengths(examples)):
            if n_tok > self.config.model.max_seq_tokens:
                too_long()
                continue
            example["n_tokens"] = n_tok
            self.accounting.add(source)
            self.examples.write(example)

    # ----------------------------------------------------------------- 6. backlog & manifest

    def write_backlog(self) -> list[dict[str, Any]]:
        entries = self.backlog.entries()
        with open(self.tmp / "rag_backlog.jsonl", "wb") as fh:
            for entry in entries:
                fh.write(orjson.dumps(entry) + b"\n")
        return entries

    def manifest(self, stage: Stage, inputs: Inputs, timings: dict[str, float]) -> dict[str, Any]:
        self.accounting.check()
        counts = self.accounting.counts()
        lengths = np.asarray(self.examples.lengths or [0])
        dedup = self.cfg.dedup
        return stage.base_manifest(self.config, ("curate", "model", "output", "prompt")) | {
            "base_model": self.config.model.base,
            "inputs": inputs.manifest_entries(),
            "general_mix": {"path": str(inputs.general_path) if inputs.general_path else None,
                            "sha256": inputs.general_hash, "skipped": dict(self.general_skipped)},
            "counts": counts,
            "labels": self.accounting.label_table(),
            "rule_labels": dict(sorted(self.rule_table.items())),
            "unknown_labels": dict(sorted(self.unknown_labels.items())),
            "quarantine_reasons": dict(sorted(self.accounting.quarantine_reasons.items())),
            "input_notes": self.input_notes,
            "scrubbed": dict(sorted(self.scrubber.counts.items())),
            "examples_by_label": dict(sorted(self.examples.by_label.items())),
            "examples_by_source": dict(sorted(self.examples.by_source.items())),
            "preferences": self.preferences.manifest(),
            "idk_share": share_summary(self.idk_plan, self.examples.by_source),
            "tokens": {
                "max_seq_tokens": self.config.model.max_seq_tokens,
                "min": int(lengths.min()), "median": int(np.median(lengths)),
                "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max()),
                "total": int(lengths.sum()) if self.examples.lengths else 0,
            },
            "dedup": {"threshold": dedup.threshold, "num_perm": dedup.num_perm, "ngram": dedup.ngram,
                      "bands": self.hasher.bands, "rows": self.hasher.rows,
                      "clusters": int(self.candidates.is_rep.sum())},
            **self.health.entries(decide(self.accounting.labels, counts, self.cfg.decision), self.cfg.decision),
            "timings": timings,
            # How it ran: the only keys besides timings and created_at that differ between runs.
            "run": {"engine": self.cfg.engine, "workers": worker_count(self.cfg) if self.cfg.engine == "local" else None,
                    "shards": self.shards},
            "files": {name: file_sha256(self.tmp / name)
                      for name in ("examples.jsonl", "rag_backlog.jsonl", "quarantine.jsonl", "preferences.jsonl")},
        }


class ExampleFile:
    """examples.jsonl, with the lengths and counts the manifest reports."""

    def __init__(self, path: Path):
        self.fh: IO[bytes] = open(path, "wb")
        self.lengths: list[int] = []
        self.by_label: Counter = Counter()
        self.by_source: Counter = Counter()

    def write(self, example: dict[str, Any]) -> None:
        self.fh.write(orjson.dumps(example) + b"\n")
        self.lengths.append(example["n_tokens"])
        self.by_label[example["label"]] += 1
        self.by_source[example["source"]] += 1

    def close(self) -> None:
        self.fh.close()


# --------------------------------------------------------------------------- derived examples


def _pool_key(entry: tuple[int, str, int, Any]) -> tuple[int, str, int]:
    return entry[:3]


class PoolVocabulary:
    """Per context set of the pool, its ids and the union of its documents' words, made once:
    each synthetic example tries up to 16 sets, and the pool is the same 1,024 all run long
    (recomputing them was a sixth of curate's time at 200,000 records)."""

    def __init__(self, pool: list[list[dict[str, str]]], rules: AnswerContract):
        self.pool, self.rules = pool, rules
        self._made: dict[int, tuple[set[str], frozenset[str]]] = {}

    def __getitem__(self, i: int) -> tuple[set[str], frozenset[str]]:
        hit = self._made.get(i)
        if hit is None:
            vocabularies = [self.rules._vocabulary(c["text"]) for c in self.pool[i]]
            hit = self._made[i] = ({c["id"] for c in self.pool[i]}, frozenset().union(*vocabularies))
        return hit

    def supported(self, found: list[str], i: int) -> bool:
        """`AnswerContract.supported` of an answer with content words `found` by set i."""
        if not found:
            return True
        vocabulary = self[i][1]
        return sum(map(vocabulary.__contains__, found)) / len(found) >= self.rules.min_support


def synthetic_idk(example: dict[str, Any], pool: list[list[dict[str, str]]], rng: random.Random,
                  rules: AnswerContract, vocabulary: PoolVocabulary | None = None) -> dict[str, Any] | None:
    """The kept example's question with retrieved documents that do not hold its answer."""
    vocabulary = vocabulary or PoolVocabulary(pool, rules)
    found = content_words(rules.parse(example["ideal_answer"]).text)
    own = {c["id"] for c in example["contexts"]}
    start = rng.randrange(len(pool))
    for step in range(min(len(pool), 16)):
        i = (start + step) % len(pool)
        contexts = pool[i]
        if own & vocabulary[i][0] or vocabulary.supported(found, i):
            continue
        return {
            **{k: v for k, v in example.items() if k not in ("n_tokens",)},
            "id": "ex-" + hashlib.blake2b(f"idk|{example['id']}".encode(), digest_size=6).hexdigest(),
            "source": "idk_synthetic",
            "contexts": contexts,
            "ideal_answer": rules.canonical(rules.idk()),
            "label": "idk_synthetic",
            "labels": [],
            "label_source": "synthetic",
            "rule": None,
            # Same question as its source: the split must keep the pair on one side.
            "cluster_id": example["cluster_id"],
        }
    return None
