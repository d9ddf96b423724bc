"""The plan of the log records: how many of each case, which labels, corrections, comments and
planted PII each one gets, how records group into multi-turn sessions, and when each is logged."""

from __future__ import annotations

from datetime import datetime, timezone

from .text import quota

MODEL = "tasklane-assistant-v3"
N_RECORDS = 900
LOG_START = datetime(2026, 10, 1, tzinfo=timezone.utc)
WEEK = 7 * 86400
LOG_FILES = ["2026-10-01.jsonl", "2026-10-08.jsonl", "2026-10-15.jsonl.gz"]

# Number of well-formed log records per case (sums to N_RECORDS).
CASE_COUNTS = {
    "positive": 216,                  # 24%
    "no_feedback": 126,               # 14%
    "bad_format": 66,                 # behaviour failures: 33% in total
    "wrong_tone": 54,
    "policy_violation": 48,
    "missing_citation": 63,
    "hallucination": 66,              # wrong fact although the answer is in context
    "hallucination_no_context": 54,   # 6%
    "missing_knowledge": 48,          # knowledge failures: 14% in total
    "stale_knowledge": 36,
    "wrong_retrieval": 42,
    "weak_reasoning": 27,             # 3%
    "multi_label": 54,                # 6%
}

# Label combinations used by the "multi_label" case, with their counts.
MULTI_COMBOS = [
    (("bad_format", "missing_citation"), 16),
    (("wrong_tone", "missing_citation"), 10),
    (("hallucination", "missing_citation"), 8),
    (("policy_violation", "wrong_tone"), 8),
    (("missing_knowledge", "bad_format"), 8),
    (("bad_format", "hallucination"), 4),
]

BEHAVIOUR_CASES = ["bad_format", "wrong_tone", "policy_violation", "missing_citation", "hallucination"]
UNLABELLED_SHARE = 0.25
CORRECTION_SHARE = {
    "bad_format": 0.85, "wrong_tone": 0.85, "policy_violation": 0.85,
    "missing_citation": 0.85, "hallucination": 0.85,
    "hallucination_no_context": 0.5, "missing_knowledge": 0.3,
    "stale_knowledge": 0.4, "wrong_retrieval": 0.35, "weak_reasoning": 0.8,
    "multi_label": 0.85,
}
SESSION_SHARE = 0.35        # share of records that belong to multi-turn sessions
NEAR_DUP_SHARE = 0.12       # share of records whose query re-asks an earlier one
PII_QUERY_SHARE = 0.065     # share of records with PII / a secret in the query
PII_COMMENTS = 10           # failure records whose reviewer comment holds PII
PII_CORRECTIONS = 8         # corrections that deliberately mention the user's email

# What each case looks like, for the README's case table.
CASE_NOTES = {
    "positive": "rating 1, ideal JSON answer",
    "no_feedback": "ideal JSON answer, feedback absent or null",
    "bad_format": "correct answer as plain text / markdown",
    "wrong_tone": "JSON, correct but rude or sarcastic",
    "policy_violation": "JSON plus a refund exception, discount, legal advice, another customer's data...",
    "missing_citation": "JSON with the right answer, no [doc-id], citations []",
    "hallucination": "JSON stating a wrong number although the context has the right one",
    "hallucination_no_context": "unanswerable question, invented answer citing an unrelated context",
    "missing_knowledge": "unanswerable question, \"I don't know\" JSON, rating -1",
    "stale_knowledge": "stale doc retrieved, old fact cited",
    "wrong_retrieval": "answerable question, unrelated contexts retrieved",
    "weak_reasoning": "multi-step arithmetic question, wrong arithmetic",
    "multi_label": "two labels at once (see below)",
}

SESSIONABLE = set(BEHAVIOUR_CASES) | {"positive", "no_feedback", "multi_label"}
UNANSWERABLE_CASES = {"hallucination_no_context", "missing_knowledge"}
FAILURE_CASES = set(CASE_COUNTS) - {"positive", "no_feedback"}


def is_unanswerable(entry):
    return entry["case"] in UNANSWERABLE_CASES or "missing_knowledge" in entry["labels"]


def plan_entries(rng):
    """One dict per well-formed record: its case, intended labels and flags."""
    entries = []
    for case, count in CASE_COUNTS.items():
        if case == "multi_label":
            group = [list(labels) for labels, n in MULTI_COMBOS for _ in range(n)]
        else:
            label = {"positive": [], "no_feedback": [],
                     "hallucination_no_context": ["hallucination"]}.get(case, [case])
            group = [list(label) for _ in range(count)]
        assert len(group) == count, case
        unl = quota(rng, count, round(count * UNLABELLED_SHARE) if case in BEHAVIOUR_CASES else 0)
        share = CORRECTION_SHARE.get(case, 0)
        corr = quota(rng, count, round(count * share))
        com = quota(rng, count, round(count * (0.15 if case == "positive" else 0.5 if case in FAILURE_CASES else 0)))
        no_rating = quota(rng, count, round(count * 0.04) if case in FAILURE_CASES else 0)
        for i, labels in enumerate(group):
            entries.append({"case": case, "labels": labels, "unlabelled": unl[i], "correction": corr[i],
                            "comment": com[i], "no_rating": no_rating[i] and not unl[i],
                            "pii_query": False, "pii_comment": False, "pii_correction": False})
    for e in entries:  # knowledge-failure combos keep few corrections
        if e["case"] == "multi_label" and "missing_knowledge" in e["labels"]:
            e["correction"] = e["correction"] and rng.random() < 0.3
    for e, flag in zip(entries, quota(rng, len(entries), round(len(entries) * PII_QUERY_SHARE))):
        e["pii_query"] = flag
    commented = [e for e in entries if e["comment"] and e["case"] in FAILURE_CASES]
    for e in rng.sample(commented, PII_COMMENTS):
        e["pii_comment"] = True
    fixable = [e for e in entries if e["pii_query"] and e["correction"] and e["case"] in BEHAVIOUR_CASES]
    for e in rng.sample(fixable, min(PII_CORRECTIONS, len(fixable))):
        e["pii_correction"] = True
    rng.shuffle(entries)
    return entries


def group_sessions(rng, entries):
    """Group sessionable entries into multi-turn units until SESSION_SHARE is reached."""
    target = round(len(entries) * SESSION_SHARE)
    pool = [e for e in entries if e["case"] in SESSIONABLE and not is_unanswerable(e)]
    rest = [e for e in entries if not (e["case"] in SESSIONABLE and not is_unanswerable(e))]
    units, in_sessions = [], 0
    while in_sessions < target:
        k = min(rng.choice([2, 2, 2, 3, 3, 4]), target - in_sessions)
        if k < 2:
            break
        units.append(pool[:k])
        pool = pool[k:]
        in_sessions += k
    units += [[e] for e in pool + rest]
    rng.shuffle(units)
    return units


def schedule(rng, units):
    """Give every record a time (seconds since LOG_START); sessions stay inside one weekly file."""
    items = []
    for u, unit in enumerate(units):
        gaps = [rng.randint(25, 300) for _ in unit[1:]]
        start = rng.randint(0, 3 * WEEK - 1)
        week_end = (start // WEEK + 1) * WEEK
        if start + sum(gaps) >= week_end:
            start = week_end - sum(gaps) - 1
        t = start
        for turn, entry in enumerate(unit):
            items.append((t, u, turn, entry))
            if turn < len(gaps):
                t += gaps[turn]
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    return items
