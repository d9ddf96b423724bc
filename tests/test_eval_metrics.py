"""Metric definitions against hand-computed cases (SQuAD's own edge cases included), the
paired bootstrap's determinism and coverage, and every gate rule failing when it should."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from evals import metrics as M
from evals.gate import decide
from pipelines.config import GateConfig

IDK = "I don't know based on the provided documents."


# --------------------------------------------------------------------------- SQuAD


@pytest.mark.parametrize("text, normal", [
    ("The  Quick, brown fox!", "quick brown fox"),
    ("an apple a day", "apple day"),
    ("another theatre", "another theatre"),  # articles only as whole words
    ("1,000 (approx.)", "1000 approx"),
    ("  ", ""),
    ("A", ""),
])
def test_normalize_answer_follows_squad(text, normal):
    assert M.normalize_answer(text) == normal


@pytest.mark.parametrize("prediction, answers, em, f1", [
    ("the Normans", ["Normans"], 1, 1.0),
    ("Normans in France", ["the Normans"], 0, 0.5),  # p=1/3, r=1
    ("paris paris", ["Paris"], 0, 2 * 0.5 * 1 / 1.5),  # repeated tokens count once each
    ("1066", ["in 1066", "1066 AD"], 0, 2 / 3),  # max over gold answers
    ("in 1066", ["in 1066", "1066 AD"], 1, 1.0),
    ("", [], 1, 1.0),  # SQuAD 2.0: an unanswerable item is matched by no answer
    ("Rollo", [], 0, 0.0),
    ("", ["Rollo"], 0, 0.0),
    ("", ["the", "."], 1, 1.0),  # gold answers that normalise to nothing: unanswerable
    ("blue whale", ["whale blue"], 0, 1.0),  # F1 is a bag of tokens
    ("completely different", ["Normans"], 0, 0.0),
])
def test_exact_match_and_f1_hand_computed(prediction, answers, em, f1):
    assert M.max_exact(prediction, answers) == em
    assert M.max_f1(prediction, answers) == pytest.approx(f1)


def test_matches_squad_official_on_shared_slice(shared_squad):
    """On the real SQuAD 2.0 slice, a prediction equal to the first gold answer scores 1 and
    the empty prediction scores 1 exactly on the unanswerable questions."""
    qas = [qa for article in shared_squad["data"] for p in article["paragraphs"] for qa in p["qas"]]
    for qa in qas:
        golds = [a["text"] for a in qa["answers"]]
        if qa.get("is_impossible"):
            assert M.max_f1("", golds) == 1.0
        else:
            assert M.max_exact(golds[0], golds) == 1 and M.max_f1("", golds) == 0.0


@pytest.fixture
def shared_squad():
    from conftest import SHARED_DATA

    path = SHARED_DATA / "squad2-dev-slice.json"
    if not path.exists():
        pytest.skip("../shared/data is not beside this checkout")
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- outputs


def out(answer, *cites, **extra):
    return json.dumps({"answer": answer, "citations": list(cites), **extra})


def test_parse_output_json_contract():
    p = M.parse_output(out("Refunds within 30 days [refund-policy].", "refund-policy"), "json", IDK)
    assert p.format_valid and not p.refusal
    assert p.answer == "Refunds within 30 days ."
    assert p.citations == ("refund-policy",)

    fenced = M.parse_output("```json\n" + out("Yes [a].", "a") + "\n```", "json", IDK)
    assert not fenced.format_valid and fenced.answer == "Yes ." and fenced.citations == ("a",)
    assert not M.parse_output(out("Yes", extra=1), "json", IDK).format_valid  # an extra key
    assert not M.parse_output(json.dumps({"answer": "Yes", "citations": "a"}), "json", IDK).format_valid
    prose = M.parse_output("Refunds are possible [refund-policy].", "json", IDK)
    assert not prose.format_valid and prose.citations == ("refund-policy",)
    inline_only = M.parse_output(out("See [b] and [c]."), "json", IDK)
    assert inline_only.citations == ("b", "c")


@pytest.mark.parametrize("text, refusal", [
    (out(IDK), True),
    (out("I do not know."), True),
    ("I don\u2019t know.", True),
    (out("The documents do not contain the price."), True),
    (out("The price is not mentioned in the provided documents."), True),
    (out("Knowing the plan helps: it costs 12 dollars [team-plan].", "team-plan"), False),
    (out(""), False),
    # Characters the refusal pattern's case-insensitive match equates with ASCII letters (the
    # Kelvin sign is a K) still refuse: the cheap pre-check before the pattern must not miss them.
    ("I DON'T \u212aNOW.", True),
    ("I CANNOT ANSWER THAT.", True),
    ("THE CONTEXT DOES NOT SAY.", True),
    ("i don't know based on the provided documents", True),
    ("You can export it from the dashboard.", False),
])
def test_refusal_detection(text, refusal):
    assert M.parse_output(text, "json", IDK).refusal is refusal


def test_text_format_needs_inline_citations_unless_refusing():
    assert M.parse_output("Yes, within 30 days [refund-policy].", "text", IDK).format_valid
    assert not M.parse_output("Yes, within 30 days.", "text", IDK).format_valid
    assert M.parse_output(IDK, "text", IDK).format_valid


DOCS = [{"id": "refund-policy", "text": "Refunds are available within 30 days of purchase."},
        {"id": "team-plan", "text": "The Team plan costs 12 dollars per user per month."}]


@pytest.mark.parametrize("text, valid", [
    (out("Refunds are available within 30 days [refund-policy].", "refund-policy"), 1),
    (out("Refunds are available within 30 days."), 0),  # no citation
    (out("Refunds are available within 30 days [made-up].", "made-up"), 0),  # not a given document
    (out("Refunds are available within 30 days [team-plan].", "team-plan"), 0),  # cites a doc that does not support it
    (out("Refunds within 30 days [refund-policy][team-plan].", "refund-policy", "team-plan"), 1),
    (out(IDK), None),
])
def test_citation_validity(text, valid):
    assert M.citation_valid(M.parse_output(text, "json", IDK), DOCS) == valid


def test_groundedness_is_the_share_of_answer_words_in_the_documents():
    full = M.parse_output(out("Refunds within 30 days of purchase."), "json", IDK)
    half = M.parse_output(out("Refunds within 90 weeks."), "json", IDK)
    assert M.groundedness(full, DOCS) == 1.0
    # content words: refunds, within, 90, weeks ("within" is not a stopword here): 2 of 4 found
    assert M.groundedness(half, DOCS) == pytest.approx(0.5)
    assert M.groundedness(M.parse_output(out(IDK), "json", IDK), DOCS) is None


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_and_drops_missing_pairs():
    rng = np.random.default_rng(0)
    a, b = rng.random(80).tolist(), rng.random(80).tolist()
    first = M.paired_bootstrap(a, b, resamples=500, seed=3)
    assert first == M.paired_bootstrap(a, b, resamples=500, seed=3)
    assert first != M.paired_bootstrap(a, b, resamples=500, seed=4)
    assert first["delta"] == pytest.approx(np.mean(np.array(a) - np.array(b)))
    assert first["low"] < first["delta"] < first["high"]
    with_gaps = M.paired_bootstrap(a + [None, 1.0], b + [0.0, None], resamples=500, seed=3)
    assert with_gaps == first
    assert M.paired_bootstrap([None], [1.0], resamples=500, seed=3)["n"] == 0


def test_bootstrap_interval_covers_a_known_difference():
    """Paired data with a true mean difference of 0.1: the 95% interval should contain it in
    about 95% of repeated experiments (percentile bootstrap at n=100 runs slightly narrow)."""
    rng = np.random.default_rng(12)
    covered, excludes_zero = 0, 0
    trials = 200
    for t in range(trials):
        base = rng.random(100)
        cand = base + 0.1 + rng.normal(0, 0.3, 100)
        result = M.paired_bootstrap(cand.tolist(), base.tolist(), resamples=1000, seed=t)
        covered += result["low"] <= 0.1 <= result["high"]
        excludes_zero += result["low"] > 0
    assert 0.90 <= covered / trials <= 0.99
    assert excludes_zero / trials > 0.9  # the effect is large enough to be seen at n=100


def test_conclusion_says_when_the_interval_is_too_wide():
    wide = M.paired_bootstrap([1, 0, 1, 0], [0, 1, 0, 0], resamples=500, seed=0)
    assert wide["conclusion"].startswith("inconclusive") and "n=4" in wide["conclusion"]
    better = M.paired_bootstrap([1.0] * 30, [0.0] * 30, resamples=500, seed=0)
    assert better["conclusion"].startswith("better")
    same = M.paired_bootstrap([1.0] * 5, [1.0] * 5, resamples=500, seed=0)
    assert same["conclusion"].startswith("identical")


# --------------------------------------------------------------------------- the gate


def cmp(delta, low, high, n=100):
    return {"n": n, "delta": delta, "low": low, "high": high, "conclusion": ""}


def passing_report():
    def suite(primary, comparisons, format_valid=None):
        metrics = {"format_valid": {"mean": format_valid, "n": 100, "low": None, "high": None}} if format_valid else {}
        return {"n": 100, "primary_metric": primary, "contenders": {"candidate": {"metrics": metrics}},
                "comparisons": comparisons}

    validation = suite("f1", {"baseline": {"f1": cmp(0.2, 0.1, 0.3), "f1_has_answer": cmp(0.1, 0.0, 0.2)},
                              "champion": {"f1": cmp(0.01, -0.02, 0.04)}}, format_valid=0.97)
    validation["contenders"]["candidate"]["metrics"]["false_refusal"] = {"mean": 0.08, "n": 60, "low": 0.0, "high": 0.2}
    validation["contenders"]["baseline"] = {"metrics": {"false_refusal": {"mean": 0.06, "n": 60, "low": 0.0, "high": 0.2}}}
    return {
        "contenders": {"candidate": {}, "baseline": {}, "champion": {}},
        "suites": {
            "validation": validation,
            "regression": suite("f1", {"baseline": {"f1": cmp(0.1, 0.0, 0.2)}}),
            "instruction_following": suite("accuracy", {"baseline": {"accuracy": cmp(-0.02, -0.08, 0.04)}}),
            "arithmetic": suite("accuracy", {"baseline": {"accuracy": cmp(0.0, -0.03, 0.03)}}),
            "refusal": suite("f1", {"baseline": {"f1": cmp(0.3, 0.2, 0.4)}}),
        },
    }


def rules(report, **gate):
    verdict = decide(report, GateConfig(**gate), confidence=0.95)
    return verdict, {r["rule"]: r["passed"] for r in verdict["rules"]}


def test_gate_passes_when_every_rule_holds():
    verdict, by_rule = rules(passing_report())
    assert verdict["passed"] and all(by_rule.values())
    assert set(by_rule) == {"beats_baseline", "holds_against_champion", "format_floor", "guard:regression",
                            "guard:instruction_following", "guard:arithmetic", "guard:refusal", "not_over_refusing",
                            "answers_hold"}


@pytest.mark.parametrize("mutate, failing", [
    (lambda r: r["suites"]["validation"]["comparisons"]["baseline"].update(f1=cmp(0.1, -0.01, 0.2)), "beats_baseline"),
    (lambda r: r["suites"]["validation"]["comparisons"]["baseline"].update(f1=cmp(0.1, 0.0, 0.2)), "beats_baseline"),
    (lambda r: r["suites"]["validation"]["comparisons"]["champion"].update(f1=cmp(-0.03, -0.06, 0.0)),
     "holds_against_champion"),
    (lambda r: r["suites"]["arithmetic"]["comparisons"]["baseline"].update(accuracy=cmp(-0.06, -0.1, -0.02)),
     "guard:arithmetic"),
    (lambda r: r["suites"].pop("refusal"), "guard:refusal"),  # a guard that did not run fails
    (lambda r: r["suites"]["validation"]["contenders"]["candidate"]["metrics"]["format_valid"].update(mean=0.85),
     "format_floor"),
    (lambda r: r["suites"]["validation"]["contenders"]["candidate"]["metrics"]["false_refusal"].update(mean=0.12),
     "not_over_refusing"),
    (lambda r: r["suites"]["validation"]["comparisons"]["baseline"].update(f1_has_answer=cmp(-0.06, -0.1, -0.02)),
     "answers_hold"),
])
def test_each_gate_rule_fails_when_it_should(mutate, failing):
    report = copy.deepcopy(passing_report())
    mutate(report)
    verdict, by_rule = rules(report)
    assert not verdict["passed"]
    assert [name for name, ok in by_rule.items() if not ok] == [failing]
    assert failing in verdict["summary"]


def test_no_champion_passes_the_champion_rule_and_says_so():
    report = passing_report()
    del report["contenders"]["champion"]
    verdict, by_rule = rules(report)
    assert by_rule["holds_against_champion"]
    assert "no champion" in next(r for r in verdict["rules"] if r["rule"] == "holds_against_champion")["detail"]


def test_gate_thresholds_come_from_config():
    _, strict = rules(passing_report(), min_improvement=0.15, guard_margin=0.01, format_floor=0.99)
    assert not strict["beats_baseline"] and not strict["guard:instruction_following"] and not strict["format_floor"]
