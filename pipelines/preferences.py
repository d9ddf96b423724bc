"""Preference pairs from the logs: what production said (rejected) against what it should
have said (chosen), for the same question and documents.

curate derives one pair from each training candidate that has both sides:

- a behaviour failure (or a grounded hallucination) with a reviewer's correction: chosen is
  the correction in the output format, rejected is the response as logged;
- a hallucination whose answer is not in the documents: chosen is the "I don't know"
  sentence, rejected is the hallucinated response.

The rejected side is scrubbed like every other text. A pair whose two sides are the same
answer after normalisation teaches nothing and is dropped and counted (`equal_sides`). Pairs
ride on their candidate through deduplication (`PAIR_KEY` in the candidate's spooled record),
so a pair whose example is dropped as a duplicate or as too long goes with it. split keeps
each pair in its example's set.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import IO, Any

import orjson

PAIR_KEY = "_rejected"  # the rejected side, carried by a candidate until it is written
SOURCES = ("correction", "idk_from_hallucination")  # the candidates that have a production response


def normalised(text: str) -> str:
    """The text a comparison sees: a JSON object with its keys sorted and compact, anything
    else with whitespace collapsed; case folded either way. Format is kept, so a prose
    answer and the same words in JSON stay different (that difference is the lesson)."""
    stripped = text.strip()
    try:
        value = orjson.loads(stripped)
    except orjson.JSONDecodeError:
        return " ".join(stripped.split()).casefold()
    if isinstance(value, dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode().casefold()
    return " ".join(stripped.split()).casefold()


def rejected_side(source: str, response: str | None, scrub: Any) -> str | None:
    """The rejected answer a candidate carries: the logged response, scrubbed; None when the
    candidate has none (a positive example, or no response logged)."""
    if source not in SOURCES or not response or not response.strip():
        return None
    return scrub(response.strip())


def make_pair(example: dict[str, Any], rejected: str) -> dict[str, Any]:
    """The pair record: the example's prompt fields and id, label and cluster, both sides."""
    return {
        "id": "pr-" + example["id"].removeprefix("ex-"),
        "example_id": example["id"],
        "kind": example.get("kind", "rag"),
        "source": example["source"],
        "label": example["label"],
        "cluster_id": example.get("cluster_id"),
        "session_id": example.get("session_id"),
        "query": example["query"],
        "contexts": example.get("contexts") or [],
        "chosen": example["ideal_answer"],
        "rejected": rejected,
    }


class PreferenceFile:
    """preferences.jsonl beside examples.jsonl, with the counts the manifest reports."""

    def __init__(self, path: Path):
        self.path = path
        self.fh: IO[bytes] = open(path, "wb")
        self.by_label: Counter = Counter()
        self.dropped: Counter = Counter()  # reason -> pairs not written
        self.carried = 0  # candidates that carry a pair; those not offered were dropped with it
        self.offered = 0

    def carry(self, rejected: str | None) -> str | None:
        """Count a candidate's pair as it is made; returns it for the candidate to carry."""
        self.carried += rejected is not None
        return rejected

    def offer(self, example: dict[str, Any], rejected: str | None) -> None:
        """The kept example's pair, unless its sides are equal after normalisation."""
        if rejected is None:
            return
        self.offered += 1
        if normalised(rejected) == normalised(example["ideal_answer"]):
            self.dropped["equal_sides"] += 1
            return
        self.fh.write(orjson.dumps(make_pair(example, rejected)) + b"\n")
        self.by_label[example["label"]] += 1

    def close(self) -> None:
        self.fh.close()

    def manifest(self) -> dict[str, Any]:
        """Pairs per label, and pairs not written by reason: equal sides, or their candidate
        was dropped (a duplicate, too long) and the pair went with it."""
        dropped = self.dropped + Counter({"with_their_example": self.carried - self.offered})
        return {"pairs": sum(self.by_label.values()), "by_label": dict(sorted(self.by_label.items())),
                "dropped": dict(sorted(dropped.items()))}


def render_lines(manifest: dict[str, Any]) -> list[str]:
    """report.md's section on the pairs."""
    pairs = manifest.get("preferences")
    if not pairs:
        return []
    lines = ["## Preference pairs", "",
             f"{pairs['pairs']} pair(s) in `preferences.jsonl` (chosen: the reviewer's answer or \"I don't know\"; "
             "rejected: production's response as logged, scrubbed).", "", "| label | pairs |", "| --- | --- |"]
    lines += [f"| {label} | {n} |" for label, n in pairs["by_label"].items()]
    if pairs["dropped"]:
        lines += ["", "Not written: " + ", ".join(f"{reason} {n}" for reason, n in pairs["dropped"].items())
                  + " (equal_sides: the two answers are the same after normalisation; with_their_example: "
                  "the example was dropped as a duplicate or too long, and its pair with it)."]
    return lines + [""]
