"""curate: RAG failure logs -> routed, scrubbed, deduplicated training examples.

Read top to bottom, the recipe is:

1. Resolve the inputs and hash them with the config; an existing dataset with the same hash
   means there is nothing to do.
2. Stream every line once. A line that is not a valid record goes to `quarantine.jsonl` with
   its file, line number and reason. A valid record is routed by the failure taxonomy
   (DESIGN.md): knowledge failures become RAG backlog entries, never training data;
   behaviour failures with a reviewer's ideal answer become training candidates; an
   unlabelled failure is labelled by rules first. Text is scrubbed of PII and secrets the
   moment it is read, so nothing downstream ever holds a raw value.
3. Candidates are spooled to disk in batches while their token lengths and MinHash band keys
   are computed, so memory holds a few integers per candidate, never the text.
4. Near-duplicate clusters are found from the band keys; each keeps its best-labelled copy.
5. The kept candidates are written as examples, with synthetic "I don't know" examples and a
   share of general instructions added.
6. The backlog, quarantine, report and manifest are written, and the folder is renamed into
   place. Every input line is in exactly one of kept, quarantined, backlog or filtered.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import heapq
import os
import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipelines.config import OutputConfig, PipelineConfig
from pipelines.minhash import MinHasher, clusters, text_fingerprint
from pipelines.schema import (
    BEHAVIOUR_LABELS,
    HALLUCINATION,
    KNOWLEDGE_LABELS,
    TAXONOMY_LABELS,
    WEAK_REASONING,
)
from pipelines.scrub import Scrubber
from pipelines.storage import (
    atomic_dir,
    code_version,
    dumps,
    file_sha256,
    iter_lines,
    open_log,
    resolve_inputs,
    set_latest,
)
from pipelines.template import render_messages

# --------------------------------------------------------------------------- the taxonomy

# The failure-to-fix table of DESIGN.md lives in pipelines/schema.py.

# Which copy of a near-duplicate cluster survives: a reviewer's correction on a
# human-labelled failure beats one on a rule-labelled failure, which beats a positively
# rated answer, which beats an "I don't know" derived from a hallucination.
SOURCE_RANK = {("correction", "human"): 4, ("correction", "rule"): 3, ("keep", "human"): 2,
               ("idk_from_hallucination", "human"): 1, ("idk_from_hallucination", "rule"): 1}

_CITATION = re.compile(r"\[([^\[\]\s]{1,200})\]")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
STOPWORDS = frozenset(
    "a an the and or but if then than so of to in on at by for with from as is are was were be "
    "been being it its this that these those there here you your yours we our us i me my he she "
    "they them their his her do does did done can could will would should may might must shall "
    "not no yes any all some each every more most other such only own same too very just also "
    "into about over under up down out off again further once how what which who whom why when "
    "where have has had having get gets got per via".split()
)


class BadRecord(Exception):
    """A line that is valid JSON but not a usable record; the message is the reason."""


# --------------------------------------------------------------------------- reading records

_MISSING = object()


def _compile_path(path: str | None) -> tuple[str | int, ...] | None:
    if not path:
        return None
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def _get(obj: Any, keys: tuple[str | int, ...] | None) -> Any:
    if keys is None:
        return _MISSING
    if len(keys) == 1 and type(obj) is dict:  # the common case, without the loop
        return obj.get(keys[0], _MISSING)
    for key in keys:
        if isinstance(key, int) and isinstance(obj, list):
            if key >= len(obj):
                return _MISSING
            obj = obj[key]
        elif isinstance(obj, dict):
            obj = obj.get(key, _MISSING)  # type: ignore[arg-type]
            if obj is _MISSING:
                return _MISSING
        else:
            return _MISSING
    return obj


@dataclass(slots=True)
class Context:
    id: str
    text: str
    score: float | None


@dataclass(slots=True)
class LogRecord:
    log_id: str
    timestamp: str | None
    session_id: str | None
    query: str
    contexts: list[Context]
    response: str | None
    model: str | None
    rating: float | None
    labels: list[str]
    comment: str | None
    correction: str | None
    topic: str | None


_RATING_WORDS = {"up": 1, "down": -1, "thumbs_up": 1, "thumbs_down": -1, "positive": 1,
                 "negative": -1, "good": 1, "bad": -1, "+1": 1, "-1": -1, "1": 1, "0": 0}


class RecordReader:
    """Extracts a LogRecord from one parsed JSON object through the configured dotted paths,
    raising BadRecord with a precise reason on a missing field or a wrong type."""

    def __init__(self, config: PipelineConfig):
        f = config.curate.fields
        self.names = f
        self.paths = {name: _compile_path(getattr(f, name)) for name in type(f).model_fields}
        self.context_paths = (self.paths["context_id"], self.paths["context_text"], self.paths["context_score"])

    def _field(self, obj: dict, name: str) -> Any:
        return _get(obj, self.paths[name])

    def _text(self, obj: dict, name: str, *, required: bool = False) -> str | None:
        value = self._field(obj, name)
        path = getattr(self.names, name)
        if value is _MISSING or value is None:
            if required:
                raise BadRecord(f"missing field '{path}'")
            return None
        if isinstance(value, str):
            return value
        if isinstance(value, (dict, list)) and name in ("response", "correction"):
            # Some logs store the structured answer as an object rather than a string.
            return orjson.dumps(value).decode()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name in ("id", "session_id", "timestamp"):
            return str(value)
        raise BadRecord(f"field '{path}' must be a string, got {type(value).__name__}")

    def read(self, obj: Any, fallback_id: str) -> LogRecord:
        if not isinstance(obj, dict):
            raise BadRecord(f"not a JSON object (got {type(obj).__name__})")
        query = self._text(obj, "query", required=True)
        assert query is not None
        if not query.strip():
            raise BadRecord(f"field '{self.names.query}' is empty")
        return LogRecord(
            log_id=self._text(obj, "id") or fallback_id,
            timestamp=self._text(obj, "timestamp"),
            session_id=self._text(obj, "session_id"),
            query=query,
            contexts=self._contexts(obj),
            response=self._text(obj, "response"),
            model=self._text(obj, "model"),
            rating=self._rating(obj),
            labels=self._labels(obj),
            comment=self._text(obj, "comment"),
            correction=self._text(obj, "correction"),
            topic=self._topic(obj),
        )

    def _contexts(self, obj: dict) -> list[Context]:
        value = self._field(obj, "contexts")
        path = self.names.contexts
        if value is _MISSING or value is None:
            return []
        if not isinstance(value, list):
            raise BadRecord(f"field '{path}' must be a list, got {type(value).__name__}")
        id_path, text_path, score_path = self.context_paths
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(Context(f"ctx-{i + 1}", item, None))
                continue
            if not isinstance(item, dict):
                raise BadRecord(f"field '{path}[{i}]' must be an object or a string, got {type(item).__name__}")
            text = _get(item, text_path)
            if not isinstance(text, str):
                kind = "missing" if text is _MISSING else f"a {type(text).__name__}"
                raise BadRecord(f"field '{path}[{i}].{self.names.context_text}' must be a string, got {kind}")
            ident = _get(item, id_path)
            if ident is _MISSING or ident is None:
                ident = f"ctx-{i + 1}"
            elif isinstance(ident, (int, str)) and not isinstance(ident, bool):
                ident = str(ident)
            else:
                raise BadRecord(f"field '{path}[{i}].{self.names.context_id}' must be a string, got {type(ident).__name__}")
            score = _get(item, score_path)
            if score is _MISSING or score is None:
                score = None
            elif isinstance(score, (int, float)) and not isinstance(score, bool):
                score = float(score)
            else:
                raise BadRecord(f"field '{path}[{i}].{self.names.context_score}' must be a number, got {type(score).__name__}")
            out.append(Context(ident, text, score))
        return out

    def _rating(self, obj: dict) -> float | None:
        value = self._field(obj, "rating")
        if value is _MISSING or value is None:
            return None
        if isinstance(value, bool):
            return 1.0 if value else -1.0
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str) and value.strip().lower() in _RATING_WORDS:
            return float(_RATING_WORDS[value.strip().lower()])
        # The value itself stays out of the reason: reasons reach the report unscrubbed.
        raise BadRecord(f"field '{self.names.rating}' must be a number (or up/down), got {type(value).__name__} "
                        "that is neither")

    def _labels(self, obj: dict) -> list[str]:
        value = self._field(obj, "labels")
        if value is _MISSING or value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadRecord(f"field '{self.names.labels}' must be a list of strings, got {type(value).__name__}")
        return value

    def _topic(self, obj: dict) -> str | None:
        value = self._field(obj, "topic")
        if value is _MISSING or value is None:
            return None
        return str(value)


# --------------------------------------------------------------------------- answers & rules


@dataclass(slots=True)
class Answer:
    """An answer as the pipeline's output format sees it."""

    text: str
    citations: list[str]
    structured: bool  # a JSON object with exactly `answer` (str) and `citations` (list of str)
    is_idk: bool


