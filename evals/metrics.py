"""Per-example metrics and the paired bootstrap.

Every function here scores one prediction against one item and returns a number (or None
where the metric does not apply, e.g. citation validity of a refusal); the runner averages
them per suite and per failure label, and compares contenders example by example.

Answer matching follows SQuAD 2.0's official script exactly: lowercase, strip punctuation,
drop the articles a/an/the, collapse whitespace; exact match and token F1 take the maximum
over the gold answers; an unanswerable item has the gold answer "" and is matched only by
an empty prediction, which is what a refusal becomes. Reading an output (citations, refusal,
format, support) is pipelines/answers.py, the contract curate shares.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.answers import Answer, parse_answer, support
from pipelines.config import OutputConfig

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

# How an output is read (its citations, refusal, format, and support by the documents) is the
# pipeline's one answer contract, pipelines/answers.py, which curate uses too.
ParsedOutput = Answer


def parse_output(text: str, output_format: str, idk_answer: str) -> ParsedOutput:
    """Read a RAG answer in the pipeline's output format ("json" or "text")."""
    return parse_answer(text, output_format, idk_answer)


# --------------------------------------------------------------------------- grounding

# The default of `output.min_support`; the scorer passes the configured value.
DEFAULT_MIN_SUPPORT: float = OutputConfig.model_fields["min_support"].default


def citation_valid(parsed: ParsedOutput, contexts: Sequence[dict[str, Any]],
                   min_support: float = DEFAULT_MIN_SUPPORT) -> int | None:
    """1 when the answer cites at least one document, every cited id is one of the given
    documents, and at least one cited document alone supports the answer; None for a
    refusal or an item without documents (nothing to cite)."""
    if parsed.refusal or not contexts:
        return None
    texts = {c["id"]: c.get("text", "") for c in contexts}
    if not parsed.citations or any(c not in texts for c in parsed.citations):
        return 0
    shares = (support(parsed, [texts[c]]) for c in parsed.citations)
    return int(any(share is None or share >= min_support for share in shares))


def groundedness(parsed: ParsedOutput, contexts: Sequence[dict[str, Any]]) -> float | None:
    """The share of the answer's content words found in the given documents."""
    if parsed.refusal or not contexts:
        return None
    return support(parsed, [c.get("text", "") for c in contexts])


# --------------------------------------------------------------------------- the bootstrap


# Metrics where a rise is a regression; every other metric is better higher.
LOWER_IS_BETTER = frozenset({"false_refusal"})


def paired_bootstrap(candidate: Sequence[float | None], other: Sequence[float | None], *, resamples: int,
                     seed: int, confidence: float = 0.95, higher_is_better: bool = True) -> dict[str, Any]:
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
    return {"n": n, "delta": delta, "low": low, "high": high, "conclusion": conclusion(delta, low, high, n, confidence,
                                                                                 higher_is_better)}


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


def conclusion(delta: float, low: float, high: float, n: int, confidence: float,
               higher_is_better: bool = True) -> str:
    """What the interval of candidate - other says; `higher_is_better` False (a false-refusal
    rate) makes a rise the worse outcome."""
    level = f"{confidence:.0%}"
    rose, fell = ("better", "worse") if higher_is_better else ("worse", "better")
    if low > 0:
        return f"{rose}: the {level} interval [{low:+.3f}, {high:+.3f}] excludes zero (n={n})"
    if high < 0:
        return f"{fell}: the {level} interval [{low:+.3f}, {high:+.3f}] excludes zero (n={n})"
    if low == high == 0:
        return f"identical on all {n} examples"
    return (f"inconclusive: the {level} interval [{low:+.3f}, {high:+.3f}] spans zero, too wide at n={n} "
            f"to support a claim either way")
