"""curate's per-shard work, the part that runs on every core (or every Ray worker).

A shard is a run of whole lines of one input: a byte range of a large local file, or a whole
file (`.gz` and remote files). `ShardWorker.run` reads it once: each line is parsed and
validated (pipelines/records.py), routed (pipelines/routing.py), scrubbed, measured for
retrieval health, and a training candidate is token-counted and fingerprinted (MinHash band
keys). The result (`ShardResult`) holds only counts, the candidates' spooled JSON and a few
integers per candidate; the process that merges applies the results in input order
(pipelines/curate.py), so one global step deduplicates and every output is byte-identical
whatever the number of shards or workers.

Nothing here depends on where a line sits in the run beyond its file and line number: the
context pool for synthetic "I don't know" examples is a bottom-k sample keyed by a hash of
(seed, file, line), which merges across shards exactly.
"""

from __future__ import annotations

import hashlib
import heapq
import io
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from pipelines.accounting import Accounting
from pipelines.answers import Answer, AnswerContract
from pipelines.curate_report import backlog_event
from pipelines.minhash import MinHasher, text_fingerprint
from pipelines.preferences import PAIR_KEY, rejected_side
from pipelines.rag_health import RagHealth
from pipelines.records import BadLine, LogRecord, QuarantineFile, RecordReader, parse_line
from pipelines.routing import SOURCE_RANK, Route, normalise_labels, route
from pipelines.scrub import Scrubber
from pipelines.sources import open_input
from pipelines.storage import iter_lines
from pipelines.template import render_messages

POOL = 1024  # retrieved-context sets kept for synthetic IDK examples (bottom-k by hash)
SAMPLES = 5  # backlog samples per group (curate_report.Backlog.SAMPLES)


@dataclass(frozen=True)
class Shard:
    index: int
    path: str  # a local path or a URL, as resolved
    start: int = 0  # byte offset of its first line
    end: int | None = None  # byte offset after its last line; None: the end of the file
    first_line: int = 0  # lines of the file before `start`
    size: int = 0  # bytes, for progress
    location: str = ""  # where a worker opens it: a URL, or the absolute path (a Ray worker's cwd is not ours)


class ShardResult:
    """Everything a shard contributes, mergeable in input order (see CurateRun.merge)."""

    def __init__(self, shard: Shard):
        self.shard = shard
        self.accounting = Accounting()
        self.unknown_labels: Counter = Counter()
        self.rule_table: Counter = Counter()
        self.scrubbed: Counter = Counter()
        self.health: tuple[Any, ...] = ()
        self.backlog: list[tuple] = []
        self.pool: list[tuple[int, str, int, list[dict[str, str]]]] = []  # (key, file, line, contexts) <= POOL
        self.carried = 0  # candidates that carry a preference pair
        self.notes: list[str] = []
        self.ranks = array("b")
        self.labels: list[str] = []
        self.from_record, self.refusals = array("b"), array("b")  # 0/1 each
        self.fingerprints = array("Q")
        self.band_keys = np.zeros((0, 0), np.uint64)
        # The candidates' JSON lines and the quarantine's: files in `spool_dir` when the worker
        # shares the merging process's disk (the local engine), else bytes (Ray).
        self.spool: Path | bytes = b""
        self.quarantine: Path | bytes = b""


class TokenCounter:
    """Token lengths of rendered examples with the base model's tokenizer.

    An example's length is the rendered template's fixed cost plus its pieces. Retrieved
    documents repeat across logs, so each document's length is cached; only queries and
    answers are tokenized per example, in batches through the Rust tokenizer.

    Pickled (for a worker process or a Ray worker) it carries that Rust tokenizer and the
    template's costs alone: a worker never imports transformers (about 50 MB a worker, and
    slower to start)."""

    def __init__(self, tokenizer: Any, config: Any):
        self.tokenizer = tokenizer
        self.backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
        self._cache: dict[str, int] = {}
        empty_rag = {"query": "", "contexts": [], "ideal_answer": ""}
        empty_general = {"kind": "general", "query": "", "ideal_answer": ""}
        self.rag_overhead = self._template_length(empty_rag, config)
        self.general_overhead = self._template_length(empty_general, config)
        one = {"query": "", "contexts": [{"id": "x", "text": ""}], "ideal_answer": ""}
        self.per_context = max(0, self._template_length(one, config) - self.rag_overhead - self.count(["x"])[0])

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, "_cache": {}}
        if self.backend is not None:
            state["tokenizer"] = None
        return state

    def _template_length(self, example: dict, config: Any) -> int:
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
            # encode_batch_fast: the same ids without the character offsets, which we never read.
            return [len(e.ids) for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]
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