def _normal(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


class AnswerRules:
    """The rules that label unlabelled failures and vet ideal answers: does the format
    validate, are citations present and real, is the answer supported by the contexts."""

    def __init__(self, output: OutputConfig, min_support: float):
        self.output = output
        self.min_support = min_support
        self._idk = _normal(output.idk_answer)
        self._vocabularies: dict[str, frozenset[str]] = {}

    def parse(self, raw: str) -> Answer:
        stripped = raw.strip()
        if stripped.startswith("{"):
            try:
                obj = orjson.loads(stripped)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("answer"), str):
                cites = obj.get("citations")
                structured = (set(obj) == {"answer", "citations"} and isinstance(cites, list)
                              and all(isinstance(c, str) for c in cites))
                text = obj["answer"]
                citations = list(cites) if structured else _CITATION.findall(text)
                return Answer(text, _unique(citations + _CITATION.findall(text)), structured, self.is_idk(text))
        return Answer(stripped, _unique(_CITATION.findall(stripped)), False, self.is_idk(stripped))

    def is_idk(self, text: str) -> bool:
        normal = _normal(text)
        return bool(normal) and (self._idk in normal or normal.startswith(("i don't know", "i do not know")))

    def format_valid(self, answer: Answer) -> bool:
        if self.output.format == "json":
            return answer.structured and bool(answer.text.strip())
        return bool(answer.text.strip())

    def support(self, answer: Answer, contexts: list[Context]) -> float:
        """Share of the answer's content words that occur in the contexts."""
        words = [w for w in _WORD.findall(_CITATION.sub(" ", answer.text).lower())
                 if w not in STOPWORDS and len(w) > 1]
        if not words:
            return 1.0
        if not contexts:
            return 0.0
        vocabulary = self._vocabulary(contexts[0].text)
        if len(contexts) > 1:
            vocabulary = vocabulary.union(*(self._vocabulary(ctx.text) for ctx in contexts[1:]))
        return sum(map(vocabulary.__contains__, words)) / len(words)

    def _vocabulary(self, text: str) -> frozenset[str]:
        # Retrieved documents repeat across logs: tokenize each distinct text once.
        found = self._vocabularies.get(text)
        if found is None:
            if len(self._vocabularies) > 50_000:
                self._vocabularies.clear()
            found = self._vocabularies[text] = frozenset(_WORD.findall(text.lower()))
        return found

    def supported(self, answer: Answer, contexts: list[Context]) -> bool:
        return self.support(answer, contexts) >= self.min_support

    def canonical(self, answer: Answer) -> str:
        """The ideal answer in the pipeline's output format."""
        if answer.is_idk:
            if self.output.format == "json":
                return orjson.dumps({"answer": self.output.idk_answer, "citations": []}).decode()
            return self.output.idk_answer
        if self.output.format == "json":
            return orjson.dumps({"answer": answer.text.strip(), "citations": answer.citations}).decode()
        return answer.text.strip()


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass(slots=True)
class Route:
    """Where one record goes. `disposition` is example, backlog or filtered."""

    disposition: str
    label: str
    labels: list[str]
    label_source: str  # human | rule
    rule: str | None = None
    reason: str | None = None  # why filtered, or why in the backlog
    ideal: Answer | None = None
    add_idk: bool = False  # hallucination without the answer in context: also an IDK example


