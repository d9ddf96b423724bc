"""The gate: the rules a candidate must pass before the `champion` alias may move to it.

Each rule reads numbers the runner already computed (suite means and paired bootstrap
comparisons) and returns its verdict with those numbers, so the report can show why a
candidate passed or failed without re-deriving anything.
"""

from __future__ import annotations

from typing import Any

from pipelines.config import GateConfig


def _rule(name: str, passed: bool, value: float | None, threshold: str, detail: str) -> dict[str, Any]:
    return {"rule": name, "passed": bool(passed), "value": value, "threshold": threshold, "detail": detail}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def decide(report: dict[str, Any], gate: GateConfig, *, confidence: float) -> dict[str, Any]:
    """The verdict over `report["suites"]`; every rule listed, pass or fail."""
    suites = report["suites"]
    rules: list[dict[str, Any]] = []
    primary, metric = gate.primary_suite, gate.primary_metric
    level = f"{confidence:.0%}"

    # 1. Better than the prompt baseline, with the interval's lower bound above the bar.
    cmp = suites.get(primary, {}).get("comparisons", {}).get("baseline", {}).get(metric)
    if cmp is None or cmp["n"] == 0:
        rules.append(_rule("beats_baseline", False, None, f"{level} lower bound > {gate.min_improvement}",
                           f"no paired {metric} results on suite {primary!r}"))
    else:
        rules.append(_rule(
            "beats_baseline", cmp["low"] > gate.min_improvement, cmp["low"], f"{level} lower bound > {gate.min_improvement}",
            f"{primary}/{metric}: candidate - baseline = {_fmt(cmp['delta'])}, {level} CI [{_fmt(cmp['low'])}, "
            f"{_fmt(cmp['high'])}], n={cmp['n']}"))

    # 2. Not worse than the current champion beyond the tolerance.
    cmp = suites.get(primary, {}).get("comparisons", {}).get("champion", {}).get(metric)
    if "champion" not in report["contenders"]:
        rules.append(_rule("holds_against_champion", True, None, f">= -{gate.champion_tolerance}",
                           "no champion yet: nothing to hold against"))
    elif cmp is None or cmp["n"] == 0:
        rules.append(_rule("holds_against_champion", False, None, f">= -{gate.champion_tolerance}",
                           f"no paired {metric} results against the champion on {primary!r}"))
    else:
        rules.append(_rule(
            "holds_against_champion", cmp["delta"] >= -gate.champion_tolerance, cmp["delta"],
            f">= -{gate.champion_tolerance}",
            f"{primary}/{metric}: candidate - champion = {_fmt(cmp['delta'])}, {level} CI [{_fmt(cmp['low'])}, "
            f"{_fmt(cmp['high'])}], n={cmp['n']}"))

    # 3. No guard suite lost by more than the margin against the base model.
    for name in gate.guard_suites:
        suite = suites.get(name)
        if suite is None:
            rules.append(_rule(f"guard:{name}", False, None, f">= -{gate.guard_margin}",
                               f"guard suite {name!r} was not evaluated (enable it under eval.suites)"))
            continue
        guard_metric = suite["primary_metric"]
        cmp = suite["comparisons"].get("baseline", {}).get(guard_metric)
        if cmp is None or cmp["n"] == 0:
            rules.append(_rule(f"guard:{name}", False, None, f">= -{gate.guard_margin}",
                               f"no paired results on {name!r}"))
            continue
        rules.append(_rule(
            f"guard:{name}", cmp["delta"] >= -gate.guard_margin, cmp["delta"], f">= -{gate.guard_margin}",
            f"{name}/{guard_metric}: candidate - base model = {_fmt(cmp['delta'])}, {level} CI "
            f"[{_fmt(cmp['low'])}, {_fmt(cmp['high'])}], n={cmp['n']}"))

    # 4. Answers in the pipeline's format.
    fmt = suites.get(primary, {}).get("contenders", {}).get("candidate", {}).get("metrics", {}).get("format_valid")
    if fmt is None or fmt["mean"] is None:
        rules.append(_rule("format_floor", False, None, f">= {gate.format_floor}",
                           f"no format results on suite {primary!r}"))
    else:
        rules.append(_rule("format_floor", fmt["mean"] >= gate.format_floor, fmt["mean"], f">= {gate.format_floor}",
                           f"{primary}: {fmt['mean']:.1%} of the candidate's answers are valid (n={fmt['n']})"))

    passed = all(r["passed"] for r in rules)
    failed = [r["rule"] for r in rules if not r["passed"]]
    return {"passed": passed, "rules": rules, "failed": failed,
            "summary": "PASS: every rule holds" if passed else f"FAIL: {', '.join(failed)}"}
