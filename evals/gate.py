"""Every rule that decides whether the `champion` alias may move, in two plain tables.

GATE_RULES judge an eval report: each reads numbers the runner already computed (suite means
and paired bootstrap comparisons) and returns its verdicts with those numbers, so the report
shows why a candidate passed or failed without re-deriving anything. `decide` runs them all.

PROMOTION_RULES judge a promotion at the time it happens (the gate's verdict, and whether the
champion the eval measured against is still the champion). `champion_refusals` runs them;
pipelines/registry.py's promote() calls it.

A new rule is one short function and one entry in its table. GATE_VERSION is part of the
eval id: bump it when a gate rule changes, and evals judged the old way are stale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from evals.power import detectable_loss
from pipelines.config import GateConfig

GATE_VERSION = 2

Verdict = dict[str, Any]


@dataclass(frozen=True)
class GateInput:
    """What every gate rule reads: the report's suites and contenders, and the thresholds."""

    suites: dict[str, Any]
    contenders: dict[str, Any]
    gate: GateConfig
    level: str  # the confidence level, as shown ("95%")
    confidence: float = 0.95

    def comparison(self, suite: str, other: str, metric: str) -> dict[str, Any] | None:
        return self.suites.get(suite, {}).get("comparisons", {}).get(other, {}).get(metric)

    def interval(self, cmp: dict[str, Any]) -> str:
        return f"{self.level} CI [{_fmt(cmp['low'])}, {_fmt(cmp['high'])}], n={cmp['n']}"


def _rule(name: str, passed: bool, value: float | None, threshold: str, detail: str) -> Verdict:
    return {"rule": name, "passed": bool(passed), "value": value, "threshold": threshold, "detail": detail}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


# --------------------------------------------------------------------------- gate rules


def beats_baseline(g: GateInput) -> list[Verdict]:
    """Better than the prompt baseline, with the interval's lower bound above the bar."""
    primary, metric, bar = g.gate.primary_suite, g.gate.primary_metric, g.gate.min_improvement
    threshold = f"{g.level} lower bound > {bar}"
    cmp = g.comparison(primary, "baseline", metric)
    if cmp is None or cmp["n"] == 0:
        return [_rule("beats_baseline", False, None, threshold, f"no paired {metric} results on suite {primary!r}")]
    return [_rule("beats_baseline", cmp["low"] > bar, cmp["low"], threshold,
                  f"{primary}/{metric}: candidate - baseline = {_fmt(cmp['delta'])}, {g.interval(cmp)}")]


def holds_against_champion(g: GateInput) -> list[Verdict]:
    """Not worse than the current champion beyond the tolerance."""
    primary, metric, tolerance = g.gate.primary_suite, g.gate.primary_metric, g.gate.champion_tolerance
    threshold = f">= -{tolerance}"
    cmp = g.comparison(primary, "champion", metric)
    if "champion" not in g.contenders:
        return [_rule("holds_against_champion", True, None, threshold, "no champion yet: nothing to hold against")]
    if cmp is None or cmp["n"] == 0:
        return [_rule("holds_against_champion", False, None, threshold,
                      f"no paired {metric} results against the champion on {primary!r}")]
    return [_rule("holds_against_champion", cmp["delta"] >= -tolerance, cmp["delta"], threshold,
                  f"{primary}/{metric}: candidate - champion = {_fmt(cmp['delta'])}, {g.interval(cmp)}")]


def _guarded(g: GateInput, rule: str, suite: str, metric: str, margin: float, against: str) -> Verdict:
    """candidate - baseline on `suite`/`metric` no lower than -margin, with the smallest loss
    this n could detect (so a guard too small to mean much says so)."""
    threshold = f">= -{margin}"
    cmp = g.comparison(suite, "baseline", metric)
    if cmp is None or cmp["n"] == 0:
        return _rule(rule, False, None, threshold, f"no paired {metric} results on {suite!r}")
    mde = detectable_loss(cmp, g.confidence, margin)
    verdict = _rule(rule, cmp["delta"] >= -margin, cmp["delta"], threshold,
                    f"{suite}/{metric}: candidate - {against} = {_fmt(cmp['delta'])}, {g.interval(cmp)}; "
                    f"{mde['statement']}")
    return verdict | {"detectable_loss": mde["loss"], "detectable_method": mde["method"]}


def _guard(g: GateInput, name: str) -> Verdict:
    suite = g.suites.get(name)
    if suite is None:
        return _rule(f"guard:{name}", False, None, f">= -{g.gate.guard_margin}",
                     f"guard suite {name!r} was not evaluated (enable it under eval.suites)")
    return _guarded(g, f"guard:{name}", name, suite["primary_metric"], g.gate.guard_margin, "base model")


def guards_hold(g: GateInput) -> list[Verdict]:
    """No guard suite lost by more than the margin against the base model."""
    return [_guard(g, name) for name in g.gate.guard_suites]