def rule_labels(record: LogRecord, rules: AnswerRules) -> tuple[list[str], str | None]:
    """Label an unlabelled failure (rating < 0, no taxonomy label) from the record itself."""
    response = rules.parse(record.response) if record.response else None
    if record.correction:
        ideal = rules.parse(record.correction)
        if ideal.is_idk or not rules.supported(ideal, record.contexts):
            if response is not None and response.is_idk:
                return ["missing_knowledge"], "refused_and_answer_not_in_context"
            return [HALLUCINATION], "ideal_answer_not_in_context"
    if response is None or not response.text:
        return [], None
    if not rules.format_valid(response):
        return ["bad_format"], "format_invalid"
    if response.is_idk:
        return [], None  # refused although the answer may be there: no rule says why
    if not response.citations:
        return ["missing_citation"], "citations_missing"
    context_ids = {c.id for c in record.contexts}
    if any(c not in context_ids for c in response.citations):
        return [HALLUCINATION], "citations_not_in_context"
    if not rules.supported(response, record.contexts):
        return [HALLUCINATION], "answer_not_in_context"
    return [], None


def route(record: LogRecord, labels: list[str], rules: AnswerRules, keep_positive: bool) -> Route:
    """The taxonomy table of DESIGN.md, applied to one record with normalised labels."""
    failure = bool(labels) or (record.rating is not None and record.rating < 0)
    if not failure:
        if record.rating is None or record.rating == 0:
            return Route("filtered", "none", [], "human", reason="no_feedback")
        if not keep_positive:
            return Route("filtered", "positive", [], "human", reason="positive_feedback")
        response = rules.parse(record.response or "")
        ids = {c.id for c in record.contexts}
        exemplary = response.text and rules.format_valid(response) and (
            response.is_idk
            or (response.citations and all(c in ids for c in response.citations)
                and rules.supported(response, record.contexts))
        )
        if exemplary:
            return Route("example", "positive", [], "human", ideal=response)
        return Route("filtered", "positive", [], "human", reason="positive_not_exemplary")

    source, rule = "human", None
    if not labels:
        labels, rule = rule_labels(record, rules)
        source = "rule"
        if not labels:
            return Route("filtered", "unclassified", [], "rule", reason="unclassified_failure")

    knowledge = [lab for lab in KNOWLEDGE_LABELS if lab in labels]
    if knowledge:
        return Route("backlog", knowledge[0], labels, source, rule, reason="knowledge_failure")

    behaviour = [lab for lab in BEHAVIOUR_LABELS if lab in labels]
    if HALLUCINATION in labels or behaviour:
        label = HALLUCINATION if HALLUCINATION in labels else behaviour[0]
        if not (record.correction and record.correction.strip()) or not rules.parse(record.correction).text.strip():
            if label == HALLUCINATION:
                # We cannot tell whether the context held the answer: a reviewer must look.
                return Route("backlog", label, labels, source, rule, reason="hallucination_needs_review")
            return Route("filtered", label, labels, source, rule, reason="no_ideal_answer")
        ideal = rules.parse(record.correction)
        if ideal.is_idk or (label == HALLUCINATION and not rules.supported(ideal, record.contexts)):
            # The context lacks the answer: fix retrieval, and teach the model to say so.
            return Route("backlog", label, labels, source, rule, reason="answer_not_in_context",
                         ideal=ideal, add_idk=True)
        ids = {c.id for c in record.contexts}
        if any(c not in ids for c in ideal.citations):
            return Route("filtered", label, labels, source, rule, reason="correction_cites_unknown_context")
        if not rules.supported(ideal, record.contexts):
            # Training on an answer the documents do not hold teaches hallucination.
            return Route("backlog", label, labels, source, rule, reason="ideal_answer_not_in_context", ideal=ideal)
        return Route("example", label, labels, source, rule, ideal=ideal)

    return Route("filtered", WEAK_REASONING, labels, source, rule, reason="weak_reasoning")


def normalise_labels(raw: list[str], aliases: dict[str, str], unknown: Counter, scrub: Any = None) -> list[str]:
    out = []
    for label in raw:
        key = label.strip().lower().replace(" ", "_").replace("-", "_")
        key = aliases.get(label, aliases.get(key, key))
        if key in TAXONOMY_LABELS:
            if key not in out:
                out.append(key)
        else:
            # Free-text labels reach the manifest and the report: scrub them, and cap them.
            unknown[(scrub(key) if scrub else key)[:60]] += 1
    return out


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


# --------------------------------------------------------------------------- the backlog


@dataclass
class BacklogGroup:
    label: str
    topic: str
    count: int = 0
    log_ids: list[str] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    keywords: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)


