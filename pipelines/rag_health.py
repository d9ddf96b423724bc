"""Retrieval health: retrieval measured apart from answers, from every valid log record curate
reads (not only the failures), with counts and confidence intervals.

curate feeds each valid record to `RagHealth.observe` as it routes it; `summary()` gives the
numbers the manifest, report.md, report.html and the decision use. What each rate counts:

| metric             | numerator / denominator                                                        |
| answer_in_context  | answered (not refusing) production answers the retrieved documents support    |
| ideal_in_context   | reviewers' ideal answers the retrieved documents support (an "I don't know"   |
|                    | ideal counts as not in context)                                                |
| retrieval_miss     | records labelled missing/stale/wrong retrieval, or whose ideal answer refuses, |
|                    | cites a document that was not retrieved or is not supported / all records     |
| hit@1, hit@3, hit@5| ideal answers citing ids whose first cited document is in the top k           |
| mrr                | mean reciprocal rank of that document (0 when not retrieved)                  |
| unsupported_answer | answered production answers not supported, or citing a document not retrieved |
| citation_valid     | answered production answers whose citations are valid (eval's citation_valid) |
| correction         | records with a reviewer's ideal answer / all records                          |
| refusal            | production answers that refuse / records with a production answer             |
| failure            | records with a negative rating or a taxonomy label / all records              |

"Supported" is the one support rule of pipelines/answers.py (`AnswerContract.supported`).
Misses are known only where someone gave feedback, so retrieval_miss is a lower bound.
Rates carry Wilson score intervals (scipy.stats.binomtest); MRR and paired version deltas
carry seeded percentile-bootstrap intervals (evals/metrics.py, the eval's bootstrap).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.special import ndtri

from evals.metrics import paired_bootstrap
from pipelines.routing import HALLUCINATION, KNOWLEDGE_LABELS

if TYPE_CHECKING:
    from pipelines.answers import Answer, AnswerContract
    from pipelines.records import LogRecord
    from pipelines.routing import Route

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 29
RATES = ("answer_in_context", "ideal_in_context", "retrieval_miss", "hit@1", "hit@3", "hit@5",
         "unsupported_answer", "citation_valid", "correction", "refusal", "failure")
# Lower is better for these; the others, higher.
LOWER_IS_BETTER = frozenset({"retrieval_miss", "unsupported_answer", "failure"})
# Compared between retriever versions on the queries both versions saw.
PAIRED = ("retrieval_miss", "answer_in_context", "ideal_in_context", "unsupported_answer", "refusal")
GROUNDING_FAILURES = frozenset((*KNOWLEDGE_LABELS, HALLUCINATION))
BUCKETS = 10
MIN_BELOW = 10  # answered records below a threshold before it is recommended
_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})")
NO_DATE = "(no date)"


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """k of n with its Wilson score interval; n = 0 gives no rate.

    scipy's `binomtest(k, n).proportion_ci(method="wilson")` formula (Newcombe 1998, without
    continuity correction), step for step, so the floats are the same; binomtest itself also
    computes a p-value nobody reads, and a report has thousands of intervals (11 rates per
    topic, date and retriever version): it was a quarter of curate's time at 200,000 records."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "low": None, "high": None}
    z = ndtri(0.5 + 0.5 * confidence)
    p = k / n
    denom = 2 * (n + z**2)
    center = (2 * n * p + z**2) / denom
    delta = z / denom * np.sqrt(4 * n * p * (1 - p) + z**2)
    low = 0.0 if k == 0 else center - delta
    high = 1.0 if k == n else center + delta
    return {"k": k, "n": n, "rate": k / n, "low": float(low), "high": float(high)}


def nearest_topic(record: LogRecord, scrub: Any) -> str:
    """The topic field when the logs have one, else the document retrieval ranked first (the
    closest thing the knowledge base has: what is missing is next to it)."""
    if record.topic:
        return scrub(record.topic)
    if record.contexts:
        best = max(record.contexts, key=lambda c: c.score if c.score is not None else float("-inf"))
        return scrub(best.id).split("#")[0]
    return "(nothing retrieved)"


