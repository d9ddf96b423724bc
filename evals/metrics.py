"""Per-example metrics and the paired bootstrap.

Every function here scores one prediction against one item and returns a number (or None
where the metric does not apply, e.g. citation validity of a refusal); the runner averages
them per suite and per failure label, and compares contenders example by example.

Answer matching follows SQuAD 2.0's official script exactly: lowercase, strip punctuation,
drop the articles a/an/the, collapse whitespace; exact match and token F1 take the maximum
over the gold answers; an unanswerable item has the gold answer "" and is matched only by
an empty prediction, which is what a refusal becomes.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

# --------------------------------------------------------------------------- SQuAD


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, drop punctuation, articles and extra whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = _tokens(prediction), _tokens(gold)
    if not pred or not ref:  # SQuAD: both empty is a match (a correct "no answer")
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def gold_answers(answers: Sequence[str]) -> list[str]:
    """SQuAD 2.0: answers that normalise to nothing are dropped; none left means the item
    is unanswerable and only the empty answer matches."""
    kept = [a for a in answers if normalize_answer(a)]
    return kept or [""]


def max_exact(prediction: str, answers: Sequence[str]) -> int:
    return max(exact_match(prediction, g) for g in gold_answers(answers))


def max_f1(prediction: str, answers: Sequence[str]) -> float:
    return max(token_f1(prediction, g) for g in gold_answers(answers))


# --------------------------------------------------------------------------- reading outputs

_CITATION = re.compile(r"\[([A-Za-z0-9][A-Za-z0-9_.:#/-]*)\]")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_REFUSAL = re.compile(
    r"\b(?:i\s+(?:do\s+not|don'?t|dont)\s+know|i\s+(?:cannot|can'?t|am\s+unable\s+to)\s+(?:answer|find|tell)"
    r"|(?:is|are)\s+not\s+(?:mentioned|provided|stated|specified|given)\s+in\s+the\s+(?:provided\s+)?"
    r"(?:documents?|context)|(?:documents?|context)\s+(?:does|do)\s+not\s+(?:contain|say|mention|provide))",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ParsedOutput:
    answer: str  # the answer text with its [doc-id] markers removed
    citations: tuple[str, ...]  # ids listed in "citations" plus ids cited inline
    format_valid: bool  # the whole output is exactly the pipeline's format
    refusal: bool


def strip_citations(text: str) -> str:
    return " ".join(_CITATION.sub(" ", text).split())


def is_refusal(text: str, idk_answer: str) -> bool:
    if not text.strip():
        return False
    if normalize_answer(idk_answer) and normalize_answer(idk_answer) in normalize_answer(text):
        return True
    return bool(_REFUSAL.search(text.replace("\u2019", "'")))


def _json_object(text: str) -> Any:
    """The output as a JSON object, leniently: whole, inside a ``` fence, or the first
    {...} span. None when there is none."""
    candidates = [text.strip()]
    fenced = _FENCE.match(text.strip())
    if fenced:
        candidates.append(fenced.group(1))
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def json_format_valid(text: str) -> bool:
    """The pipeline's JSON schema: exactly one object, nothing around it, with a string
    "answer" and a list of string "citations" and no other keys."""
    try:
        value = orjson.loads(text.strip())
    except orjson.JSONDecodeError:
        return False
    return (isinstance(value, dict) and set(value) == {"answer", "citations"} and isinstance(value["answer"], str)
            and isinstance(value["citations"], list) and all(isinstance(c, str) for c in value["citations"]))


def parse_output(text: str, output_format: str, idk_answer: str) -> ParsedOutput:
    """Read a RAG answer in the pipeline's output format ("json" or "text")."""
    if output_format == "json":
        valid = json_format_valid(text)
        obj = _json_object(text)
        if obj is not None and isinstance(obj.get("answer"), str):
            raw = obj["answer"]
            listed = obj.get("citations") if isinstance(obj.get("citations"), list) else []
            listed = [c for c in listed if isinstance(c, str)]
        else:
            raw, listed = text, []
    else:
        raw, listed = text, []
        valid = bool(text.strip())
    cited = tuple(dict.fromkeys([*listed, *_CITATION.findall(raw)]))
    refusal = is_refusal(raw, idk_answer)
    if output_format == "text" and valid and not refusal:
        valid = bool(cited)  # the text format's contract: inline [doc-id] citations
    return ParsedOutput(answer=strip_citations(raw), citations=cited, format_valid=valid, refusal=refusal)


# --------------------------------------------------------------------------- grounding

_STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its this that these "
    "those you your we our they their he she his her i me my can could will would should may might must do does did "
    "not no yes so than then there here what which who whom when where why how all any each some such only also "
    "into about over under after before up down out".split()
)


def content_tokens(text: str) -> list[str]:
    return [t for t in normalize_answer(text).split() if t not in _STOPWORDS]


def supported_share(answer: str, source: str) -> float | None:
    """The share of the answer's content words that occur in the source; None for an
    answer without content words."""
    words = content_tokens(answer)
    if not words:
        return None
    vocabulary = set(normalize_answer(source).split())
    return sum(w in vocabulary for w in words) / len(words)


# A cited document "supports" the answer when at least this share of the answer's content
# words occur in it.
SUPPORT_THRESHOLD = 0.5


def citation_valid(parsed: ParsedOutput, contexts: Sequence[dict[str, Any]]) -> int | None:
    """1 when the answer cites at least one document, every cited id is one of the given
    documents, and at least one cited document supports the answer; None for a refusal or
    an item without documents (nothing to cite)."""
    if parsed.refusal or not contexts:
        return None
    texts = {c["id"]: c.get("text", "") for c in contexts}
    if not parsed.citations or any(c not in texts for c in parsed.citations):
        return 0
    return int(any((supported_share(parsed.answer, texts[c]) or 0.0) >= SUPPORT_THRESHOLD for c in parsed.citations))


def groundedness(parsed: ParsedOutput, contexts: Sequence[dict[str, Any]]) -> float | None:
    """The share of the answer's content words found in the given documents."""
    if parsed.refusal or not contexts:
        return None
    return supported_share(parsed.answer, " ".join(c.get("text", "") for c in contexts))


# --------------------------------------------------------------------------- the bootstrap


def paired_bootstrap(candidate: Sequence[float | None], other: Sequence[float | None], *, resamples: int,
                     seed: int, confidence: float = 0.95) -> dict[str, Any]:
    """Mean of the per-example deltas candidate - other, with a percentile bootstrap
    interval. Pairs where either side is None (the metric does not apply) are dropped; the
    same seed gives the same interval."""
    a = np.array([np.nan if v is None else float(v) for v in candidate])
    b = np.array([np.nan if v is None else float(v) for v in other])
    keep = ~(np.isnan(a) | np.isnan(b))
    deltas = a[keep] - b[keep]
    n = int(deltas.size)
    if n == 0:
        return {"n": 0, "delta": None, "low": None, "high": None, "conclusion": "no paired examples"}
    low, high = bootstrap_interval(deltas, resamples=resamples, seed=seed, confidence=confidence)
    delta = float(deltas.mean())
    return {"n": n, "delta": delta, "low": low, "high": high, "conclusion": conclusion(delta, low, high, n, confidence)}


def bootstrap_interval(values: np.ndarray, *, resamples: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (non-empty)."""
    n = int(values.size)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 4_000_000 // n)  # bounded memory for large suites
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def conclusion(delta: float, low: float, high: float, n: int, confidence: float) -> str:
    level = f"{confidence:.0%}"
    if low > 0:
        return f"better: the {level} interval [{low:+.3f}, {high:+.3f}] excludes zero (n={n})"
    if high < 0:
        return f"worse: the {level} interval [{low:+.3f}, {high:+.3f}] excludes zero (n={n})"
    if low == high == 0:
        return f"identical on all {n} examples"
    return (f"inconclusive: the {level} interval [{low:+.3f}, {high:+.3f}] spans zero, too wide at n={n} "
            f"to support a claim either way")
