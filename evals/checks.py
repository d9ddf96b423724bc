"""The guard suites' scoring, as pure functions: IFEval-style instruction checks (one
function per constraint type, in one table) and the final numeric answer of a response.

`evals.scorers` calls them per item; `evals.guards` re-exports them for its older callers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_BULLET = re.compile(r"^[ \t]*[-*+\u2022][ \t]+\S", re.MULTILINE)
_FENCE = re.compile(r"^```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)\n?```$", re.DOTALL)
_TRAILING = " \t\r\n\"'`*_.!?"


def count_words(text: str) -> int:
    """Words are runs of letters/digits, an apostrophe inside one ("don't") kept as one word."""
    return len(_WORD.findall(text))


def parse_json_object(text: str) -> dict[str, Any] | None:
    """The response as a JSON object, after stripping whitespace and an optional ```json
    fence; None when the whole of it is not one JSON object."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _word_limit(response: str, constraint: Mapping[str, Any]) -> bool:
    return count_words(response) <= int(constraint["max_words"])


def _lowercase(response: str, constraint: Mapping[str, Any]) -> bool:
    return response == response.lower() and any(ch.isalpha() for ch in response)


def _required_word(response: str, constraint: Mapping[str, Any]) -> bool:
    word = re.escape(str(constraint["word"]))
    return re.search(rf"(?<![^\W_]){word}(?![^\W_])", response, re.IGNORECASE) is not None


def _end_phrase(response: str, constraint: Mapping[str, Any]) -> bool:
    phrase = str(constraint["phrase"]).strip().rstrip(_TRAILING).lower()
    return bool(phrase) and response.strip().rstrip(_TRAILING).lower().endswith(phrase)


def _no_commas(response: str, constraint: Mapping[str, Any]) -> bool:
    return "," not in response and "\uff0c" not in response


def _bullets(response: str, constraint: Mapping[str, Any]) -> bool:
    return len(_BULLET.findall(response)) == int(constraint["count"])


def _json_keys(response: str, constraint: Mapping[str, Any]) -> bool:
    value = parse_json_object(response)
    return value is not None and all(key in value for key in constraint.get("keys", []))


# Constraint type -> its check. A new constraint type is one function and one entry here.
INSTRUCTION_CHECKS: dict[str, Callable[[str, Mapping[str, Any]], bool]] = {
    "word_limit": _word_limit,
    "lowercase": _lowercase,
    "required_word": _required_word,
    "end_phrase": _end_phrase,
    "no_commas": _no_commas,
    "bullets": _bullets,
    "json": _json_keys,
}


def _check_one(response: str, constraint: Mapping[str, Any]) -> bool:
    kind = constraint.get("type")
    check = INSTRUCTION_CHECKS.get(kind)  # type: ignore[arg-type]
    if check is None:
        raise ValueError(f"unknown instruction constraint type {kind!r}")
    return check(response, constraint)


def check_instruction(response: str, check: Mapping[str, Any]) -> bool:
    """True when the response satisfies every constraint in `check`.

    `check` is an item's "check": {"constraints": [{"type": ..., ...}, ...]} (a single
    constraint dict with a "type" is accepted too). Types: word_limit (max_words),
    lowercase, required_word (word; whole word, any case), end_phrase (phrase; case and
    trailing punctuation/quotes ignored), no_commas, bullets (count; lines starting with -, *,
    + or a bullet sign), json (keys; the whole response, optionally in a ```json fence, is one
    object holding them). A blank response never passes. An unknown type raises ValueError.
    """
    constraints = check.get("constraints") if "constraints" in check else [check]
    if not constraints:
        raise ValueError("check has no constraints")
    if response is None or not response.strip():
        return False
    return all(_check_one(response, c) for c in constraints)


_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-\u2212])?\$?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\d])"
    r"|(?<![\w.])\$(?P<sign2>[-\u2212])(?P<num2>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)"
)
_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_NUMBER_WORD = re.compile(
    r"\b(?:(?P<tens>" + "|".join(_TENS) + r")(?:[-\s](?P<unit>" + "|".join(list(_UNITS)[1:10]) + r"))?"
    r"|(?P<small>" + "|".join(_UNITS) + r"))\b",
    re.IGNORECASE,
)


def extract_number(response: str) -> float | None:
    """The final numeric answer in a response: the last number written in digits ("$1,234.50",
    "12.", "-3", "−3", "50%" all read as numbers; a hyphen between two numbers is not a minus
    sign), else the last number word from zero to ninety-nine; None when there is none."""
    if not response:
        return None
    last = None
    for match in _NUMBER.finditer(response):
        last = match
    if last is not None:
        num = last.group("num") or last.group("num2")
        sign = last.group("sign") or last.group("sign2")
        value = float(num.replace(",", ""))
        return -value if sign else value
    words = None
    for match in _NUMBER_WORD.finditer(response):
        words = match
    if words is None:
        return None
    if words.group("small"):
        return float(_UNITS[words.group("small").lower()])
    value = _TENS[words.group("tens").lower()]
    if words.group("unit"):
        value += _UNITS[words.group("unit").lower()]
    return float(value)


def numeric_match(response: str, answers: Sequence[str | float | int]) -> bool:
    """True when the response's final number equals one of the gold answers (relative
    tolerance 1e-6; absolute 1e-9 around zero)."""
    got = extract_number(response)
    if got is None:
        return False
    for gold in answers:
        value = gold if isinstance(gold, (int, float)) else extract_number(str(gold))
        if value is not None and math.isclose(got, float(value), rel_tol=1e-6, abs_tol=1e-9):
            return True
    return False