def log_date(timestamp: str | None) -> str:
    """YYYY-MM-DD of an ISO timestamp or of epoch seconds (or milliseconds); else NO_DATE."""
    if not timestamp:
        return NO_DATE
    found = _DATE.match(timestamp.strip())
    if found:
        return found.group(1)
    try:
        seconds = float(timestamp)
    except ValueError:
        return NO_DATE
    if seconds > 1e11:
        seconds /= 1000
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError):
        return NO_DATE


def ranked_ids(record: LogRecord) -> list[str]:
    """Context ids in retrieval order: by score when every context has one, else as logged."""
    contexts = record.contexts
    if contexts and all(c.score is not None for c in contexts):
        contexts = sorted(contexts, key=lambda c: -c.score)  # type: ignore[operator]
    return [c.id for c in contexts]


class Observation:
    """What one record says about retrieval: each rate's outcome (1, 0, or absent where it
    does not apply), the reciprocal rank of the ideal answer's document, the top score, and
    whether the production answer did harm, good or refused."""

    __slots__ = ("outcomes", "reciprocal_rank", "top_score", "answer_class", "pattern")

    def __init__(self, record: LogRecord, route: Route, rules: AnswerContract):
        docs = [c.text for c in record.contexts]
        ids = {c.id for c in record.contexts}
        o: dict[str, int] = {"correction": 0, "failure": int(route.label not in ("none", "positive"))}
        self.reciprocal_rank: float | None = None
        miss = any(label in KNOWLEDGE_LABELS for label in route.labels)
        # Routing read the same texts a moment ago: AnswerContract.parse keeps the last few.
        ideal = rules.parse(record.correction) if record.correction and record.correction.strip() else None
        if ideal is not None and ideal.text.strip():
            o["correction"] = 1
            in_context = not ideal.refusal and rules.supported(ideal, docs)
            o["ideal_in_context"] = int(in_context)
            miss = miss or not in_context or any(c not in ids for c in ideal.citations)
            if ideal.citations and not ideal.refusal:
                self._rank(ideal, ranked_ids(record), o)
        o["retrieval_miss"] = int(miss)
        self.answer_class: str | None = None
        if record.response:
            self._production(rules.parse(record.response), record, docs, ids, rules, o, route.labels)
        self.outcomes = o
        # Records repeat a handful of outcome patterns: groups count patterns, not metrics.
        self.pattern = (*map(o.get, RATES), self.reciprocal_rank)
        scores = [c.score for c in record.contexts if c.score is not None]
        self.top_score = max(scores) if scores else None

    def _rank(self, ideal: Answer, order: list[str], o: dict[str, int]) -> None:
        cited = set(ideal.citations)
        rank = next((i + 1 for i, ident in enumerate(order) if ident in cited), None)
        self.reciprocal_rank = 1.0 / rank if rank else 0.0
        for k in (1, 3, 5):
            o[f"hit@{k}"] = int(rank is not None and rank <= k)

    def _production(self, answer: Answer, record: LogRecord, docs: list[str], ids: set[str],
                    rules: AnswerContract, o: dict[str, int], labels: list[str]) -> None:
        o["refusal"] = int(answer.refusal)
        if answer.refusal:
            self.answer_class = "refused"
            return
        if not answer.text.strip():
            return
        together, each = rules.support_each(answer, docs)
        supported = together is None or together >= rules.min_support
        o["answer_in_context"] = int(supported)
        cites_outside = any(c not in ids for c in answer.citations)
        o["unsupported_answer"] = int(not supported or cites_outside)
        if record.contexts:
            # eval's citation_valid (evals/metrics.py) on the cached vocabularies: at least one
            # citation, all among the retrieved ids, one cited document alone supporting it.
            alone = {c.id: share for c, share in zip(record.contexts, each)}
            o["citation_valid"] = int(bool(answer.citations) and not cites_outside and any(
                alone[c] is None or alone[c] >= rules.min_support for c in answer.citations))
        # Harm an "I don't know" would have avoided: an ungrounded answer, or one a reviewer
        # labelled a hallucination or a knowledge failure. A rude or badly formatted answer
        # with the right content is still worth more than a refusal.
        harmful = o["unsupported_answer"] or any(label in GROUNDING_FAILURES for label in labels)
        self.answer_class = "bad" if harmful else "good"


