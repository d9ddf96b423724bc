"""curate: RAG failure logs -> routed, scrubbed, deduplicated training examples.

`curate()` is the recipe; each step is a named method below:

1. Resolve the inputs and hash them with the config (`Inputs`, `Stage`); an existing
   dataset with the same id means there is nothing to do.
2. Stream every line once (`CurateRun.read_pass`). A line that is not a valid record goes
   to `quarantine.jsonl` with its file, line number and reason (pipelines/records.py). A
   valid record is routed by the failure taxonomy (pipelines/routing.py): knowledge
   failures become RAG backlog entries, never training data; behaviour failures with a
   reviewer's ideal answer become training candidates; an unlabelled failure is labelled by
   rules first. Text is scrubbed of PII and secrets the moment it is read, so nothing
   downstream ever holds a raw value.
3. Candidates are spooled to disk in batches while their token lengths and MinHash band keys
   are computed, so memory holds a few integers per candidate, never the text (`Candidates`).
4. Near-duplicate clusters are found from the band keys; each keeps its best-ranked copy.
5. The kept candidates are written as examples, with synthetic "I don't know" examples and a
   share of general instructions added.
6. The backlog, quarantine, report.md, report.html (with the retrieval health of every valid
   record, pipelines/rag_health.py) and manifest are written, and the folder is swapped into
   place. Every input line is in exactly one of kept, quarantined, backlog or filtered.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from pipelines.accounting import Accounting
from pipelines.answers import Answer, AnswerContract
from pipelines.clock import Clock
from pipelines.config import CurateConfig, PipelineConfig
from pipelines.curate_html import render_html, retrieval_markdown
from pipelines.curate_report import Backlog, decide, render_report
from pipelines.idk_share import bound_idk, share_summary
from pipelines.minhash import MinHasher, clusters, text_fingerprint
from pipelines.preferences import PAIR_KEY, PreferenceFile, rejected_side
from pipelines.preferences import render_lines as preference_lines
from pipelines.rag_health import RagHealth
from pipelines.records import BadLine, LogRecord, QuarantineFile, RecordReader, parse_line, sample_general
from pipelines.routing import SOURCE_RANK, Route, normalise_labels, route
from pipelines.scrub import Scrubber
from pipelines.stage import Stage
from pipelines.storage import code_version, dumps, file_sha256, iter_lines, open_log, resolve_inputs, skipped_inputs
from pipelines.template import render_messages


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
        tokens = TokenCounter(tokenizer if tokenizer is not None else _load_tokenizer(config), config)
    progress.start(sum(p.stat().st_size for p in inputs.files))
    with stage.commit() as tmp:
        run = CurateRun(config, tokens, tmp)
        run.read_pass(inputs.files, progress)
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
    """The log files and the general-instruction file, with their hashes."""

    files: list[Path]
    hashes: list[tuple[str, str]]
    general_path: Path | None
    general_hash: str | None

    @classmethod
    def resolve(cls, cfg: CurateConfig) -> Inputs:
        files = resolve_inputs(cfg.inputs)
        general = Path(cfg.general_mix.path) if cfg.general_mix.path and cfg.general_mix.fraction > 0 else None
        if general is not None and not general.is_file():
            raise FileNotFoundError(f"curate.general_mix.path: {general} does not exist")
        return cls(files, [(str(p), file_sha256(p)) for p in files], general,
                   file_sha256(general) if general else None)

    def key_payload(self, config: PipelineConfig) -> dict[str, Any]:
        """What the dataset id hashes: the inputs' contents, the config, the code."""
        return {"inputs": sorted(h for _, h in self.hashes), "general": self.general_hash,
                "config": config.section_hash("curate", "model", "output", "prompt"), "code": code_version(__name__)}

    def manifest_entries(self) -> list[dict[str, Any]]:
        return [{"path": p, "sha256": h, "bytes": Path(p).stat().st_size} for p, h in self.hashes]


def _load_tokenizer(config: PipelineConfig) -> Any:
    from pipelines.models import load_tokenizer

    return load_tokenizer(config.model.base)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------- token lengths


