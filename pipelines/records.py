"""Reading the inputs: one log line -> a LogRecord, or the reason it is quarantined; and a
seeded sample of the general-instruction file.

Field names come from `curate.fields`, as dotted paths (`feedback.rating`,
`retrieval.0.text`), so a team's own log format is read without a conversion step. Every
way a line can be unusable has its own reason: too long, empty, invalid UTF-8, invalid JSON,
or valid JSON that is not a usable record (a missing field, a wrong type); the reason names
the field but never its value (reasons reach the report unscrubbed).
"""

from __future__ import annotations

import hashlib
import heapq
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from pipelines.storage import DamagedTail

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig


class BadRecord(Exception):
    """A line that is valid JSON but not a usable record; the message is the reason."""


_MISSING = object()

# Control characters other than newline and tab: an escaped \u0000 or \u001b in a log is never
# text a model should learn, and some tokenizers and viewers choke on it. Stripped from every
# text field as it is read.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_text(value: str) -> str:
    return _CONTROL_RE.sub("", value) if not value.isprintable() else value


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
    retriever: str | None = None


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
        if isinstance(value, str):  # the common case first
            return clean_text(value)
        if value is _MISSING or value is None:
            if required:
                raise BadRecord(f"missing field '{getattr(self.names, name)}'")
            return None
        if isinstance(value, (dict, list)) and name in ("response", "correction"):
            # Some logs store the structured answer as an object rather than a string.
            return clean_text(orjson.dumps(value).decode())
        if isinstance(value, (int, float)) and not isinstance(value, bool) and name in ("id", "session_id", "timestamp"):
            return str(value)
        raise BadRecord(f"field '{getattr(self.names, name)}' must be a string, got {type(value).__name__}")

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
            retriever=self._topic(obj, "retriever"),
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
                out.append(Context(f"ctx-{i + 1}", clean_text(item), None))
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
                ident = clean_text(str(ident))
            else:
                raise BadRecord(f"field '{path}[{i}].{self.names.context_id}' must be a string, got {type(ident).__name__}")
            score = _get(item, score_path)
            if score is _MISSING or score is None:
                score = None
            elif isinstance(score, (int, float)) and not isinstance(score, bool):
                score = float(score)
            else:
                raise BadRecord(f"field '{path}[{i}].{self.names.context_score}' must be a number, got {type(score).__name__}")
            out.append(Context(ident, clean_text(text), score))
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
        return [clean_text(v) for v in value]

    def _topic(self, obj: dict, name: str = "topic") -> str | None:
        value = self._field(obj, name)
        if value is _MISSING or value is None:
            return None
        return clean_text(str(value))


class BadLine(Exception):
    """A line that goes to quarantine: `reason` says why, `raw` is the line (None when it
    was too long to read)."""

    def __init__(self, reason: str, raw: bytes | None):
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


def parse_line(reader: RecordReader, raw: bytes | DamagedTail | None, length: int, max_line_bytes: int,
               fallback_id: str, line_no: int = 0) -> LogRecord:
    """One line of a log as a record; raises BadLine with the quarantine reason."""
    if isinstance(raw, DamagedTail):
        raise BadLine(f"damaged compressed file: {raw.reason}; nothing after line {line_no - 1} could be read", None)
    if raw is None:
        raise BadLine(f"line too long: {length} bytes > max_line_bytes {max_line_bytes}", None)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte order mark is not part of the record
    if not raw.strip():
        raise BadLine("empty line", raw)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
            reason = f"invalid JSON: {exc}"
        except UnicodeDecodeError as uexc:
            reason = f"invalid UTF-8: byte {uexc.start}"
        raise BadLine(reason, raw) from None
    try:
        return reader.read(obj, fallback_id=fallback_id)
    except BadRecord as exc:
        raise BadLine(f"invalid record: {exc}", raw) from None


class QuarantineFile:
    """quarantine.jsonl: each bad line with its file, line number, reason and (scrubbed,
    capped) raw text. What a user must hear about a whole file (it is damaged, it is one JSON
    document rather than JSON Lines) is also warned about once and kept in `notes`."""

    def __init__(self, fh: IO[bytes], scrub: Any, max_chars: int, *, warn_now: bool = True):
        self.fh, self.scrub, self.max_chars = fh, scrub, max_chars
        self.notes: list[str] = []
        self.warn_now = warn_now  # a shard's worker leaves the warning to the process that merges

    def write(self, path: Path | str, line_no: int, bad: BadLine, length: int) -> None:
        entry: dict[str, Any] = {"file": str(path), "line": line_no, "reason": bad.reason, "bytes": length}
        if bad.raw is not None:
            text = self.scrub(bad.raw.decode("utf-8", errors="replace"))
            entry["raw"] = text[: self.max_chars]
            entry["raw_truncated"] = len(text) > self.max_chars
        self.fh.write(orjson.dumps(entry) + b"\n")
        if bad.reason.startswith("damaged compressed file"):
            self._note(f"{path}: {bad.reason.removeprefix('damaged compressed file: ')}; the {line_no - 1} "
                       "line(s) before it were read, the damage is in the quarantine")
        elif line_no == 1 and bad.raw is not None and bad.raw.strip() in (b"{", b"["):
            self._note(f"{path} looks like one (pretty-printed) JSON document, not JSON Lines: every line is "
                       "quarantined; write one record per line (e.g. jq -c '.[]')")

    def _note(self, note: str) -> None:
        from pipelines.console import warn

        self.notes.append(note)
        if self.warn_now:
            warn(note)


def sample_general(path: Path, wanted: int, rng: random.Random, scrub: Any,
                   skipped: Counter) -> list[dict[str, Any]]:
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
            "query": scrub(clean_text(item["query"])),
            "contexts": [],
            "ideal_answer": scrub(clean_text(item["answer"])),
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
