"""Answer quality split by whether the logged contexts contained the answer.

Validation and regression items come from curated log records; each carries
`answer_in_context` (evals/suites.py: the ideal answer is not a refusal and the retrieved
documents support it, by the one support rule of pipelines/answers.py). Splitting every
contender's per-item scores by that flag shows whether a gain came from using good
retrievals better (the "in context" rows) or from refusing bad ones ("not in context").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evals import metrics as M

GROUPS = {True: "answer in context", False: "answer not in context"}


def _means(rows: list[dict[str, Any]], names: list[str]) -> dict[str, float | None]:
    return {name: (float(np.mean(v)) if (v := [r[name] for r in rows if r.get(name) is not None]) else None)
            for name in names}


def context_split(items: list[dict[str, Any]], scores: dict[str, list[dict[str, Any]]], primary: str, *,
                  resamples: int, seed: int, confidence: float) -> dict[str, Any] | None:
    """Per group: n, each contender's mean of every metric, and the candidate's paired delta on
    the primary metric against each other contender. None when the items carry no flag."""
    if not items or any("answer_in_context" not in item for item in items):
        return None
    names = list(dict.fromkeys(k for per_item in scores.values() for s in per_item for k in s))
    out: dict[str, Any] = {}
    for flag, group in GROUPS.items():
        picked = [i for i, item in enumerate(items) if item["answer_in_context"] is flag]
        entry: dict[str, Any] = {"n": len(picked), "contenders": {}, "comparisons": {}}
        for name, per_item in scores.items():
            entry["contenders"][name] = _means([per_item[i] for i in picked], names)
        candidate = [scores["candidate"][i].get(primary) for i in picked]
        for name in scores:
            if name != "candidate":
                entry["comparisons"][name] = M.paired_bootstrap(
                    candidate, [scores[name][i].get(primary) for i in picked], resamples=resamples, seed=seed,
                    confidence=confidence)
        out[group] = entry
    return {"metric": primary, "groups": out}