def not_over_refusing(g: GateInput) -> list[Verdict]:
    """Refuses answerable questions no more often than the baseline, plus a margin: a model
    that says "I don't know" to everything scores F1 1 on every unanswerable item and can
    win on F1 alone where those are many."""
    primary, margin = g.gate.primary_suite, g.gate.max_false_refusal_rise
    threshold = f"<= baseline + {margin}"
    contenders = g.suites.get(primary, {}).get("contenders", {})
    cand = (contenders.get("candidate", {}).get("metrics", {}).get("false_refusal") or {}).get("mean")
    base = (contenders.get("baseline", {}).get("metrics", {}).get("false_refusal") or {}).get("mean")
    if cand is None or base is None:
        return [_rule("not_over_refusing", False, None, threshold,
                      f"no answerable items on suite {primary!r} to measure false refusals on")]
    rise = cand - base
    n = contenders["candidate"]["metrics"]["false_refusal"]["n"]
    words = "over-refuses" if rise > margin else "refuses"
    return [_rule("not_over_refusing", rise <= margin, rise, threshold,
                  f"{words}: {cand:.1%} of answerable questions vs {base:.1%} for the baseline "
                  f"({primary}, n={n}; a rise of {rise:+.1%}, at most {margin:.1%} allowed)")]


def answers_hold(g: GateInput) -> list[Verdict]:
    """Answer quality on the answerable items (HasAns F1) no lower than the baseline's beyond
    the guard margin, whatever the overall F1 does."""
    primary = g.gate.primary_suite
    return [_guarded(g, "answers_hold", primary, "f1_has_answer", g.gate.guard_margin, "baseline")]


def format_floor(g: GateInput) -> list[Verdict]:
    """Answers in the pipeline's format."""
    primary, floor = g.gate.primary_suite, g.gate.format_floor
    fmt = g.suites.get(primary, {}).get("contenders", {}).get("candidate", {}).get("metrics", {}).get("format_valid")
    if fmt is None or fmt["mean"] is None:
        return [_rule("format_floor", False, None, f">= {floor}", f"no format results on suite {primary!r}")]
    return [_rule("format_floor", fmt["mean"] >= floor, fmt["mean"], f">= {floor}",
                  f"{primary}: {fmt['mean']:.1%} of the candidate's answers are valid (n={fmt['n']})")]


GATE_RULES: list[Callable[[GateInput], list[Verdict]]] = [
    beats_baseline,
    holds_against_champion,
    guards_hold,
    not_over_refusing,
    answers_hold,
    format_floor,
]


def decide(report: dict[str, Any], gate: GateConfig, *, confidence: float) -> dict[str, Any]:
    """The verdict over `report["suites"]`; every rule listed, pass or fail."""
    g = GateInput(report["suites"], report["contenders"], gate, f"{confidence:.0%}", confidence)
    rules = [verdict for rule in GATE_RULES for verdict in rule(g)]
    failed = [r["rule"] for r in rules if not r["passed"]]
    passed = not failed
    return {"passed": passed, "rules": rules, "failed": failed,
            "summary": "PASS: every rule holds" if passed else f"FAIL: {', '.join(failed)}"}


# --------------------------------------------------------------------------- promotion rules


@dataclass(frozen=True)
class Promotion:
    """A request to move `champion` to `version`."""

    gate: dict[str, Any]  # the report's gate verdict
    champion_source: str  # config.eval.champion
    measured: str | None  # the champion version the eval measured against
    current: str | None  # the champion version now
    version: str  # the version being promoted


def gate_passed(p: Promotion) -> str | None:
    return None if p.gate["passed"] else f"the gate failed: {', '.join(p.gate['failed'])}"


def champion_unchanged(p: Promotion) -> str | None:
    """The eval compared the candidate with the champion of its day; if the registry's
    champion has moved since (and is not this version), that comparison is stale."""
    if p.champion_source != "registry" or p.current in (p.measured, p.version):
        return None
    return (f"the champion moved since this eval measured against it ({p.measured or 'none'} -> "
            f"{p.current}); run `make eval` again")


PROMOTION_RULES: list[Callable[[Promotion], str | None]] = [gate_passed, champion_unchanged]


def champion_refusals(gate: dict, *, champion_source: str, measured: str | None, current: str | None,
                      version: str) -> list[str]:
    """Why `champion` may not move to `version` (empty list: it may).

    gate: the report's gate verdict; champion_source: config.eval.champion ("registry"
    enables the stale-champion rule); measured: the champion version the eval measured
    against; current: the champion version now; version: the version being promoted."""
    promotion = Promotion(gate, champion_source, measured, current, version)
    return [reason for rule in PROMOTION_RULES if (reason := rule(promotion)) is not None]