class Tally:
    """Counts for one group of records: k and n per rate, and the reciprocal ranks."""

    __slots__ = ("patterns",)

    def __init__(self) -> None:
        self.patterns: Counter = Counter()  # Observation.pattern -> records

    def add(self, obs: Observation) -> None:
        self.patterns[obs.pattern] += 1

    def summary(self) -> dict[str, Any]:
        k, n, ranks = Counter(), Counter(), Counter()
        for pattern, records in self.patterns.items():
            for name, value in zip(RATES, pattern):
                if value is not None:
                    n[name] += records
                    k[name] += value * records
            if pattern[-1] is not None:
                ranks[pattern[-1]] += records
        out: dict[str, Any] = {"records": sum(self.patterns.values())}
        out.update({name: wilson(k[name], n[name]) for name in RATES})
        out["mrr"] = mrr(ranks)
        return out


def mrr(ranks: Counter) -> dict[str, Any]:
    """Mean reciprocal rank with a percentile bootstrap interval. Reciprocal ranks take a few
    distinct values, so a resample is a multinomial draw of their counts: the same bootstrap
    as resampling records, in time independent of the number of records."""
    n = sum(ranks.values())
    if n == 0:
        return {"mean": None, "n": 0, "low": None, "high": None}
    values = np.array(list(ranks), dtype=float)
    counts = np.array(list(ranks.values()), dtype=float)
    resampled = np.random.default_rng(SEED).multinomial(n, counts / n, size=RESAMPLES) @ values / n
    alpha = 1.0 - CONFIDENCE
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(counts @ values / n), "n": n, "low": float(low), "high": float(high)}


