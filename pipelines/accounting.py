"""Where every input line went: the rule that each line lands in exactly one bucket.

    read == kept + quarantined + backlog + sum(filtered)

A line is counted once, when its fate is final: quarantined as it is read, backlog or
filtered as it is routed, and a training candidate only later, when it is kept or dropped
(too long, a duplicate), so nothing is ever counted and then taken back (the datatrove
way: a filter says why it drops, and the pipeline counts drops by reason). Examples derived
from records (synthetic "I don't know", general instructions) are no input lines: they are
counted apart, as `added`, and so are the derived ones dropped.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any


class Accounting:
    def __init__(self) -> None:
        self.lines = Counter()  # read, kept, quarantined, backlog
        self.filtered: Counter = Counter()  # reason -> lines
        self.quarantine_reasons: Counter = Counter()  # the reason's kind ("invalid JSON") -> lines
        self.added: Counter = Counter()  # source -> derived examples written
        self.added_dropped: Counter = Counter()  # reason -> derived examples not written
        self.labels: dict[str, Counter] = defaultdict(Counter)  # label -> where its records went
        self.candidates = 0  # lines that became training candidates
        self.decided = 0  # candidates kept or dropped since

    def read(self) -> int:
        self.lines["read"] += 1
        return self.lines["read"]

    def quarantine(self, reason: str) -> None:
        self.lines["quarantined"] += 1
        self.quarantine_reasons[reason.split(":")[0]] += 1

    def backlog(self, label: str) -> None:
        self.lines["backlog"] += 1
        self.labels[label]["backlog"] += 1

    def filter(self, reason: str, label: str) -> None:
        """A line routed out (no feedback, weak reasoning, ...)."""
        self.filtered[reason] += 1
        self.labels[label]["filtered"] += 1

    def candidate(self, label: str) -> None:
        """A line that became a training candidate; it is counted when `keep` or
        `filter_candidate` decides its fate. Its label's example column exists from here
        on, so a label whose every candidate was dropped reads "example: 0"."""
        self.candidates += 1
        self.labels[label]["example"] += 0

    def keep(self, label: str) -> None:
        self.decided += 1
        self.lines["kept"] += 1
        self.labels[label]["example"] += 1

    def filter_candidate(self, reason: str, label: str) -> None:
        """A candidate dropped (too long, a duplicate)."""
        self.decided += 1
        self.filter(reason, label)

    def add(self, source: str) -> None:
        self.added[source] += 1

    def drop_added(self, reason: str) -> None:
        self.added_dropped[reason] += 1

    def merge(self, other: Accounting) -> None:
        """Add another part of the same run's accounting (a shard read elsewhere)."""
        self.lines.update(other.lines)
        self.filtered.update(other.filtered)
        self.quarantine_reasons.update(other.quarantine_reasons)
        self.added.update(other.added)
        self.added_dropped.update(other.added_dropped)
        for label, where in other.labels.items():
            self.labels[label].update(where)
        self.candidates += other.candidates
        self.decided += other.decided

    @property
    def kept(self) -> int:
        return self.lines["kept"]

    def check(self) -> None:
        """Raise when a line is in no bucket or in two (a bug, never bad input)."""
        if self.decided != self.candidates:
            raise AssertionError(f"accounting broken: {self.candidates} candidates, {self.decided} kept or dropped")
        accounted = (self.lines["kept"] + self.lines["quarantined"] + self.lines["backlog"]
                     + sum(self.filtered.values()))
        if accounted != self.lines["read"]:
            raise AssertionError(f"accounting broken: read {self.lines['read']} != accounted {accounted}")

    def counts(self) -> dict[str, Any]:
        """The manifest's `counts`."""
        return {
            "read": self.lines["read"],
            "kept": self.lines["kept"],
            "quarantined": self.lines["quarantined"],
            "backlog": self.lines["backlog"],
            "filtered": dict(sorted(self.filtered.items())),
            "added": dict(sorted(self.added.items())),
            "added_dropped": dict(sorted(self.added_dropped.items())),
            "examples": self.lines["kept"] + sum(self.added.values()),
        }

    def label_table(self) -> dict[str, dict[str, int]]:
        return {label: dict(sorted(where.items())) for label, where in sorted(self.labels.items())}