class TokenCounter:
    """Token lengths of rendered examples with the base model's tokenizer.

    An example's length is the rendered template's fixed cost plus its pieces. Retrieved
    documents repeat across logs, so each document's length is cached; only queries and
    answers are tokenized per example, in batches through the Rust tokenizer."""

    def __init__(self, tokenizer: Any, config: PipelineConfig):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        self._cache: dict[str, int] = {}
        empty_rag = {"query": "", "contexts": [], "ideal_answer": ""}
        empty_general = {"kind": "general", "query": "", "ideal_answer": ""}
        self.rag_overhead = self._template_length(empty_rag, config)
        self.general_overhead = self._template_length(empty_general, config)
        one = {"query": "", "contexts": [{"id": "x", "text": ""}], "ideal_answer": ""}
        self.per_context = max(0, self._template_length(one, config) - self.rag_overhead - self.count(["x"])[0])

    def _template_length(self, example: dict, config: PipelineConfig) -> int:
        messages = render_messages(example, config.prompt, config.output)
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
        return sum(self.count([m["content"]])[0] + 4 for m in messages)

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.backend is not None:
            return [len(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def context_lengths(self, texts: list[str]) -> list[int]:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            if len(self._cache) > 200_000:
                self._cache.clear()
            for text, n in zip(missing, self.count(missing)):
                self._cache[text] = n
        return [self._cache[t] for t in texts]

    def lengths(self, examples: list[dict]) -> list[int]:
        pieces = self.count([e["query"] + "\n" + e["ideal_answer"] for e in examples])
        out = []
        for example, n in zip(examples, pieces):
            contexts = example.get("contexts") or []
            if example.get("kind") == "general":
                out.append(self.general_overhead + n)
                continue
            ctx = self.context_lengths([c["id"] + "\n" + c["text"] for c in contexts])
            out.append(self.rag_overhead + n + sum(ctx) + self.per_context * len(contexts))
        return out


# --------------------------------------------------------------------------- candidates & dedup


class Candidates:
    """Training candidates spooled to disk in batches; memory keeps, per candidate, its rank,
    label, whether it came from a record (and so counts in the accounting) or was derived,
    its exact-duplicate fingerprint and MinHash band keys."""

    BATCH = 2048

    def __init__(self, path: Path, tokens: TokenCounter, hasher: MinHasher, max_tokens: int, accounting: Accounting):
        self.path, self.tokens, self.hasher, self.max_tokens = path, tokens, hasher, max_tokens
        self.accounting = accounting
        self.spool: IO[bytes] = open(path, "wb")
        self.pending: list[dict[str, Any]] = []
        self.ranks: list[int] = []
        self.labels: list[str] = []
        self.from_record, self.refusals = [], []  # from a record? its ideal answer a refusal? (list[bool] each)
        self.fingerprints: list[int] = []
        self.band_chunks: list[np.ndarray] = []
        self.is_rep = np.zeros(0, dtype=bool)  # after dedup: the copy each cluster keeps
        self.fingerprints_arr = np.zeros(0, dtype=np.uint64)

    def add(self, candidate: dict[str, Any]) -> None:
        if candidate["_from_record"]:
            self.accounting.candidate(candidate["label"])
        self.pending.append(candidate)
        if len(self.pending) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        keep = []
        for candidate, n in zip(self.pending, self.tokens.lengths(self.pending)):
            if n > self.max_tokens:
                if candidate["_from_record"]:
                    self.accounting.filter_candidate("too_long", candidate["label"])
                else:
                    self.accounting.drop_added("too_long")
                continue
            candidate["n_tokens"] = n
            keep.append(candidate)
        if keep:
            # Near-duplicate questions are what leak and what repeat a lesson, so the
            # question alone is shingled: different questions sharing one answer stay.
            texts = [c["query"] for c in keep]
            self.band_chunks.append(self.hasher.keys(texts))
            for c, text in zip(keep, texts):
                self.ranks.append(c.pop("_rank"))
                self.labels.append(c["label"])
                self.from_record.append(c.pop("_from_record"))
                self.refusals.append(c.pop("_refusal"))
                self.fingerprints.append(text_fingerprint(text))
                self.spool.write(orjson.dumps(c) + b"\n")
        self.pending.clear()

    def dedup(self) -> None:
        """Near-duplicate clusters; each keeps its best-ranked copy (the newest on ties)."""
        self.flush()
        self.spool.close()
        n = len(self.ranks)
        band_keys = (np.concatenate(self.band_chunks) if self.band_chunks
                     else np.zeros((0, self.hasher.bands), np.uint64))
        self.band_chunks = []
        cluster_of = clusters(band_keys)
        del band_keys
        order = np.lexsort((np.arange(n), np.asarray(self.ranks, dtype=np.int64), cluster_of))
        sorted_clusters = cluster_of[order]
        last_of_cluster = np.r_[sorted_clusters[1:] != sorted_clusters[:-1], True] if n else np.zeros(0, bool)
        representative = np.full(cluster_of.max() + 1 if n else 0, -1, dtype=np.int64)
        representative[sorted_clusters[last_of_cluster]] = order[last_of_cluster]
        self.is_rep = np.zeros(n, dtype=bool)
        self.is_rep[representative[representative >= 0]] = True
        fingerprints = np.asarray(self.fingerprints, dtype=np.uint64)
        for i in np.flatnonzero(~self.is_rep):
            if not self.from_record[i]:
                self.accounting.drop_added("duplicate")
                continue
            exact = fingerprints[i] == fingerprints[representative[cluster_of[i]]]
            self.accounting.filter_candidate("duplicate_exact" if exact else "duplicate_near", self.labels[i])
        self.fingerprints_arr = fingerprints

    def kept(self) -> Iterator[tuple[int, dict[str, Any], bool]]:
        """(index, example with its cluster id, from a record?) of each kept candidate, in
        input order; the spool is removed after."""
        with open(self.path, "rb") as spool:
            for i, line in enumerate(spool):
                if not self.is_rep[i]:
                    continue
                example = orjson.loads(line)
                example["cluster_id"] = "c-" + hashlib.blake2b(
                    str(int(self.fingerprints_arr[i])).encode(), digest_size=6).hexdigest()
                yield i, example, self.from_record[i]
        self.path.unlink()


# --------------------------------------------------------------------------- one run


class CurateRun:
    """The state of one curation, written into `tmp` (the folder Stage.commit swaps in)."""

    POOL = 1024  # retrieved-context sets kept (a seeded reservoir) for synthetic IDK examples

    def __init__(self, config: PipelineConfig, tokens: TokenCounter, tmp: Path):
        cfg = self.cfg = config.curate
        self.config, self.tokens, self.tmp = config, tokens, tmp
        self.scrubber = Scrubber(cfg.scrub.extra_patterns, cfg.scrub.phone_regions)
        self.scrub = self.scrubber.scrub
        self.rules = AnswerContract(config.output)
        self.reader = RecordReader(config)
        self.hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.ngram, cfg.dedup.threshold, cfg.dedup.seed)
        self.rng = random.Random(cfg.seed)
        self.accounting = Accounting()
        self.unknown_labels: Counter = Counter()
        self.rule_table: Counter = Counter()
        self.backlog = Backlog()
        self.health = RagHealth(self.rules, self.scrub_context)  # retrieval metrics over every valid record
        self.candidates = Candidates(tmp / ".candidates.spool", tokens, self.hasher, config.model.max_seq_tokens,
                                     self.accounting)
        self.context_pool: list[list[dict[str, str]]] = []
        self.pool_seen = 0
        self._scrubbed_contexts: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}
        self.examples = ExampleFile(tmp / "examples.jsonl")
        self.preferences = PreferenceFile(tmp / "preferences.jsonl")
        self.general_skipped: Counter = Counter()

    def scrub_context(self, text: str) -> str:
        """`scrub` for texts that repeat across logs (documents, ids): each distinct text once."""
        hit = self._scrubbed_contexts.get(text)
        if hit is None:
            if len(self._scrubbed_contexts) > 100_000:
                self._scrubbed_contexts.clear()
            hit = self._scrubbed_contexts[text] = self.scrubber.scrub_counted(text)
        for kind, n in hit[1]:
            self.scrubber.counts[kind] += n
        return hit[0]

    # ----------------------------------------------------------------- 2. read, route, scrub

    def read_pass(self, files: list[Path], progress: Progress) -> None:
        """One streaming pass over every line. The cyclic garbage collector is paused: the
        loop makes no reference cycles (refcounting frees everything), and its periodic
        scans of a growing heap cost ~14% of the pass at 400,000 records."""
        done_bytes = 0
        with gc_paused(), open(self.tmp / "quarantine.jsonl", "wb") as fh:
            quarantine = QuarantineFile(fh, self.scrub, self.cfg.quarantine_max_chars)
            for path in files:
                reader_fh, raw_fh = open_log(path)
                with raw_fh, reader_fh:
                    for line_no, raw, length in iter_lines(reader_fh, self.cfg.max_line_bytes):
                        read = self.accounting.read()
                        if read % 4096 == 0:
                            progress.advance(done_bytes + raw_fh.tell(), read)
                        try:
                            record = parse_line(self.reader, raw, length, self.cfg.max_line_bytes,
                                                f"{path.name}:{line_no}", line_no)
                        except BadLine as bad:
                            self.accounting.quarantine(bad.reason)
                            quarantine.write(path, line_no, bad, length)
                            continue
                        self.take(record, (str(path), line_no))
                done_bytes += path.stat().st_size
                progress.advance(done_bytes, self.accounting.lines["read"])
            self.input_notes = quarantine.notes + skipped_inputs(self.cfg.inputs)

    def take(self, record: LogRecord, where: tuple[str, int]) -> None:
        """Route one valid record: filtered, into the backlog, or a training candidate."""
        labels = normalise_labels(record.labels, self.cfg.label_aliases, self.unknown_labels, self.scrub)
        r = route(record, labels, self.rules, self.cfg.keep_positive)
        self.health.observe(record, r)
        if r.rule:
            self.rule_table[f"{r.rule} -> {r.label}"] += 1
        if r.disposition == "filtered":
            self.accounting.filter(r.reason or "filtered", r.label)
            return
        query = self.scrub(record.query)
        # Context ids are scrubbed like the answer text that cites them, so a citation still
        # matches its (scrubbed) id.
        contexts = [{"id": self.scrub_context(c.id), "text": self.scrub_context(c.text)} for c in record.contexts]
        self._offer_to_pool(contexts)
        if r.disposition == "backlog":
            self.accounting.backlog(r.label)
            self.backlog.add(record, r, self.scrub_context, self._backlog_sample(record, query, contexts, where))
            if r.add_idk and r.ideal is not None:
                self._add_candidate(record, r, "idk_from_hallucination", self.rules.idk(), contexts, query, where)
            return
        assert r.ideal is not None
        source = "keep" if r.label == "positive" else "correction"
        self._add_candidate(record, r, source, r.ideal, contexts, query, where)

    def _offer_to_pool(self, contexts: list[dict[str, str]]) -> None:
        if not contexts:
            return
        self.pool_seen += 1
        if len(self.context_pool) < self.POOL:
            self.context_pool.append(contexts)
        else:
            slot = self.rng.randrange(self.pool_seen)
            if slot < self.POOL:
                self.context_pool[slot] = contexts

    def _backlog_sample(self, record: LogRecord, query: str, contexts: list[dict[str, str]],
                        where: tuple[str, int]) -> dict[str, Any]:
        scrub = self.scrub
        return {
            "log_id": self.scrub_context(record.log_id),
            "query": query,
            "retrieved": [c["id"] for c in contexts],
            "response": scrub(record.response)[:2000] if record.response else None,
            "comment": scrub(record.comment) if record.comment else None,
            "suggested_answer": scrub(record.correction)[:2000] if record.correction else None,
            "file": where[0],
            "line": where[1],
        }

    def _add_candidate(self, record: LogRecord, r: Route, source: str, answer: Answer,
                       contexts: list[dict[str, str]], query: str, where: tuple[str, int]) -> None:
        self.candidates.add({
            "id": "ex-" + hashlib.blake2b(f"{source}|{where[0]}|{where[1]}".encode(), digest_size=6).hexdigest(),
            "kind": "rag",
            "source": source,
            "query": query,
            "contexts": contexts,
            "ideal_answer": self.scrub(self.rules.canonical(answer)),
            "label": r.label,
            "labels": r.labels,
            "label_source": r.label_source,
            "rule": r.rule,
            "log_id": self.scrub_context(record.log_id),
            "session_id": self.scrub_context(record.session_id) if record.session_id else None,
            "timestamp": self.scrub(record.timestamp) if record.timestamp else None,
            "file": where[0],
            "line": where[1],
            PAIR_KEY: self.preferences.carry(rejected_side(source, record.response, self.scrub)),
            "_rank": SOURCE_RANK.get((source, r.label_source), 0),
            "_from_record": source != "idk_from_hallucination", "_refusal": answer.refusal,
        })

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
        eligible = [i for i in range(len(self.candidates.ranks))
                    if self.candidates.is_rep[i] and self.candidates.from_record[i]]
        self.idk_plan = bound_idk(self.candidates, round(self.cfg.idk.synthetic_fraction * len(eligible)), self.cfg)
        n_synthetic = self.idk_plan.synthetic
        sources = set(self.rng.sample(eligible, min(n_synthetic, len(eligible)))) if self.context_pool else set()
        synthetic: list[dict[str, Any]] = []
        for i, example, from_record in self.candidates.kept():
            if from_record:
                self.accounting.keep(example["label"])
            else:
                self.accounting.add("idk_from_hallucination")
            rejected = example.pop(PAIR_KEY, None)  # dropped candidates take their pair with them
            self.examples.write(example)
            self.preferences.offer(example, rejected)
            if i in sources:
                made = synthetic_idk(example, self.context_pool, self.rng, self.rules)
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


def synthetic_idk(example: dict[str, Any], pool: list[list[dict[str, str]]], rng: random.Random,
                  rules: AnswerContract) -> dict[str, Any] | None:
    """The kept example's question with retrieved documents that do not hold its answer."""
    answer = rules.parse(example["ideal_answer"])
    own = {c["id"] for c in example["contexts"]}
    start = rng.randrange(len(pool))
    for step in range(min(len(pool), 16)):
        contexts = pool[(start + step) % len(pool)]
        if own & {c["id"] for c in contexts} or rules.supported(answer, [c["text"] for c in contexts]):
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