class Backlog:
    """RAG backlog entries grouped by (label, topic): the topic field when the logs have
    one, else the document retrieval ranked first (the closest thing the knowledge base has;
    what is missing is next to it). Memory is bounded by the number of groups."""

    SAMPLES = 5

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], BacklogGroup] = {}

    def add(self, record: LogRecord, route: Route, scrub: Any, scrubbed: dict[str, Any]) -> None:
        if record.topic:
            topic = scrub(record.topic)
        elif record.contexts:
            best = max(record.contexts, key=lambda c: c.score if c.score is not None else float("-inf"))
            topic = scrub(best.id).split("#")[0]
        else:
            topic = "(nothing retrieved)"
        group = self.groups.get((route.label, topic))
        if group is None:
            group = self.groups[(route.label, topic)] = BacklogGroup(route.label, topic)
        group.count += 1
        group.log_ids.append(scrubbed["log_id"])
        group.reasons[route.reason or "knowledge_failure"] += 1
        words = [w for w in _WORD.findall(scrubbed["query"].lower()) if w not in STOPWORDS and len(w) > 2]
        group.keywords.update(words)
        if len(group.keywords) > 500:
            group.keywords = Counter(dict(group.keywords.most_common(200)))
        if len(group.samples) < self.SAMPLES:
            group.samples.append(scrubbed)

    def entries(self) -> list[dict[str, Any]]:
        ordered = sorted(self.groups.values(), key=lambda g: (-g.count, g.label, g.topic))
        return [
            {
                "label": g.label,
                "topic": g.topic,
                "count": g.count,
                "reasons": dict(sorted(g.reasons.items())),
                "keywords": [w for w, _ in g.keywords.most_common(8)],
                "log_ids": g.log_ids,
                "samples": g.samples,
            }
            for g in ordered
        ]


# --------------------------------------------------------------------------- the stage


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


