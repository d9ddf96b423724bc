"""The guard suites: deterministic generation matching the shipped files, balance, the
refusal items' answerability, and the scoring functions on hand-written responses."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from evals import guards
from evals.guards import check_instruction, extract_number, numeric_match

SUITES_DIR = Path(guards.__file__).resolve().parent / "suites"
KEYS = {"id", "suite", "kind", "query", "contexts", "answers", "answerable", "check", "label"}


def shipped(suite: str) -> list[dict]:
    text = (SUITES_DIR / f"{suite}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


# --- generation ------------------------------------------------------------------------------


def test_regenerating_reproduces_the_shipped_files_byte_for_byte(tmp_path: Path) -> None:
    paths = guards.write_suites(tmp_path)
    assert sorted(p.name for p in paths) == sorted(f"{s}.jsonl" for s in guards.SUITES)
    for path in paths:
        assert path.read_bytes() == (SUITES_DIR / path.name).read_bytes(), (
            f"{path.name} differs from the shipped file: run `python -m evals.guards` and commit the result"
        )


@pytest.mark.parametrize("suite", guards.SUITES)
def test_generators_are_deterministic_and_seeded(suite: str) -> None:
    generate = guards.GENERATORS[suite]
    assert guards.dumps_suite(generate(30, 5)) == guards.dumps_suite(generate(30, 5))
    assert generate(30, 5) != generate(30, 6)


@pytest.mark.parametrize("suite", guards.SUITES)
def test_shipped_items_have_the_shared_format(suite: str) -> None:
    items = shipped(suite)
    assert len(items) >= 100
    assert [item["id"] for item in items] == [f"{suite}-{i:04d}" for i in range(1, len(items) + 1)]
    for item in items:
        assert set(item) == KEYS
        assert item["suite"] == suite
        assert isinstance(item["query"], str) and item["query"].strip()
        assert isinstance(item["answers"], list) and all(isinstance(a, str) for a in item["answers"])
        if suite == "refusal":
            assert item["kind"] == "rag"
            assert len(item["contexts"]) == 1 and item["contexts"][0]["id"].startswith("fact-")
            assert item["answerable"] == bool(item["answers"])
            assert item["check"] == {}
        else:
            assert item["kind"] == "general" and item["contexts"] == [] and item["answerable"] is True
        if suite == "instruction_following":
            assert item["answers"] == []
            assert 1 <= len(item["check"]["constraints"]) <= 2
            assert item["label"] == "combined" or [c["type"] for c in item["check"]["constraints"]] == [item["label"]]
        if suite == "arithmetic":
            assert item["check"] == {} and len(item["answers"]) == 1 and item["answers"][0].isdigit()


@pytest.mark.parametrize(("suite", "labels"), [
    ("instruction_following", guards.IF_LABELS),
    ("arithmetic", guards.ARITH_LABELS),
    ("refusal", guards.REFUSAL_LABELS),
])
def test_labels_are_balanced(suite: str, labels: tuple[str, ...]) -> None:
    counts = Counter(item["label"] for item in shipped(suite))
    assert set(counts) == set(labels)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_combined_items_have_two_distinct_constraints() -> None:
    for item in shipped("instruction_following"):
        types = [c["type"] for c in item["check"]["constraints"]]
        if item["label"] == "combined":
            assert len(types) == 2 and len(set(types)) == 2


def test_arithmetic_answers_are_right() -> None:
    # Recompute from the query's numbers: no answer may be negative or zero, and each label's
    # operation must give the gold answer.
    for item in shipped("arithmetic"):
        nums = [int(tok) for tok in item["query"].replace(".", " ").replace("?", " ").split() if tok.isdigit()]
        gold = int(item["answers"][0])
        assert gold > 0
        expected = {
            "addition": lambda n: n[0] + n[1],
            "subtraction": lambda n: n[0] - n[1],
            "multiplication": lambda n: n[0] * n[1],
            "division": lambda n: n[0] // n[1],
            "two_step": lambda n: n[0] + n[1] - n[2],
        }[item["label"]](nums)
        assert gold == expected, item


def test_refusal_answers_occur_in_the_context_only_when_answerable() -> None:
    cases = guards.refusal_cases()
    items = shipped("refusal")
    assert len(cases) == len(items)
    for case, item in zip(cases, items):
        assert (case["query"], case["answers"], case["label"]) == (item["query"], item["answers"], item["label"])
        context = item["contexts"][0]["text"]
        assert context == case["context"]
        assert case["entity"].lower() in context.lower() and case["entity"].lower() in item["query"].lower()
        if item["answerable"]:
            assert item["answers"] and all(guards.occurs(a, context) for a in item["answers"])
        else:
            assert item["answers"] == []
            assert case["asked_answers"] and not any(guards.occurs(a, context) for a in case["asked_answers"])
            assert all(sentence not in context for sentence in case["withheld"])


def test_refusal_entities_are_invented() -> None:
    # Each item gets its own paragraph; names come from made-up syllables, never real places.
    texts = [item["contexts"][0]["text"] for item in shipped("refusal")]
    assert len(set(texts)) == len(texts)


# --- check_instruction -----------------------------------------------------------------------


def c(**constraint: object) -> dict:
    return {"constraints": [constraint]}


@pytest.mark.parametrize(("check", "good", "bad"), [
    (c(type="word_limit", max_words=5), "Cats are soft and warm.", "Cats are soft and very warm."),
    (c(type="word_limit", max_words=3), "Don't stop now", "Do not stop now"),
    (c(type="lowercase"), "cats are soft. they purr.", "Cats are soft."),
    (c(type="lowercase"), "i like tea", "123 !!"),
    (c(type="required_word", word="happy"), "Dogs are Happy animals.", "Dogs are unhappy animals."),
    (c(type="required_word", word="happy"), "happy", "happyness is good"),
    (c(type="end_phrase", phrase="That is all."), "Cats sleep a lot. That is all.", "That is all. Cats sleep."),
    (c(type="end_phrase", phrase="Is there anything else I can help with?"),
     'Tea is hot. "is there anything else I can help with?"\n', "Is there anything else I can help with? Bye."),
    (c(type="no_commas"), "Rain falls and the streets shine.", "Rain falls, and the streets shine."),
    (c(type="bullets", count=3), "Notes:\n- one\n- two\n* three\n", "- one\n- two\n"),
    (c(type="bullets", count=2), "  • first\n  + second", "- one\n- two\n- three"),
    (c(type="bullets", count=2), "- a\n- b\n\n---\n", "1. a\n2. b"),
    (c(type="json", keys=["name", "description"]), '{"name": "cat", "description": "soft", "extra": 1}',
     '{"name": "cat"}'),
    (c(type="json", keys=["title", "text"]), '```json\n{"title": "Moon", "text": "bright"}\n```',
     'Here it is: {"title": "Moon", "text": "bright"}'),
    (c(type="json", keys=["title"]), '  ```\n{"title": "x"}\n```  ', '["title"]'),
    (c(type="json", keys=["title"]), '\n{"title": null}\n', '{"title": "x"'),
    ({"constraints": [{"type": "lowercase"}, {"type": "word_limit", "max_words": 4}]},
     "snow is quiet", "Snow is quiet"),
    ({"constraints": [{"type": "no_commas"}, {"type": "required_word", "word": "warm"}]},
     "Summer is warm and bright", "Summer is warm, bright"),
])
def test_check_instruction(check: dict, good: str, bad: str) -> None:
    assert check_instruction(good, check) is True
    assert check_instruction(bad, check) is False


def test_check_instruction_combined_needs_both() -> None:
    check = {"constraints": [{"type": "lowercase"}, {"type": "word_limit", "max_words": 4}]}
    assert not check_instruction("snow is quiet and soft here", check)  # lowercase, too long
    assert not check_instruction("Snow is quiet", check)  # short, not lowercase


def test_check_instruction_blank_and_invalid() -> None:
    for blank in ("", "   \n"):
        assert not check_instruction(blank, c(type="no_commas"))
        assert not check_instruction(blank, c(type="word_limit", max_words=10))
    assert check_instruction("ok", {"type": "no_commas"})  # a bare constraint is accepted too
    with pytest.raises(ValueError):
        check_instruction("ok", c(type="sonnet"))
    with pytest.raises(ValueError):
        check_instruction("ok", {"constraints": []})


def _satisfying(constraints: list[dict]) -> str:
    """A response meeting every constraint of one shipped check, written from the check alone."""
    by_type = {c["type"]: c for c in constraints}
    if "json" in by_type:
        return json.dumps({key: "short" for key in by_type["json"]["keys"]})
    if "bullets" in by_type:
        return "\n".join("- a point" for _ in range(by_type["bullets"]["count"]))
    text = "nice"
    if "required_word" in by_type:
        text += " and " + by_type["required_word"]["word"]
    if "end_phrase" in by_type:
        text += ". " + by_type["end_phrase"]["phrase"]
    return text.lower() if "lowercase" in by_type else text


def _violating(constraint: dict, good: str) -> str:
    """`good` changed so that it breaks this one constraint."""
    kind = constraint["type"]
    if kind == "word_limit":
        return good + " word" * constraint["max_words"]
    if kind == "lowercase":
        return good.capitalize()
    if kind == "required_word":
        return good.replace(constraint["word"], "something")
    if kind == "end_phrase":
        return good + " More words."
    if kind == "no_commas":
        return good + ", and more"
    if kind == "bullets":
        return good + "\n- one more"
    if kind == "json":
        return "Here it is: " + good
    raise AssertionError(kind)


def test_every_shipped_check_is_satisfiable_and_each_constraint_falsifiable() -> None:
    seen = set()
    for item in shipped("instruction_following"):
        constraints = item["check"]["constraints"]
        good = _satisfying(constraints)
        assert check_instruction(good, item["check"]) is True, (item["id"], good)
        assert check_instruction("", item["check"]) is False
        for constraint in constraints:
            bad = _violating(constraint, good)
            assert check_instruction(bad, {"constraints": [constraint]}) is False, (item["id"], bad)
            assert check_instruction(bad, item["check"]) is False, (item["id"], bad)
            seen.add(constraint["type"])
    assert seen == {"word_limit", "lowercase", "required_word", "end_phrase", "no_commas", "bullets", "json"}


# --- extract_number / numeric_match ----------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("The answer is 7", 7.0),
    ("The answer is 7.", 7.0),
    ("12.", 12.0),
    ("It costs $1,234.50 in total.", 1234.5),
    ("1,234", 1234.0),
    ("1,2,3", 3.0),
    ("3 apples plus 4 apples is 7 apples", 7.0),
    ("The temperature is -5 degrees", -5.0),
    ("It fell to \u22123.", -3.0),
    ("He owes -$20", -20.0),
    ("Balance: $-20.25", -20.25),
    ("10-3=7", 7.0),
    ("10 - 3", 3.0),
    ("pages 3-4", 4.0),
    ("- 5 apples", 5.0),
    ("That is 50% of it", 50.0),
    ("0.5", 0.5),
    ("about .75 of it", 0.75),
    ("**Answer: 42**", 42.0),
    ("#### 18", 18.0),
    ("x = 3.14159", 3.14159),
    ("She has seven apples.", 7.0),
    ("Twenty-one cookies", 21.0),
    ("one of them had 5 left", 5.0),
    ("no numbers here", None),
    ("", None),
])
def test_extract_number(text: str, value: float | None) -> None:
    assert extract_number(text) == value


def test_numeric_match() -> None:
    assert numeric_match("So Tom has 7 apples.", ["7"])
    assert numeric_match("$1,234.50", ["1234.5"])
    assert numeric_match("1234.5000001", ["1234.5"])  # within 1e-6 relative
    assert not numeric_match("1234.6", ["1234.5"])
    assert numeric_match("The answer is 7", ["8", "7"])
    assert numeric_match("0", ["0"]) and numeric_match("-0.0", ["0"])
    assert numeric_match("It is 12", [12])
    assert not numeric_match("7 apples, then 3 more", ["7"])  # the last number counts
    assert not numeric_match("I don't know", ["7"])
    assert not numeric_match("7", [])
    assert not numeric_match("", ["0"])


def test_shipped_gold_answers_match_themselves() -> None:
    for item in shipped("arithmetic"):
        assert numeric_match(item["answers"][0], item["answers"])
        assert numeric_match(f"The answer is {item['answers'][0]}.", item["answers"])
