"""What curate reports besides the examples: the RAG backlog (knowledge failures grouped by
topic), the decision (prompt-only, fix RAG, fine-tune or hybrid) and report.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.answers import STOPWORDS
from pipelines.answers import words as answer_words
from pipelines.idk_share import share_lines
from pipelines.rag_health import nearest_topic
from pipelines.routing import BEHAVIOUR_LABELS, HALLUCINATION, KNOWLEDGE_LABELS, Route
from pipelines.scrub import without_placeholders

if TYPE_CHECKING:
    from pipelines.records import LogRecord


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
        """File one knowledge failure; `scrubbed` is the entry's sample, already scrubbed."""
        self.apply(backlog_event(record, route, scrub, scrubbed))

    def apply(self, event: tuple[str, str, str, str, list[str], dict[str, Any] | None]) -> None:
        """File one `backlog_event`, in input order (the keyword cap below depends on it). A
        shard's worker leaves out the sample (None) past a group's first SAMPLES in its shard:
        such an event is never among the group's first SAMPLES overall."""
        label, topic, log_id, reason, words, sample = event
        group = self.groups.get((label, topic))
        if group is None:
            group = self.groups[(label, topic)] = BacklogGroup(label, topic)
        group.count += 1
        group.log_ids.append(log_id)
        group.reasons[reason] += 1
        group.keywords.update(words)
        if len(group.keywords) > 500:
            group.keywords = Counter(dict(group.keywords.most_common(200)))
        if len(group.samples) < self.SAMPLES and sample is not None:
            group.samples.append(sample)

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


def backlog_event(record: LogRecord, route: Route, scrub: Any, scrubbed: dict[str, Any]
                  ) -> tuple[str, str, str, str, list[str], dict[str, Any] | None]:
    """What `Backlog.apply` files for one knowledge failure: (label, topic, log id, reason,
    keywords, sample); computed where the record is read, applied in input order."""
    # A placeholder (<IBAN>, <REF>) is not a word the users asked about.
    words = [w for w in answer_words(without_placeholders(scrubbed["query"])) if w not in STOPWORDS and len(w) > 2]
    return (route.label, nearest_topic(record, scrub), scrubbed["log_id"], route.reason or "knowledge_failure",
            words, scrubbed)


# --------------------------------------------------------------------------- decision & report


def decide(label_table: dict[str, Counter], counts: dict[str, Any], rules: Any) -> dict[str, Any]:
    """What the logs support: prompt-only, fix RAG, fine-tune, or hybrid, with the counts."""
    knowledge = sum(sum(label_table[lab].values()) for lab in KNOWLEDGE_LABELS if lab in label_table)
    hallucination_gaps = label_table.get(HALLUCINATION, Counter())["backlog"]
    behaviour = sum(sum(label_table[lab].values()) for lab in BEHAVIOUR_LABELS if lab in label_table)
    behaviour += label_table.get(HALLUCINATION, Counter())["example"] + label_table.get(HALLUCINATION, Counter())["filtered"]
    knowledge += hallucination_gaps
    failures = knowledge + behaviour
    # A hallucination the context cannot answer goes to the backlog AND trains an "I don't know":
    # it is a knowledge gap and a behaviour to teach, so it counts on both sides.
    both_sides = counts.get("added", {}).get("idk_from_hallucination", 0)
    behaviour += both_sides
    trainable = counts["kept"] + both_sides
    numbers = {"failures": failures, "knowledge_failures": knowledge, "behaviour_failures": behaviour,
               "counted_on_both_sides": both_sides, "trainable_examples": trainable}
    if failures < rules.min_failures:
        verdict, why = "prompt-only", (f"only {failures} failures (< {rules.min_failures}): too little signal "
                                       "to train on; improve the prompt and keep collecting feedback")
    else:
        k_share, b_share = knowledge / (knowledge + behaviour), behaviour / (knowledge + behaviour)
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
    out += share_lines(m["idk_share"]) if "idk_share" in m else []
    if c["added_dropped"]:
        out += ["Derived examples dropped: " + ", ".join(f"{k} {v}" for k, v in c["added_dropped"].items()), ""]
    out += ["## Scrubbed PII and secrets", "", "Counts of replacements by type; values are never recorded.", "",
            _table(["type", "replaced"], [[k, v] for k, v in m["scrubbed"].items()]) if m["scrubbed"] else "Nothing found.", ""]
    out += ["## Quarantine", "", _table(["reason", "lines"], [[k, v] for k, v in m["quarantine_reasons"].items()])
            if m["quarantine_reasons"] else "No bad lines.", ""]
    if m.get("input_notes"):
        out += ["### Input files", "", *(f"- {note}" for note in m["input_notes"]), ""]
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