class RagHealth:
    """Fed one valid record at a time; memory is bounded by the number of topics, dates,
    retriever versions, distinct top scores and (with a retriever field) distinct queries."""

    def __init__(self, rules: AnswerContract, scrub: Any):
        self.rules, self.scrub = rules, scrub
        self.groups: dict[tuple[str, str], Tally] = defaultdict(Tally)
        # (top score, answer class or "none", unsupported, failure) -> records
        self.scores: Counter = Counter()
        self.by_query: dict[bytes, dict[str, Counter]] = {}  # query hash -> version -> k/n per rate
        self.version_dates: dict[str, str] = {}

    def observe(self, record: LogRecord, route: Route) -> None:
        obs = Observation(record, route, self.rules)
        date = log_date(record.timestamp)
        keys = [("all", "all"), ("topic", nearest_topic(record, self.scrub)), ("date", date)]
        if record.retriever is not None:
            version = self.scrub(record.retriever)[:80]
            keys.append(("retriever", version))
            self._remember_pair(record.query, version, obs)
            if date != NO_DATE and date < self.version_dates.get(version, "9999"):
                self.version_dates[version] = date
        for key in keys:
            self.groups[key].add(obs)
        if obs.top_score is not None and record.response:
            o = obs.outcomes
            self.scores[(round(obs.top_score, 4), obs.answer_class or "none", o.get("unsupported_answer", 0),
                         o["failure"])] += 1

    def _remember_pair(self, query: str, version: str, obs: Observation) -> None:
        # Only a hash of the query is kept: raw text never leaves the read pass.
        key = hashlib.blake2b(" ".join(query.lower().split()).encode(), digest_size=12).digest()
        per_version = self.by_query.setdefault(key, {}).setdefault(version, Counter())
        for name in PAIRED:
            if name in obs.outcomes:
                per_version[name + ":k"] += obs.outcomes[name]
                per_version[name + ":n"] += 1

    def state(self) -> tuple[Any, ...]:
        """The counts alone (no rules, no scrubber): what a shard's worker sends back."""
        return dict(self.groups), self.scores, self.by_query, self.version_dates

    def merge(self, state: tuple[Any, ...]) -> None:
        """Add a shard's `state()`. Shards are merged in input order, so every dict and Counter
        keeps first-seen order, which the bootstraps' draws depend on."""
        groups, scores, by_query, version_dates = state
        for key, tally in groups.items():
            self.groups[key].patterns.update(tally.patterns)
        self.scores.update(scores)
        for key, versions in by_query.items():
            mine = self.by_query.setdefault(key, {})
            for version, counts in versions.items():
                mine.setdefault(version, Counter()).update(counts)
        for version, date in version_dates.items():
            if date < self.version_dates.get(version, "9999"):
                self.version_dates[version] = date

    def summary(self) -> dict[str, Any]:
        def dimension(name: str) -> dict[str, Any]:
            return {value: tally.summary() for (dim, value), tally in sorted(self.groups.items()) if dim == name}

        overall = self.groups[("all", "all")].summary() if ("all", "all") in self.groups else Tally().summary()
        retrievers = dimension("retriever")
        return {
            "confidence": CONFIDENCE,
            "intervals": (f"rates: Wilson score ({CONFIDENCE:.0%}, scipy.stats.binomtest); MRR and paired deltas: "
                          f"percentile bootstrap, {RESAMPLES} resamples, seed {SEED}"),
            "overall": overall,
            "by_topic": dimension("topic"),
            "by_date": dimension("date"),
            "by_retriever": retrievers,
            "retriever_comparisons": compare_versions(self.ordered_versions(retrievers), retrievers, self.by_query),
            "threshold": score_threshold(self.scores),
        }

    def entries(self, decision: dict[str, Any], rules: Any) -> dict[str, Any]:
        """The manifest's `retrieval` section and the decision that cites it."""
        summary = self.summary()
        return {"retrieval": summary, "decision": retrieval_decision(decision, summary, rules)}

    def ordered_versions(self, retrievers: dict[str, Any]) -> list[str]:
        """Versions oldest first: by the first date each was seen, then by name."""
        return sorted(retrievers, key=lambda v: (self.version_dates.get(v, "9999"), v))


# --------------------------------------------------------------------------- retriever versions


