"""eval keeps retrieval and answers apart: validation/regression items carry whether the
logged contexts held the answer, and the report splits every contender's quality by it."""

from __future__ import annotations

import json

import pytest
from conftest import REFUND, TEAM

from evals.context_split import context_split
from evals.suites import split_item
from pipelines.config import load_config


def example(ideal: str, contexts: list[dict]) -> dict:
    return {"id": "ex-1", "kind": "rag", "query": "Refund after 20 days?", "contexts": contexts, "label": "hallucination",
            "ideal_answer": ideal}


def test_split_items_say_whether_the_contexts_held_the_answer():
    config = load_config()
    good = json.dumps({"answer": "Refunds are available within 30 days [refund-policy].", "citations": ["refund-policy"]})
    idk = json.dumps({"answer": config.output.idk_answer, "citations": []})
    assert split_item(example(good, [REFUND, TEAM]), config, "validation")["answer_in_context"] is True
    assert split_item(example(good, [TEAM]), config, "validation")["answer_in_context"] is False  # not retrieved
    assert split_item(example(idk, [TEAM]), config, "validation")["answer_in_context"] is False


def test_answer_quality_split_by_context():
    items = [{"answer_in_context": flag} for flag in (True, True, True, False, False)]
    scores = {
        "candidate": [{"f1": 1.0}, {"f1": 1.0}, {"f1": 0.5}, {"f1": 1.0, "refusal_accuracy": 1.0},
                      {"f1": 1.0, "refusal_accuracy": 1.0}],
        "baseline": [{"f1": 0.0}, {"f1": 1.0}, {"f1": 0.5}, {"f1": 0.0, "refusal_accuracy": 0.0},
                     {"f1": 1.0, "refusal_accuracy": 1.0}],
    }
    split = context_split(items, scores, "f1", resamples=200, seed=1, confidence=0.95)
    inside, outside = split["groups"]["answer in context"], split["groups"]["answer not in context"]
    assert (inside["n"], outside["n"]) == (3, 2)
    assert inside["contenders"]["candidate"]["f1"] == pytest.approx(2.5 / 3)
    assert inside["contenders"]["baseline"]["f1"] == pytest.approx(1.5 / 3)
    assert inside["contenders"]["candidate"]["refusal_accuracy"] is None
    assert outside["contenders"]["baseline"]["refusal_accuracy"] == 0.5
    assert inside["comparisons"]["baseline"]["delta"] == pytest.approx(1 / 3)
    assert outside["comparisons"]["baseline"]["n"] == 2 and outside["comparisons"]["baseline"]["delta"] == 0.5
    # Guard and user suites' items carry no flag: no split.
    assert context_split([{"id": 1}], {"candidate": [{"f1": 1.0}]}, "f1", resamples=200, seed=1, confidence=0.95) is None
