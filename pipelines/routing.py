"""The failure taxonomy (README, "The log format") and the rules that route each log record by it.

| label                                                 | fix                | becomes                          |
| missing_knowledge, stale_knowledge, wrong_retrieval    | retrieval / KB     | a RAG backlog entry, never data  |
| bad_format, wrong_tone, policy_violation,              | behaviour          | a training example (needs an     |
| missing_citation                                      |                    | ideal answer)                    |
| hallucination, answer in the context                  | grounding          | a training example               |
| hallucination, answer not in the context              | both               | "I don't know" example + backlog |
| weak_reasoning                                        | stronger model     | reported, not trained on         |

A failure without a taxonomy label (a thumbs-down only) is labelled by rules first
(`rule_labels`), from the answer contract of pipelines/answers.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.answers import Answer, AnswerContract

if TYPE_CHECKING:
    from pipelines.records import LogRecord

KNOWLEDGE_LABELS = ("missing_knowledge", "stale_knowledge", "wrong_retrieval")
BEHAVIOUR_LABELS = ("bad_format", "wrong_tone", "policy_violation", "missing_citation")
HALLUCINATION = "hallucination"
WEAK_REASONING = "weak_reasoning"
TAXONOMY_LABELS = frozenset(KNOWLEDGE_LABELS + BEHAVIOUR_LABELS + (HALLUCINATION, WEAK_REASONING))

# Which copy of a near-duplicate cluster survives: a reviewer's correction on a
# human-labelled failure beats one on a rule-labelled failure, which beats a positively
# rated answer, which beats an "I don't know" derived from a hallucination.
SOURCE_RANK = {("correction", "human"): 4, ("correction", "rule"): 3, ("keep", "human"): 2,
               ("idk_from_hallucination", "human"): 1, ("idk_from_hallucination", "rule"): 1}


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


def _documents(record: LogRecord) -> list[str]:
    return [c.text for c in record.contexts]


def _cites_only_given(answer: Answer, record: LogRecord) -> bool:
    ids = {c.id for c in record.contexts}
    return all(c in ids for c in answer.citations)


def rule_labels(record: LogRecord, rules: AnswerContract) -> tuple[list[str], str | None]:
    """Label an unlabelled failure (rating < 0, no taxonomy label) from the record itself."""
    response = rules.parse(record.response) if record.response else None
    if record.correction:
        ideal = rules.parse(record.correction)
        if ideal.refusal or not rules.supported(ideal, _documents(record)):
            if response is not None and response.refusal:
                return ["missing_knowledge"], "refused_and_answer_not_in_context"
            return [HALLUCINATION], "ideal_answer_not_in_context"
    if response is None or not response.text:
        return [], None
    if not response.format_valid:
        return ["bad_format"], "format_invalid"
    if response.refusal:
        return [], None  # refused although the answer may be there: no rule says why
    if not response.citations:
        return ["missing_citation"], "citations_missing"
    if not _cites_only_given(response, record):
        return [HALLUCINATION], "citations_not_in_context"
    if not rules.supported(response, _documents(record)):
        return [HALLUCINATION], "answer_not_in_context"
    return [], None


def _route_unlabelled(record: LogRecord, rules: AnswerContract, keep_positive: bool) -> Route:
    """A record that is not a failure: no feedback, or a positive rating."""
    if record.rating is None or record.rating == 0:
        return Route("filtered", "none", [], "human", reason="no_feedback")
    if not keep_positive:
        return Route("filtered", "positive", [], "human", reason="positive_feedback")
    response = rules.parse(record.response or "")
    exemplary = response.text and response.format_valid and (
        response.refusal
        or (response.citations and _cites_only_given(response, record)
            and rules.supported(response, _documents(record)))
    )
    if exemplary:
        return Route("example", "positive", [], "human", ideal=response)
    return Route("filtered", "positive", [], "human", reason="positive_not_exemplary")


def _route_behaviour(record: LogRecord, label: str, labels: list[str], source: str, rule: str | None,
                     rules: AnswerContract) -> Route:
    """A behaviour failure or a hallucination: trainable when the reviewer's ideal answer is
    supported by the documents."""
    if not (record.correction and record.correction.strip()) or not rules.parse(record.correction).text.strip():
        if label == HALLUCINATION:
            # We cannot tell whether the context held the answer: a reviewer must look.
            return Route("backlog", label, labels, source, rule, reason="hallucination_needs_review")
        return Route("filtered", label, labels, source, rule, reason="no_ideal_answer")
    ideal = rules.parse(record.correction)
    if ideal.refusal or (label == HALLUCINATION and not rules.supported(ideal, _documents(record))):
        # The context lacks the answer: fix retrieval, and teach the model to say so.
        return Route("backlog", label, labels, source, rule, reason="answer_not_in_context", ideal=ideal, add_idk=True)
    if not _cites_only_given(ideal, record):
        return Route("filtered", label, labels, source, rule, reason="correction_cites_unknown_context")
    if not rules.supported(ideal, _documents(record)):
        # Training on an answer the documents do not hold teaches hallucination.
        return Route("backlog", label, labels, source, rule, reason="ideal_answer_not_in_context", ideal=ideal)
    return Route("example", label, labels, source, rule, ideal=ideal)


def route(record: LogRecord, labels: list[str], rules: AnswerContract, keep_positive: bool) -> Route:
    """The taxonomy table above, applied to one record with normalised labels."""
    failure = bool(labels) or (record.rating is not None and record.rating < 0)
    if not failure:
        return _route_unlabelled(record, rules, keep_positive)
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
        return _route_behaviour(record, label, labels, source, rule, rules)
    return Route("filtered", WEAK_REASONING, labels, source, rule, reason="weak_reasoning")


def normalise_labels(raw: list[str], aliases: dict[str, str], unknown: Counter, scrub: Any = None) -> list[str]:
    """Taxonomy labels from a record's free-text labels (aliases applied, each once); the
    others are counted in `unknown`, scrubbed and capped (they reach the report)."""
    out = []
    for label in raw:
        key = label.strip().lower().replace(" ", "_").replace("-", "_")
        key = aliases.get(label, aliases.get(key, key))
        if key in TAXONOMY_LABELS:
            if key not in out:
                out.append(key)
        else:
            unknown[(scrub(key) if scrub else key)[:60]] += 1
    return out