def dataset_key(config: PipelineConfig, input_hashes: list[tuple[str, str]], general_hash: str | None) -> str:
    payload = orjson.dumps(
        {
            "inputs": sorted(h for _, h in input_hashes),
            "general": general_hash,
            "config": config.section_hash("curate", "model", "output", "prompt"),
            "code": code_version(),
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(payload).hexdigest()


def curate(config: PipelineConfig, *, force: bool = False, progress: Progress | None = None,
           tokenizer: Any = None) -> CurateResult:
    progress = progress or Progress()
    cfg = config.curate
    started = time.perf_counter()

    # 1. Inputs, identity, and the no-op check.
    files = resolve_inputs(cfg.inputs)
    input_hashes = [(str(p), file_sha256(p)) for p in files]
    general_path = Path(cfg.general_mix.path) if cfg.general_mix.path and cfg.general_mix.fraction > 0 else None
    if general_path is not None and not general_path.is_file():
        raise FileNotFoundError(f"curate.general_mix.path: {general_path} does not exist")
    general_hash = file_sha256(general_path) if general_path else None
    key = dataset_key(config, input_hashes, general_hash)
    dataset_id = f"cur-{key[:12]}"
    out_root = Path(cfg.output_dir)
    final = out_root / dataset_id
    if (final / "manifest.json").exists() and not force:
        manifest = orjson.loads((final / "manifest.json").read_bytes())
        set_latest(out_root, dataset_id)
        return CurateResult(dataset_id, final, manifest, skipped=True)
    if force and final.exists():
        import shutil

        shutil.rmtree(final)

    loading = time.perf_counter()
    if tokenizer is None:
        from pipelines.models import load_tokenizer

        tokenizer = load_tokenizer(config.model.base)
    tokens = TokenCounter(tokenizer, config)
    # The first run converts the base model's tokenizer; that is not curation time.
    tokenizer_seconds = time.perf_counter() - loading
    started += tokenizer_seconds
    scrubber = Scrubber(cfg.scrub.extra_patterns)
    rules = AnswerRules(config.output, cfg.min_context_support)
    reader = RecordReader(config)
    hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.ngram, cfg.dedup.threshold, cfg.dedup.seed)
    rng = random.Random(cfg.seed)

    counts: Counter = Counter()
    filtered: Counter = Counter()
    quarantine_reasons: Counter = Counter()
    unknown_labels: Counter = Counter()
    label_table: dict[str, Counter] = defaultdict(Counter)  # label -> where it went
    rule_table: Counter = Counter()
    backlog = Backlog()
    context_cache: dict[str, tuple[str, tuple[tuple[str, int], ...]]] = {}

    scrub = scrubber.scrub

    def scrub_context(text: str) -> str:
        # Retrieved documents repeat across logs: scrub each distinct text once.
        hit = context_cache.get(text)
        if hit is None:
            if len(context_cache) > 100_000:
                context_cache.clear()
            hit = context_cache[text] = scrubber.scrub_counted(text)
        for kind, n in hit[1]:
            scrubber.counts[kind] += n
        return hit[0]

    total_bytes = sum(p.stat().st_size for p in files)
    progress.start(total_bytes)

    with atomic_dir(final) as tmp:
        quarantine_file = open(tmp / "quarantine.jsonl", "wb")
        spool_file = open(tmp / ".candidates.spool", "wb")

        # Per-candidate state kept in memory: rank, whether it came from a record (counts
        # in the accounting) or was derived, its exact-duplicate fingerprint and band keys.
        ranks: list[int] = []
        cand_labels: list[str] = []
        from_record: list[bool] = []
        fingerprints: list[int] = []
        band_chunks: list[np.ndarray] = []
        pending: list[dict[str, Any]] = []
        context_pool: list[list[dict[str, str]]] = []  # reservoir for synthetic IDK contexts
        pool_seen = 0

        def quarantine(path: Path, line_no: int, reason: str, raw: bytes | None, length: int) -> None:
            counts["quarantined"] += 1
            quarantine_reasons[reason.split(":")[0]] += 1
            entry: dict[str, Any] = {"file": str(path), "line": line_no, "reason": reason, "bytes": length}
            if raw is not None:
                text = scrub(raw.decode("utf-8", errors="replace"))
                entry["raw"] = text[: cfg.quarantine_max_chars]
                entry["raw_truncated"] = len(text) > cfg.quarantine_max_chars
            quarantine_file.write(orjson.dumps(entry) + b"\n")

        def flush_candidates() -> None:
            if not pending:
                return
            lengths = tokens.lengths(pending)
            keep = []
            for candidate, n in zip(pending, lengths):
                if n > config.model.max_seq_tokens:
                    if candidate["_from_record"]:
                        filtered["too_long"] += 1
                        label_table[candidate["label"]]["example"] -= 1
                        label_table[candidate["label"]]["filtered"] += 1
                    else:
                        counts["added_dropped_too_long"] += 1
                    continue
                candidate["n_tokens"] = n
                keep.append(candidate)
            if keep:
                # Near-duplicate questions are what leak and what repeat a lesson, so the
                # question alone is shingled: different questions sharing one answer stay.
                texts = [c["query"] for c in keep]
                band_chunks.append(hasher.keys(texts))
                for c, text in zip(keep, texts):
                    ranks.append(c.pop("_rank"))
                    cand_labels.append(c["label"])
                    from_record.append(c.pop("_from_record"))
                    fingerprints.append(text_fingerprint(text))
                    spool_file.write(orjson.dumps(c) + b"\n")
            pending.clear()

        def add_candidate(record: LogRecord, r: Route, source: str, answer: Answer,
                          contexts: list[dict[str, str]], query: str, where: tuple[str, int]) -> None:
            ideal = scrub(rules.canonical(answer))
            pending.append({
                "id": "ex-" + hashlib.blake2b(f"{source}|{where[0]}|{where[1]}".encode(), digest_size=6).hexdigest(),
                "kind": "rag",
                "source": source,
                "query": query,
                "contexts": contexts,
                "ideal_answer": ideal,
                "label": r.label,
                "labels": r.labels,
                "label_source": r.label_source,
                "rule": r.rule,
                "log_id": scrub_context(record.log_id),
                "session_id": scrub_context(record.session_id) if record.session_id else None,
                "timestamp": scrub(record.timestamp) if record.timestamp else None,
                "file": where[0],
                "line": where[1],
                "_rank": SOURCE_RANK.get((source, r.label_source), 0),
                "_from_record": source != "idk_from_hallucination",
            })
            if len(pending) >= 2048:
                flush_candidates()

        # 2. One streaming pass over every line. The cyclic garbage collector is paused: the
        # loop makes no reference cycles (refcounting frees everything), and its periodic
        # scans of a growing heap cost ~14% of the pass at 400,000 records.
        done_bytes = 0
        with gc_paused():
            for path in files:
                reader_fh, raw_fh = open_log(path)
                with raw_fh, reader_fh:
                    for line_no, raw, length in iter_lines(reader_fh, cfg.max_line_bytes):
                        counts["read"] += 1
                        if counts["read"] % 4096 == 0:
                            progress.advance(done_bytes + raw_fh.tell(), counts["read"])
                        if raw is None:
                            quarantine(path, line_no, f"line too long: {length} bytes > max_line_bytes {cfg.max_line_bytes}", None, length)
                            continue
                        if raw.startswith(b"\xef\xbb\xbf"):
                            raw = raw[3:]  # a UTF-8 byte order mark is not part of the record
                        if not raw.strip():
                            quarantine(path, line_no, "empty line", raw, length)
                            continue
                        try:
                            obj = orjson.loads(raw)
                        except orjson.JSONDecodeError as exc:
                            try:
                                raw.decode("utf-8")
                                reason = f"invalid JSON: {exc}"
                            except UnicodeDecodeError as uexc:
                                reason = f"invalid UTF-8: byte {uexc.start}"
                            quarantine(path, line_no, reason, raw, length)
                            continue
                        try:
                            record = reader.read(obj, fallback_id=f"{path.name}:{line_no}")
                        except BadRecord as exc:
                            quarantine(path, line_no, f"invalid record: {exc}", raw, length)
                            continue

                        labels = normalise_labels(record.labels, cfg.label_aliases, unknown_labels, scrub)
                        r = route(record, labels, rules, cfg.keep_positive)
                        label_table[r.label][r.disposition] += 1
                        if r.rule:
                            rule_table[f"{r.rule} -> {r.label}"] += 1
                        where = (str(path), line_no)

                        if r.disposition == "filtered":
                            filtered[r.reason or "filtered"] += 1
                            continue

                        query = scrub(record.query)
                        # Context ids are scrubbed like the answer text that cites them, so
                        # a citation still matches its (scrubbed) id.
                        contexts = [{"id": scrub_context(c.id), "text": scrub_context(c.text)}
                                    for c in record.contexts]
                        if contexts:
                            pool_seen += 1
                            if len(context_pool) < 1024:
                                context_pool.append(contexts)
                            else:
                                slot = rng.randrange(pool_seen)
                                if slot < 1024:
                                    context_pool[slot] = contexts

                        if r.disposition == "backlog":
                            counts["backlog"] += 1
                            backlog.add(record, r, scrub_context, {
                                "log_id": scrub_context(record.log_id),
                                "query": query,
                                "retrieved": [c["id"] for c in contexts],
                                "response": scrub(record.response)[:2000] if record.response else None,
                                "comment": scrub(record.comment) if record.comment else None,
                                "suggested_answer": scrub(record.correction)[:2000] if record.correction else None,
                                "file": where[0],
                                "line": where[1],
                            })
                            if r.add_idk and r.ideal is not None:
                                idk = Answer(config.output.idk_answer, [], True, True)
                                add_candidate(record, r, "idk_from_hallucination", idk, contexts, query, where)
                            continue

                        assert r.ideal is not None
                        source = "keep" if r.label == "positive" else "correction"
                        add_candidate(record, r, source, r.ideal, contexts, query, where)
                done_bytes += path.stat().st_size
                progress.advance(done_bytes, counts["read"])
        flush_candidates()
        spool_file.close()
        quarantine_file.close()
        read_seconds = time.perf_counter() - started

        # 3-4. Near-duplicate clusters; each keeps its best-ranked copy (the newest on ties).
        n = len(ranks)
        band_keys = np.concatenate(band_chunks) if band_chunks else np.zeros((0, hasher.bands), np.uint64)
        del band_chunks
        labels_of = clusters(band_keys)
        del band_keys
        order = np.lexsort((np.arange(n), np.asarray(ranks, dtype=np.int64), labels_of))
        sorted_labels = labels_of[order]
        last_of_cluster = np.r_[sorted_labels[1:] != sorted_labels[:-1], True] if n else np.zeros(0, bool)
        representative = np.full(labels_of.max() + 1 if n else 0, -1, dtype=np.int64)
        representative[sorted_labels[last_of_cluster]] = order[last_of_cluster]
        is_rep = np.zeros(n, dtype=bool)
        is_rep[representative[representative >= 0]] = True
        fingerprints_arr = np.asarray(fingerprints, dtype=np.uint64)
        for i in np.flatnonzero(~is_rep):
            rep = representative[labels_of[i]]
            exact = fingerprints_arr[i] == fingerprints_arr[rep]
            if from_record[i]:
                filtered["duplicate_exact" if exact else "duplicate_near"] += 1
                label_table[cand_labels[i]]["example"] -= 1
                label_table[cand_labels[i]]["filtered"] += 1
            else:
                counts["added_dropped_duplicate"] += 1
        dedup_seconds = time.perf_counter() - started - read_seconds

        # 5. Write the examples: kept candidates in input order, then synthetic IDK, then
        # general instructions.
        eligible = [i for i in range(n) if is_rep[i] and from_record[i]]
        n_synthetic = round(cfg.idk.synthetic_fraction * len(eligible))
        synth_sources = set(rng.sample(eligible, min(n_synthetic, len(eligible)))) if context_pool else set()
        added: Counter = Counter()
        example_lengths: list[int] = []
        label_counts: Counter = Counter()
        source_counts: Counter = Counter()
        synthetic: list[dict[str, Any]] = []
        examples_fh = open(tmp / "examples.jsonl", "wb")

        def write_example(example: dict[str, Any]) -> None:
            examples_fh.write(orjson.dumps(example) + b"\n")
            example_lengths.append(example["n_tokens"])
            label_counts[example["label"]] += 1
            source_counts[example["source"]] += 1

        with open(tmp / ".candidates.spool", "rb") as spool:
            for i, line in enumerate(spool):
                if not is_rep[i]:
                    continue
                example = orjson.loads(line)
                example["cluster_id"] = "c-" + hashlib.blake2b(
                    str(int(fingerprints_arr[i])).encode(), digest_size=6).hexdigest()
                if from_record[i]:
                    counts["kept"] += 1
                else:
                    added["idk_from_hallucination"] += 1
                write_example(example)
                if i in synth_sources:
                    made = _synthetic_idk(example, context_pool, rng, rules, config)
                    if made is not None:
                        synthetic.append(made)
        synthetic_lengths = tokens.lengths(synthetic)
        for example, n_tok in zip(synthetic, synthetic_lengths):
            if n_tok > config.model.max_seq_tokens:
                counts["added_dropped_too_long"] += 1
                continue
            example["n_tokens"] = n_tok
            added["idk_synthetic"] += 1
            write_example(example)

        general_skipped: Counter = Counter()
        if general_path is not None:
            task_examples = counts["kept"] + sum(added.values())
            wanted = round(cfg.general_mix.fraction / (1 - cfg.general_mix.fraction) * task_examples)
            general = _sample_general(general_path, wanted, rng, scrub, general_skipped)
            for example, n_tok in zip(general, tokens.lengths(general)):
                if n_tok > config.model.max_seq_tokens:
                    general_skipped["too_long"] += 1
                    continue
                example["n_tokens"] = n_tok
                added["general"] += 1
                write_example(example)
        examples_fh.close()
        os.remove(tmp / ".candidates.spool")

        # 6. Backlog, report, manifest.
        backlog_entries = backlog.entries()
        with open(tmp / "rag_backlog.jsonl", "wb") as fh:
            for entry in backlog_entries:
                fh.write(orjson.dumps(entry) + b"\n")

        counts_out = {
            "read": counts["read"],
            "kept": counts["kept"],
            "quarantined": counts["quarantined"],
            "backlog": counts["backlog"],
            "filtered": dict(sorted(filtered.items())),
            "added": dict(sorted(added.items())),
            "added_dropped": {k.removeprefix("added_dropped_"): v for k, v in sorted(counts.items())
                              if k.startswith("added_dropped_")},
            "examples": counts["kept"] + sum(added.values()),
        }
        accounted = counts_out["kept"] + counts_out["quarantined"] + counts_out["backlog"] + sum(filtered.values())
        if accounted != counts_out["read"]:
            raise AssertionError(f"accounting broken: read {counts_out['read']} != accounted {accounted}")
        decision = decide(label_table, counts_out, cfg.decision)
        lengths_arr = np.asarray(example_lengths or [0])
        manifest = {
            "stage": "curate",
            "id": dataset_id,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code_version": code_version(),
            "config_hash": config.section_hash("curate", "model", "output", "prompt"),
            "pipeline": config.name,
            "base_model": config.model.base,
            "inputs": [{"path": p, "sha256": h, "bytes": Path(p).stat().st_size} for p, h in input_hashes],
            "general_mix": {"path": str(general_path) if general_path else None, "sha256": general_hash,
                            "skipped": dict(general_skipped)},
            "counts": counts_out,
            "labels": {label: dict(sorted(where.items())) for label, where in sorted(label_table.items())},
            "rule_labels": dict(sorted(rule_table.items())),
            "unknown_labels": dict(sorted(unknown_labels.items())),
            "quarantine_reasons": dict(sorted(quarantine_reasons.items())),
            "scrubbed": dict(sorted(scrubber.counts.items())),
            "examples_by_label": dict(sorted(label_counts.items())),
            "examples_by_source": dict(sorted(source_counts.items())),
            "tokens": {
                "max_seq_tokens": config.model.max_seq_tokens,
                "min": int(lengths_arr.min()), "median": int(np.median(lengths_arr)),
                "p95": int(np.percentile(lengths_arr, 95)), "max": int(lengths_arr.max()),
                "total": int(lengths_arr.sum()) if example_lengths else 0,
            },
            "dedup": {"threshold": cfg.dedup.threshold, "num_perm": cfg.dedup.num_perm,
                      "ngram": cfg.dedup.ngram, "bands": hasher.bands, "rows": hasher.rows,
                      "clusters": int(is_rep.sum())},
            "decision": decision,
            "timings": {"tokenizer_s": round(tokenizer_seconds, 3),
                        "read_route_scrub_s": round(read_seconds, 3), "dedup_s": round(dedup_seconds, 3),
                        "total_s": round(time.perf_counter() - started, 3)},
            "files": {name: file_sha256(tmp / name) for name in ("examples.jsonl", "rag_backlog.jsonl", "quarantine.jsonl")},
        }
        (tmp / "report.md").write_text(render_report(manifest, backlog_entries), encoding="utf-8")
        (tmp / "manifest.json").write_bytes(dumps(manifest))
    progress.stop()
    set_latest(out_root, dataset_id)
    return CurateResult(dataset_id, final, manifest, skipped=False)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _synthetic_idk(example: dict[str, Any], pool: list[list[dict[str, str]]], rng: random.Random,
                   rules: AnswerRules, config: PipelineConfig) -> dict[str, Any] | None:
    """The kept example's question with retrieved documents that do not hold its answer."""
    answer = rules.parse(example["ideal_answer"])
    own = {c["id"] for c in example["contexts"]}
    start = rng.randrange(len(pool))
    for step in range(min(len(pool), 16)):
        contexts = pool[(start + step) % len(pool)]
        if own & {c["id"] for c in contexts}:
            continue
        candidate = [Context(c["id"], c["text"], None) for c in contexts]
        if rules.support(answer, candidate) >= rules.min_support:
            continue
        idk = Answer(config.output.idk_answer, [], True, True)
        return {
            **{k: v for k, v in example.items() if k not in ("n_tokens",)},
            "id": "ex-" + hashlib.blake2b(f"idk|{example['id']}".encode(), digest_size=6).hexdigest(),
            "source": "idk_synthetic",
            "contexts": contexts,
            "ideal_answer": rules.canonical(idk),
            "label": "idk_synthetic",
            "labels": [],
            "label_source": "synthetic",
            "rule": None,
            # Same question as its source: the split must keep the pair on one side.
            "cluster_id": example["cluster_id"],
        }
    return None


def _sample_general(path: Path, wanted: int, rng: random.Random, scrub: Any, skipped: Counter) -> list[dict[str, Any]]:
    """A seeded sample of `wanted` general instructions (reservoir: the file may be large)."""
    if wanted <= 0:
        return []
    heap: list[tuple[float, int, dict[str, Any]]] = []
    with open(path, "rb") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = orjson.loads(line)
            except orjson.JSONDecodeError:
                skipped["invalid_json"] += 1
                continue
            if not (isinstance(item, dict) and isinstance(item.get("query"), str) and isinstance(item.get("answer"), str)):
                skipped["missing_query_or_answer"] += 1
                continue
            key = rng.random()
            entry = (key, line_no, item)
            if len(heap) < wanted:
                heapq.heappush(heap, entry)
            elif key > heap[0][0]:
                heapq.heapreplace(heap, entry)
    out = []
    for _, line_no, item in sorted(heap, key=lambda e: e[1]):
        ident = str(item.get("id") or f"{path.name}:{line_no}")
        out.append({
            "id": "gen-" + hashlib.blake2b(ident.encode(), digest_size=6).hexdigest(),
            "kind": "general",
            "source": "general",
            "query": scrub(item["query"]),
            "contexts": [],
            "ideal_answer": scrub(item["answer"]),
            "label": "general",
            "labels": [],
            "label_source": "general",
            "rule": None,
            "log_id": ident,
            "session_id": None,
            "timestamp": None,
            "file": str(path),
            "line": line_no,
            "cluster_id": "g-" + hashlib.blake2b(ident.encode(), digest_size=6).hexdigest(),
        })
    return out


# --------------------------------------------------------------------------- decision & report


def decide(label_table: dict[str, Counter], counts: dict[str, Any], rules: Any) -> dict[str, Any]:
    """What the logs support: prompt-only, fix RAG, fine-tune, or hybrid, with the counts."""
    knowledge = sum(sum(label_table[lab].values()) for lab in KNOWLEDGE_LABELS if lab in label_table)
    hallucination_gaps = label_table.get(HALLUCINATION, Counter())["backlog"]
    behaviour = sum(sum(label_table[lab].values()) for lab in BEHAVIOUR_LABELS if lab in label_table)
    behaviour += label_table.get(HALLUCINATION, Counter())["example"] + label_table.get(HALLUCINATION, Counter())["filtered"]
    knowledge += hallucination_gaps
    failures = knowledge + behaviour
    trainable = counts["kept"]
    numbers = {"failures": failures, "knowledge_failures": knowledge, "behaviour_failures": behaviour,
               "trainable_examples": trainable}
    if failures < rules.min_failures:
        verdict, why = "prompt-only", (f"only {failures} failures (< {rules.min_failures}): too little signal "
                                       "to train on; improve the prompt and keep collecting feedback")
    else:
        k_share, b_share = knowledge / failures, behaviour / failures
        numbers.update({"knowledge_share": round(k_share, 3), "behaviour_share": round(b_share, 3)})
        enough = trainable >= rules.min_examples
        if k_share >= rules.dominant_share:
            verdict, why = "fix RAG", f"{k_share:.0%} of failures are missing, stale or mis-retrieved knowledge"
        elif b_share >= rules.dominant_share:
            if enough:
                verdict, why = "fine-tune", f"{b_share:.0%} of failures are behaviour, with {trainable} trainable examples"
            else:
                verdict, why = "prompt-only", (f"{b_share:.0%} of failures are behaviour but only {trainable} "
                                               f"trainable examples (< {rules.min_examples}): fix the prompt, collect corrections")
        elif enough:
            verdict, why = "hybrid", (f"knowledge ({k_share:.0%}) and behaviour ({b_share:.0%}) failures both matter: "
                                      f"work the RAG backlog and fine-tune on {trainable} examples")
        else:
            verdict, why = "fix RAG", (f"mixed failures and only {trainable} trainable examples "
                                       f"(< {rules.min_examples}): start with the RAG backlog")
    return {"verdict": verdict, "why": why, **numbers}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(m: dict[str, Any], backlog_entries: list[dict[str, Any]]) -> str:
    c = m["counts"]
    filtered_total = sum(c["filtered"].values())
    out = [
        f"# Curation report: {m['id']}",
        "",
        f"{len(m['inputs'])} input file(s), {c['read']} lines read; created {m['created_at']} by refit {m['code_version']}.",
        "",
        "## Accounting",
        "",
        "Every input line is in exactly one column: read = kept + quarantined + backlog + filtered.",
        "",
        _table(["read", "kept", "quarantined", "backlog", "filtered", "added (derived)", "examples written"],
               [[c["read"], c["kept"], c["quarantined"], c["backlog"], filtered_total,
                 sum(c["added"].values()), c["examples"]]]),
        "",
        "## Where each label went",
        "",
        "Human labels come from the logs; unlabelled failures were labelled by rules (see below).",
        "",
        _table(["label", "example", "backlog", "filtered", "total"],
               [[label, w.get("example", 0), w.get("backlog", 0), w.get("filtered", 0), sum(w.values())]
                for label, w in sorted(m["labels"].items(), key=lambda kv: -sum(kv[1].values()))]),
        "",
    ]
    if m["rule_labels"]:
        out += ["### Rule labels", "", _table(["rule -> label", "records"], [[k, v] for k, v in m["rule_labels"].items()]), ""]
    if m["unknown_labels"]:
        out += ["Labels outside the taxonomy (ignored; map them with `curate.label_aliases`): "
                + ", ".join(f"`{k}` ({v})" for k, v in m["unknown_labels"].items()), ""]
    out += ["## Filtered, by reason", "", _table(["reason", "records"], [[k, v] for k, v in c["filtered"].items()]) if c["filtered"] else "None.", ""]
    out += ["## Added examples", "", _table(["source", "examples"], [[k, v] for k, v in c["added"].items()]) if c["added"] else "None.", ""]
    if c["added_dropped"]:
        out += ["Derived examples dropped: " + ", ".join(f"{k} {v}" for k, v in c["added_dropped"].items()), ""]
    out += ["## Scrubbed PII and secrets", "", "Counts of replacements by type; values are never recorded.", "",
            _table(["type", "replaced"], [[k, v] for k, v in m["scrubbed"].items()]) if m["scrubbed"] else "Nothing found.", ""]
    out += ["## Quarantine", "", _table(["reason", "lines"], [[k, v] for k, v in m["quarantine_reasons"].items()])
            if m["quarantine_reasons"] else "No bad lines.", ""]
    t = m["tokens"]
    out += ["## Token lengths (base-model tokens, rendered prompt + answer)", "",
            _table(["min", "median", "p95", "max", "limit"], [[t["min"], t["median"], t["p95"], t["max"], t["max_seq_tokens"]]]), ""]
    out += ["## RAG backlog (top topics)", ""]
    if backlog_entries:
        out.append(_table(["label", "topic (nearest document)", "records", "keywords"],
                          [[e["label"], e["topic"], e["count"], ", ".join(e["keywords"][:5])] for e in backlog_entries[:15]]))
    else:
        out.append("Empty.")
    d = m["decision"]
    out += ["", "## Decision", "",
            f"**{d['verdict']}**: {d['why']}.", "",
            _table(["failures", "knowledge", "behaviour", "trainable examples"],
                   [[d["failures"], d["knowledge_failures"], d["behaviour_failures"], d["trainable_examples"]]]), ""]
    return "\n".join(out)