class _Range:
    """A binary file read from `start` up to `end` only: `readline` never crosses `end`."""

    def __init__(self, fh: IO[bytes], start: int, end: int):
        fh.seek(start)
        self.fh, self.left = fh, end - start

    def readline(self, limit: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        line = self.fh.readline(self.left if limit < 0 else min(limit, self.left))
        self.left -= len(line)
        return line


class ShardWorker:
    """One worker's read-only state (scrubber, tokenizer, rules, MinHash permutations and
    the caches for texts that repeat across logs), reused for every shard it runs."""

    BATCH = 2048  # candidates tokenized and fingerprinted together

    def __init__(self, config: Any, tokens: TokenCounter, spool_dir: Path | None = None):
        cfg = self.cfg = config.curate
        self.config, self.spool_dir = config, spool_dir
        self.tokens = tokens
        self.scrubber = Scrubber(cfg.scrub.extra_patterns, cfg.scrub.phone_regions)
        self.scrub = self.scrubber.scrub
        self.rules = AnswerContract(config.output)
        self.reader = RecordReader(config)
        self.hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.ngram, cfg.dedup.threshold, cfg.dedup.seed)
        self.max_tokens = config.model.max_seq_tokens
        self._scrubbed_contexts: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}

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

    def _sink(self, name: str) -> IO[bytes]:
        if self.spool_dir is None:
            return io.BytesIO()
        return open(self.spool_dir / f".shard-{self.out.shard.index:06d}.{name}", "wb")

    def run(self, shard: Shard) -> ShardResult:
        """Read one shard: every line ends up in the result's accounting exactly once."""
        out = self.out = ShardResult(shard)
        self.scrubber.counts = out.scrubbed
        self.health = RagHealth(self.rules, self.scrub_context)
        self.pending: list[dict[str, Any]] = []
        self.band_chunks: list[np.ndarray] = []
        self.samples: Counter = Counter()  # backlog samples sent per group
        self.pool: list[tuple[int, str, int, list[dict[str, str]]]] = []  # max-heap: (-key, file, line, contexts)
        spool = self.spool_fh = self._sink("candidates")
        quarantine_fh = self._sink("quarantine")
        quarantine = QuarantineFile(quarantine_fh, self.scrub, self.cfg.quarantine_max_chars, warn_now=False)
        reader_fh, raw_fh = open_input(shard.location or shard.path, self.cfg.storage_options)
        lines = reader_fh
        if shard.end is not None:
            lines = _Range(reader_fh, shard.start, shard.end)
        elif shard.start:  # the last range of a file runs to its end
            reader_fh.seek(shard.start)
        name = Path(shard.path).name
        with raw_fh, reader_fh:
            for number, raw, length in iter_lines(lines, self.cfg.max_line_bytes):
                line_no = shard.first_line + number
                out.accounting.read()
                try:
                    record = parse_line(self.reader, raw, length, self.cfg.max_line_bytes, f"{name}:{line_no}", line_no)
                except BadLine as bad:
                    out.accounting.quarantine(bad.reason)
                    quarantine.write(shard.path, line_no, bad, length)
                    continue
                self.take(record, (shard.path, line_no))
        self._flush()
        out.notes = quarantine.notes
        out.health = self.health.state()
        out.pool = sorted((-neg, file, line, contexts) for neg, file, line, contexts in self.pool)
        out.band_keys = (np.concatenate(self.band_chunks) if self.band_chunks
                         else np.zeros((0, self.hasher.bands), np.uint64))
        out.spool, out.quarantine = self._close(spool), self._close(quarantine_fh)
        return out

    def _close(self, fh: IO[bytes]) -> Path | bytes:
        if isinstance(fh, io.BytesIO):
            return fh.getvalue()
        fh.close()
        return Path(fh.name)

    def take(self, record: LogRecord, where: tuple[str, int]) -> None:
        """Route one valid record: filtered, into the backlog, or a training candidate."""
        out = self.out
        labels = normalise_labels(record.labels, self.cfg.label_aliases, out.unknown_labels, self.scrub)
        r = route(record, labels, self.rules, self.cfg.keep_positive)
        self.health.observe(record, r)
        if r.rule:
            out.rule_table[f"{r.rule} -> {r.label}"] += 1
        if r.disposition == "filtered":
            out.accounting.filter(r.reason or "filtered", r.label)
            return
        query = self.scrub(record.query)
        # Context ids are scrubbed like the answer text that cites them, so a citation still
        # matches its (scrubbed) id.
        contexts = [{"id": self.scrub_context(c.id), "text": self.scrub_context(c.text)} for c in record.contexts]
        self._offer_to_pool(contexts, where)
        if r.disposition == "backlog":
            out.accounting.backlog(r.label)
            event = backlog_event(record, r, self.scrub_context, self._backlog_sample(record, query, contexts, where))
            self.samples[event[:2]] += 1
            out.backlog.append(event if self.samples[event[:2]] <= SAMPLES else (*event[:5], None))
            if r.add_idk and r.ideal is not None:
                self._add_candidate(record, r, "idk_from_hallucination", self.rules.idk(), contexts, query, where)
            return
        assert r.ideal is not None
        source = "keep" if r.label == "positive" else "correction"
        self._add_candidate(record, r, source, r.ideal, contexts, query, where)

    def _offer_to_pool(self, contexts: list[dict[str, str]], where: tuple[str, int]) -> None:
        """Bottom-k by a seeded hash of the line's file name and number: a uniform sample
        that depends neither on how the inputs were cut into shards nor on where they are
        stored (a folder, a bucket)."""
        if not contexts:
            return
        name = where[0].rsplit("/", 1)[-1]
        digest = hashlib.blake2b(f"{self.cfg.seed}|{name}|{where[1]}".encode(), digest_size=8).digest()
        key = int.from_bytes(digest, "little")
        if len(self.pool) < POOL:
            heapq.heappush(self.pool, (-key, *where, contexts))
        elif key < -self.pool[0][0]:
            heapq.heapreplace(self.pool, (-key, *where, contexts))

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
        rejected = rejected_side(source, record.response, self.scrub)
        self.out.carried += rejected is not None
        from_record = source != "idk_from_hallucination"
        if from_record:
            self.out.accounting.candidate(r.label)
        self.pending.append({
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
            PAIR_KEY: rejected,
            "_rank": SOURCE_RANK.get((source, r.label_source), 0),
            "_from_record": from_record, "_refusal": answer.refusal,
        })
        if len(self.pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        """Token-count the pending candidates (too long: filtered), MinHash their questions
        and spool them."""
        out, keep = self.out, []
        for candidate, n in zip(self.pending, self.tokens.lengths(self.pending)):
            if n > self.max_tokens:
                if candidate["_from_record"]:
                    out.accounting.filter_candidate("too_long", candidate["label"])
                else:
                    out.accounting.drop_added("too_long")
                continue
            candidate["n_tokens"] = n
            keep.append(candidate)
        if keep:
            # Near-duplicate questions are what leak and what repeat a lesson, so the
            # question alone is shingled: different questions sharing one answer stay.
            texts = [c["query"] for c in keep]
            self.band_chunks.append(self.hasher.keys(texts))
            for c, text in zip(keep, texts):
                out.ranks.append(c.pop("_rank"))
                out.labels.append(c["label"])
                out.from_record.append(c.pop("_from_record"))
                out.refusals.append(c.pop("_refusal"))
                out.fingerprints.append(text_fingerprint(text))
                self.spool_fh.write(orjson.dumps(c) + b"\n")
        self.pending.clear()
