"""How small a regression a guard could see: the minimum detectable effect of a paired
comparison at its n and the report's confidence.

The paired bootstrap (evals/metrics.py) gives a percentile interval of the mean delta; its
width estimates the standard error (SE = width / (2 z), z the normal quantile of the
confidence). A true loss L is detected (the interval excludes zero) with probability
`POWER` when L >= (z + z_power) * SE, the usual two-sided minimum detectable effect.

An interval of width zero (every pair tied) says nothing about the spread a real loss would
have, so the bound is floored by the exact sign test: with every changed item changed the
same way, k items must change before 2 * 0.5**k drops below 1 - confidence, and k changed
items out of n move a mean of scores in [0, 1] by at most k / n.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

POWER = 0.8


def sign_test_items(confidence: float) -> int:
    """The fewest same-direction changes the exact two-sided sign test calls significant."""
    return math.ceil(math.log2(2 / (1 - confidence)))


def detectable_loss(cmp: dict[str, Any], confidence: float, margin: float | None = None) -> dict[str, Any]:
    """The smallest loss the comparison `cmp` ({n, low, high}) could detect, and a sentence
    saying so (and whether it is larger than `margin`)."""
    n = int(cmp["n"])
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    se = (cmp["high"] - cmp["low"]) / (2 * z)
    from_se = (z + NormalDist().inv_cdf(POWER)) * se
    items = sign_test_items(confidence)
    loss = min(1.0, max(from_se, items / n))
    statement = (f"smallest loss detectable at n={n}: {loss:.3f} ({confidence:.0%} confidence, {POWER:.0%} power; "
                 f"paired-bootstrap SE {se:.3f}, and at least {items} of {n} items changed)")
    if margin is not None and loss > margin:
        statement += f"; larger than the margin {margin}: this guard cannot tell such a loss from noise"
    return {"loss": round(loss, 4), "se": round(se, 4), "n": n, "statement": statement,
            "method": f"paired bootstrap SE x (z + z_power), power {POWER:.0%}; floor: exact sign test, {items}/n"}