def newcombe(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """b - a for two independent proportions, with Newcombe's interval from their Wilson
    intervals (method 10)."""
    if not a["n"] or not b["n"]:
        return {"delta": None, "low": None, "high": None}
    delta = b["rate"] - a["rate"]
    low = delta - math.sqrt((b["rate"] - b["low"]) ** 2 + (a["high"] - a["rate"]) ** 2)
    high = delta + math.sqrt((b["high"] - b["rate"]) ** 2 + (a["rate"] - a["low"]) ** 2)
    return {"delta": delta, "low": low, "high": high}


def _paired_values(by_query: dict[bytes, dict[str, Counter]], old: str, new: str, name: str
                   ) -> tuple[list[float], list[float]]:
    before, after = [], []
    for versions in by_query.values():
        a, b = versions.get(old), versions.get(new)
        if a and b and a[name + ":n"] and b[name + ":n"]:
            before.append(a[name + ":k"] / a[name + ":n"])
            after.append(b[name + ":k"] / b[name + ":n"])
    return before, after


def compare_versions(versions: list[str], retrievers: dict[str, Any],
                     by_query: dict[bytes, dict[str, Counter]]) -> list[dict[str, Any]]:
    """Each version against the one before it: paired per-query deltas on the queries both
    saw, and the unpaired difference of rates over all their records."""
    out = []
    for old, new in zip(versions, versions[1:]):
        metrics = {}
        for name in PAIRED:
            before, after = _paired_values(by_query, old, new, name)
            paired = paired_bootstrap(after, before, resamples=RESAMPLES, seed=SEED, confidence=CONFIDENCE)
            unpaired = newcombe(retrievers[old][name], retrievers[new][name])
            metrics[name] = {"paired": paired, "unpaired": unpaired, "better": better_or_worse(name, paired, unpaired)}
        out.append({"from": old, "to": new, "metrics": metrics})
    return out


def better_or_worse(name: str, paired: dict[str, Any], unpaired: dict[str, Any]) -> str:
    """'better', 'worse' ('more'/'fewer' refusals) or 'no clear change' for the newer version, from the paired interval
    when queries repeat, else the unpaired one."""
    cmp = paired if paired["n"] else unpaired
    if cmp.get("low") is None:
        return "no data"
    if cmp["low"] <= 0 <= cmp["high"]:
        return "no clear change"
    rose = cmp["low"] > 0
    if name == "refusal":  # more refusals are right when retrieval finds less: say which, not whether good
        return "more" if rose else "fewer"
    return "worse" if rose == (name in LOWER_IS_BETTER) else "better"


# --------------------------------------------------------------------------- the low-confidence threshold


def score_buckets(scores: Counter) -> list[dict[str, Any]]:
    """Records with a production answer in BUCKETS equal-width bins of the top retrieval
    score: the harmful and the unsupported share of the answered ones, the failure rate and
    the refusals of all, and the share of traffic."""
    if not scores:
        return []
    values = [key[0] for key in scores]
    lo, hi = min(values), max(values)
    width = (hi - lo) / BUCKETS or 1.0
    total = sum(scores.values())
    bins: list[Counter] = [Counter() for _ in range(BUCKETS)]
    for key, n in scores.items():
        score, cls, unsupported, failure = (*key, 0, 0)[:4]  # (score, class) alone counts neither
        b = bins[min(int((score - lo) / width), BUCKETS - 1)]
        b[cls] += n
        b["_unsupported"] += n * unsupported
        b["_failure"] += n * failure
    out = []
    for i, b in enumerate(bins):
        answered = b["good"] + b["bad"]
        records = answered + b["refused"] + b["none"]
        if not records:
            continue
        out.append({"low": lo + i * width, "high": lo + (i + 1) * width, "records": records,
                    "traffic_share": records / total, "harmful": wilson(b["bad"], answered),
                    "unsupported": wilson(b["_unsupported"], answered), "failure": wilson(b["_failure"], records),
                    "refusal": wilson(b["refused"], records)})
    return out


def score_threshold(scores: Counter) -> dict[str, Any]:
    """The top score below which answering did more harm than "I don't know" would have.

    Below a threshold t every answer becomes "I don't know": each harmful answer (unsupported,
    or labelled a hallucination or knowledge failure) is avoided, each good one is lost. t is the cut that avoids
    the most harm net of the good answers lost; it is recommended when harmful answers are a
    majority below it with confidence (the Wilson lower bound of their share above 50%)."""
    result: dict[str, Any] = {"records_with_scores": sum(scores.values()), "buckets": score_buckets(scores),
                              "threshold": None, "recommended": False}
    if not scores:
        result["recommendation"] = "The logs carry no retrieval scores: no threshold can be derived."
        return result
    by_score: dict[float, Counter] = defaultdict(Counter)
    for (score, cls, *_), n in scores.items():
        by_score[score][cls] += n
    best_net, best_t, net, below, best_below = 0, None, 0, Counter(), Counter()
    for score in sorted(by_score):  # cutting at the next score puts this one below
        below.update(by_score[score])
        net += by_score[score]["bad"] - by_score[score]["good"]
        if net > best_net:
            best_net, best_t, best_below = net, score, Counter(below)
    if best_t is None:
        result["recommendation"] = ("At no top-score cut did answering do more harm than \"I don't know\" would "
                                    "have: keep answering at every retrieval score.")
        return result
    above = [s for s in sorted(by_score) if s > best_t]
    threshold = (best_t + above[0]) / 2 if above else best_t + 1e-4
    answered = best_below["good"] + best_below["bad"]
    harmful = wilson(best_below["bad"], answered)
    share = sum(best_below.values()) / result["records_with_scores"]
    recommended = answered >= MIN_BELOW and harmful["low"] > 0.5
    result.update({"threshold": round(threshold, 4), "recommended": recommended, "traffic_below": share,
                   "below": {"answered": answered, "harmful": best_below["bad"], "good": best_below["good"],
                             "refused": best_below["refused"], "harmful_share": harmful},
                   "net_harm_avoided": best_net})
    verb = "Answer" if recommended else "Consider answering"
    strength = ("" if recommended else f" (not yet conclusive: {answered} answered records below it, harmful "
                f"share's lower bound {harmful['low']:.0%}; collect more feedback)")
    result["recommendation"] = (
        f"{verb} \"I don't know\" when the top retrieval score is below {threshold:.3f}: {share:.1%} of traffic is "
        f"below it, where {best_below['bad']} of {answered} answers ({harmful['rate']:.0%}, {CONFIDENCE:.0%} interval "
        f"[{harmful['low']:.0%}, {harmful['high']:.0%}]) were harmful (unsupported, or labelled a hallucination or "
        f"knowledge failure) and {best_below['good']} good answers would be lost{strength}.")
    return result


# --------------------------------------------------------------------------- the decision


def _pct(m: dict[str, Any]) -> str:
    if m.get("rate") is None:
        return "n/a (n=0)"
    return f"{m['rate']:.0%} (95% CI {m['low']:.0%}-{m['high']:.0%}, n={m['n']})"


def retrieval_decision(decision: dict[str, Any], health: dict[str, Any], rules: Any) -> dict[str, Any]:
    """The verdict with the retrieval numbers that drove it. A retrieval miss rate whose
    lower bound is above `decision.max_retrieval_miss` puts retrieval work into the verdict:
    fine-tune becomes hybrid, and prompt-only for lack of trainable examples becomes fix RAG."""
    o = health["overall"]
    miss = o["retrieval_miss"]
    numbers = {"retrieval_miss": miss["rate"], "retrieval_miss_low": miss["low"], "retrieval_miss_high": miss["high"],
               "answer_in_context": o["answer_in_context"]["rate"], "ideal_in_context": o["ideal_in_context"]["rate"],
               "unsupported_answer": o["unsupported_answer"]["rate"], "max_retrieval_miss": rules.max_retrieval_miss}
    out = {**decision, **numbers}
    high_miss = miss["low"] is not None and miss["low"] > rules.max_retrieval_miss
    enough_signal = decision["failures"] >= rules.min_failures
    verdict, why = decision["verdict"], decision["why"]
    if high_miss and verdict == "fine-tune":
        verdict, why = "hybrid", why + (f"; but retrieval misses {_pct(miss)}, above "
                                        f"{rules.max_retrieval_miss:.0%}: fix retrieval alongside the fine-tune")
    elif high_miss and verdict == "prompt-only" and enough_signal:
        verdict, why = "fix RAG", why + (f"; and retrieval misses {_pct(miss)}, above "
                                         f"{rules.max_retrieval_miss:.0%}: work the RAG backlog first")
    why += (f". Retrieval: misses {_pct(miss)}; reviewers' ideal answers in the retrieved documents "
            f"{_pct(o['ideal_in_context'])}; production answers unsupported {_pct(o['unsupported_answer'])}")
    threshold = health["threshold"]
    if threshold.get("threshold") is not None:
        why += f"; low-confidence cut at top score {threshold['threshold']:.3f} ({threshold['traffic_below']:.0%} of traffic)"
    out.update({"verdict": verdict, "why": why, "verdict_before_retrieval": decision["verdict"]})
    return out
