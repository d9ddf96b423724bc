"""How much of the training set says "I don't know", and keeping it within a bound.

A fine-tune whose RAG examples are mostly refusals learns to refuse everything. Every source
of refusals counts towards the share: kept examples from records whose ideal answer is a
refusal (a refusal rated good, a correction that says "I don't know"; pipelines/answers.py
reads them; routing sends most refusing corrections to the backlog and an IDK example), the
"I don't know" examples made from hallucinations, and the synthetic ones. The share is over
the RAG examples (general instructions are a separate, configured fraction).

Over the bound, the derived refusals give way, synthetic first (they are made up), then
those made from hallucinations (a seeded sample); examples from records are never dropped
here: when they alone exceed the bound, the report says so.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class IdkPlan:
    max_share: float
    answers: int  # kept examples from records that answer
    from_records: int  # kept examples from records whose ideal answer is a refusal
    hallucination: int  # "I don't know" examples from hallucinations kept by dedup
    synthetic_wanted: int  # what curate.idk.synthetic_fraction asks for
    synthetic: int = 0  # synthetic examples to make
    drop_hallucination: set[int] = field(default_factory=set)  # candidate indices not written

    @property
    def allowed(self) -> int:
        """The most refusals the answers leave room for: r / (answers + r) <= max_share."""
        if self.max_share >= 1:
            return self.from_records + self.hallucination + self.synthetic_wanted
        return math.floor(self.max_share * self.answers / (1 - self.max_share) + 1e-9)


def plan_idk(refusal: Sequence[bool], kept: Sequence[bool], from_record: Sequence[bool], synthetic_wanted: int,
             max_share: float, seed: int) -> IdkPlan:
    """Which derived refusals to keep, given each candidate's refusal flag, whether dedup kept
    it and whether it came from a record (sequences of bools or 0/1: lists, arrays)."""
    refusal, kept, from_record = (np.asarray(flags).astype(bool) for flags in (refusal, kept, from_record))
    hallucination = np.flatnonzero(kept & ~from_record).tolist()
    plan = IdkPlan(max_share, answers=int(np.count_nonzero(kept & from_record & ~refusal)),
                   from_records=int(np.count_nonzero(kept & from_record & refusal)),
                   hallucination=len(hallucination), synthetic_wanted=synthetic_wanted)
    room = max(0, plan.allowed - plan.from_records)
    keep_hallucination = min(len(hallucination), room)
    plan.synthetic = min(synthetic_wanted, room - keep_hallucination)
    if keep_hallucination < len(hallucination):
        # A separate generator: the main one's sequence (and so everything else) is unchanged.
        kept_ids = set(random.Random(seed).sample(hallucination, keep_hallucination))
        plan.drop_hallucination = set(hallucination) - kept_ids
    return plan


def bound_idk(candidates: Any, synthetic_wanted: int, cfg: Any) -> IdkPlan:
    """Apply the bound to curate's deduplicated candidates (pipelines/curate.py `Candidates`):
    the dropped ones are no longer kept, and the accounting counts them as derived examples
    dropped ("over_idk_share"). `cfg` is curate's config (idk.max_share, seed)."""
    plan = plan_idk(candidates.refusals, candidates.is_rep, candidates.from_record, synthetic_wanted,
                    cfg.idk.max_share, cfg.seed)
    for i in plan.drop_hallucination:
        candidates.is_rep[i] = False
        candidates.accounting.drop_added("over_idk_share")
    return plan


def share_summary(plan: IdkPlan, by_source: dict[str, int]) -> dict[str, Any]:
    """The manifest's `idk_share`: the share written, by source, and what the bound dropped."""
    refusals = {"from_records": plan.from_records,
                "idk_from_hallucination": by_source.get("idk_from_hallucination", 0),
                "idk_synthetic": by_source.get("idk_synthetic", 0)}
    rag = sum(n for source, n in by_source.items() if source != "general")
    share = sum(refusals.values()) / rag if rag else 0.0
    dropped = {"idk_synthetic": plan.synthetic_wanted - plan.synthetic,
               "idk_from_hallucination": len(plan.drop_hallucination)}
    return {"max_share": plan.max_share, "share": round(share, 4), "rag_examples": rag, "refusals": refusals,
            "dropped": dropped, "over_bound_from_records": plan.from_records > plan.allowed}


def share_lines(s: dict[str, Any]) -> list[str]:
    """report.md's section."""
    r, d = s["refusals"], s["dropped"]
    out = ['## "I don\'t know" share', "",
           f"{s['share']:.1%} of the {s['rag_examples']} RAG examples are refusals (bound: curate.idk.max_share = "
           f"{s['max_share']:.0%}): {r['from_records']} from records (kept or corrected answers that refuse), "
           f"{r['idk_from_hallucination']} made from hallucinations, {r['idk_synthetic']} synthetic.", ""]
    if d["idk_synthetic"] or d["idk_from_hallucination"]:
        out += [f"Dropped to stay within the bound: {d['idk_synthetic']} synthetic examples not made, "
                f"{d['idk_from_hallucination']} made from hallucinations not written.", ""]
    else:
        out += ["Nothing dropped: the share is within the bound.", ""]
    if s["over_bound_from_records"]:
        out += ["**Over the bound from records alone**: the kept and corrected answers themselves refuse this "
                "often; check them (they are never dropped here).", ""]
    return out
