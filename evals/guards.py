"""General-capability guard suites: generators, the shipped data, and their scoring.

Three suites guard against a fine-tune that fixes the RAG behaviour but breaks the base
model's general skills. refit writes them itself (no downloads), deterministically from a
seed, and ships the result under `evals/suites/` (regenerate with `python -m evals.guards`):

- `instruction_following` (kind "general"): everyday writing tasks with verifiable
  constraints in the IFEval style (a word limit, a required word, all lowercase, a JSON object
  with given keys, exactly N bullet points, an end phrase, no commas), one or two per item.
  `evals.checks.check_instruction` verifies them.
- `arithmetic` (kind "general"): one- or two-operation word problems with small numbers and
  a numeric gold answer. `evals.checks.numeric_match` compares the last number in a response.
- `refusal` (kind "rag"): one short paragraph of made-up facts about a fictional entity (so
  no model knows them from pretraining) and a question about that entity that the paragraph
  answers (gold = the answer span) or does not (answers [], answerable false), half and half.

Every item has the same keys: id, suite, kind, query, contexts, answers, answerable, check
(the constraints for instruction_following, {} elsewhere) and label (the category results are
broken down by). The difficulty is sized on SmolLM2-135M-Instruct so that a 135M model scores
well above zero and a regression shows. scripts/calibrate_guards.py measures it; on a
stratified slice (greedy, 96 new tokens) it scored: instruction_following 46% (bullets 6/6,
json 4/6, required_word 4/6, no_commas 3/6, word_limit 2/6, end_phrase 2/6, combined 1/6,
lowercase 0/6), arithmetic 30% (multiplication 6/8, addition 3/8, subtraction 2/8, two_step
1/8, division 0/8), refusal: the gold answer in 16/20 answerable answers, and 0/20 refusals on
unanswerable ones. The base model never refuses under the fine-tuning prompt, however plain
the gap (not even for "What is the capital of France?" against an unrelated paragraph):
refusing is the behaviour fine-tuning teaches, and the answerable half is what shows a model
that starts refusing everything.

Only the standard library is used, and `random.Random` seeded with a string: the same seed
gives the same bytes on every platform and Python version refit supports.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The guards' scoring lives in evals/checks.py; these names stay importable from here.
from evals.checks import (  # noqa: F401
    INSTRUCTION_CHECKS,
    check_instruction,
    count_words,
    extract_number,
    numeric_match,
    parse_json_object,
)

SUITES = ("instruction_following", "arithmetic", "refusal")
DEFAULT_N = 120
DEFAULT_SEED = 2024
SUITES_DIR = Path(__file__).resolve().parent / "suites"

Item = dict[str, Any]


def _rng(suite: str, seed: int) -> random.Random:
    # String seeds hash with SHA-512 (seed version 2): stable across runs, platforms and
    # PYTHONHASHSEED, unlike hash().
    return random.Random(f"refit-guards/{suite}/{seed}")


def _item(suite: str, index: int, *, kind: str, query: str, label: str, answers: Sequence[str] = (),
          answerable: bool = True, contexts: Sequence[Mapping[str, str]] = (),
          check: Mapping[str, Any] | None = None) -> Item:
    return {
        "id": f"{suite}-{index:04d}",
        "suite": suite,
        "kind": kind,
        "query": query,
        "contexts": [dict(c) for c in contexts],
        "answers": list(answers),
        "answerable": answerable,
        "check": dict(check or {}),
        "label": label,
    }


def _balanced_labels(labels: Sequence[str], n: int, rng: random.Random) -> list[str]:
    """n labels, as even as possible (the first n % len(labels) get one more), shuffled."""
    out = [labels[i % len(labels)] for i in range(n)]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------------------------------------
# Instruction following


IF_TOPICS = (
    "cats", "dogs", "the ocean", "a rainy day", "coffee", "breakfast", "winter", "summer",
    "the moon", "a library", "gardening", "trains", "mountains", "a birthday party", "bicycles",
    "the city at night", "autumn leaves", "a thunderstorm", "your favorite food", "a good friend",
    "learning to swim", "the forest", "music", "a picnic in the park", "snow", "the beach",
    "a lazy Sunday", "baking bread", "a walk in the rain", "the stars", "apples", "a small village",
)
# Short tasks: a 135M model writes one sentence when asked for one, and long rambling answers
# break word limits and comma bans for reasons that have nothing to do with following them.
IF_TASKS = (
    "Write one sentence about {topic}.",
    "Write a short sentence about {topic}.",
    "Describe {topic} in one sentence.",
    "Write one sentence describing {topic}.",
)
IF_LIST_TASKS = (
    "List some facts about {topic}.",
    "Give some reasons to enjoy {topic}.",
    "List some things people like about {topic}.",
    "Write some short notes about {topic}.",
)
IF_JSON_KEYS = (("name", "description"), ("topic", "summary"), ("title", "text"), ("subject", "fact"),
                ("name", "color"))
# Lowercase items are one-word answers: SmolLM2-135M capitalises every sentence it starts
# however the instruction is put (0 of 30 in calibration), so longer tasks would only measure 0.
IF_LOWERCASE_QUESTIONS = (
    "What animal says moo?", "What color is grass?", "What do bees make?", "What is frozen water called?",
    "Which animal barks?", "What fruit is yellow and long?", "What color is the sky on a clear day?",
    "What do cows drink?", "Which season comes after winter?", "What do you call a baby cat?",
    "What is the opposite of hot?", "What do birds use to fly?", "What color is snow?",
    "What do you drink in the morning?", "Which animal has a long trunk?", "What falls from clouds?",
    "What shines in the sky during the day?", "What do you wear on your feet?",
    "What do you use to write on paper?", "Which fruit is red and round?",
)
IF_REQUIRED_WORDS = ("happy", "bright", "quiet", "together", "morning", "green", "simple", "warm",
                     "gentle", "blue", "friendly", "beautiful")
IF_END_PHRASES = ("That is all.", "Thank you for reading.", "Have a nice day.", "The end.",
                  "Is there anything else I can help with?")
IF_LABELS = ("word_limit", "lowercase", "json", "bullets", "required_word", "end_phrase", "no_commas",
             "combined")
# Pairs for "combined" items, in the order their sentences are written. Lowercase and end_phrase
# are left out: SmolLM2-135M rarely meets them alone, so they would zero every pair they are in.
IF_COMBINABLE = ("word_limit", "required_word", "no_commas")


def _constraint(kind: str, rng: random.Random) -> tuple[dict[str, Any], str]:
    """One constraint and the sentence that asks for it (it follows the task sentence)."""
    if kind == "word_limit":
        limit = rng.choice((15, 20, 25))
        return {"type": kind, "max_words": limit}, f"Answer in at most {limit} words."
    if kind == "required_word":
        word = rng.choice(IF_REQUIRED_WORDS)
        return {"type": kind, "word": word}, f'Include the word "{word}".'
    if kind == "end_phrase":
        phrase = rng.choice(IF_END_PHRASES)
        return {"type": kind, "phrase": phrase}, f'After it, write "{phrase}"'
    if kind == "no_commas":
        return {"type": kind}, "Do not use any commas."
    if kind == "bullets":
        count = rng.choice((3, 4, 5))  # two bullets: SmolLM2-135M meets them every time
        return ({"type": kind, "count": count},
                f"Your answer must have exactly {count} bullet points. Use markdown bullet points such as:\n"
                "- This is a point.")
    if kind == "json":
        keys = list(rng.choice(IF_JSON_KEYS))
        quoted = " and ".join(f'"{k}"' for k in keys)
        return ({"type": kind, "keys": keys},
                f"in a JSON object with the keys {quoted}. Keep the values short and reply with only the JSON object.")
    raise ValueError(f"unknown constraint type {kind!r}")


def instruction_following(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[Item]:
    """n instruction-following items, labels balanced over IF_LABELS."""
    suite = "instruction_following"
    rng = _rng(suite, seed)
    items = []
    for index, label in enumerate(_balanced_labels(IF_LABELS, n, rng), 1):
        topic = rng.choice(IF_TOPICS)
        if label == "lowercase":
            check = {"constraints": [{"type": "lowercase"}]}
            query = f"Answer with one word in lowercase letters: {rng.choice(IF_LOWERCASE_QUESTIONS)}"
        elif label == "json":
            constraint, sentence = _constraint(label, rng)
            check = {"constraints": [constraint]}
            query = f"Describe {topic} {sentence}"
        else:
            if label == "combined":
                kinds = sorted(rng.sample(IF_COMBINABLE, 2), key=IF_COMBINABLE.index)
            else:
                kinds = [label]
            task = rng.choice(IF_LIST_TASKS if label == "bullets" else IF_TASKS).format(topic=topic)
            constraints, sentences = [], []
            for kind in kinds:
                constraint, sentence = _constraint(kind, rng)
                constraints.append(constraint)
                sentences.append(sentence)
            check = {"constraints": constraints}
            query = " ".join([task, *sentences])
        items.append(_item(suite, index, kind="general", query=query, label=label, check=check))
    return items


# ---------------------------------------------------------------------------------------------
# Arithmetic


PEOPLE = (("Tom", "he"), ("Anna", "she"), ("Ben", "he"), ("Maria", "she"), ("Sam", "he"), ("Lucy", "she"),
          ("Omar", "he"), ("Mia", "she"), ("Leo", "he"), ("Nora", "she"), ("Raj", "he"), ("Emma", "she"),
          ("Jack", "he"), ("Sofia", "she"), ("Ivan", "he"), ("Grace", "she"))
THINGS = ("apples", "pencils", "marbles", "stickers", "cookies", "books", "stamps", "balloons", "shells",
          "cards", "eggs", "oranges", "toy cars", "candies", "flowers", "coins")
BOXES = (("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"), ("pack", "packs"))
ARITH_LABELS = ("addition", "subtraction", "multiplication", "division", "two_step")


# Single-digit operands (products and dividends up to 25): SmolLM2-135M gets about half of
# "3 + 4" word problems right and almost none with two-digit numbers.
def _arith_problem(label: str, rng: random.Random) -> tuple[str, int]:
    name, pron = rng.choice(PEOPLE)
    obj = "him" if pron == "he" else "her"
    friend = rng.choice([p for p, _ in PEOPLE if p != name])
    thing = rng.choice(THINGS)
    box, boxes = rng.choice(BOXES)
    if label == "addition":
        a, b = rng.randint(1, 9), rng.randint(2, 9)
        text = rng.choice((
            f"{name} has {a} {thing} and buys {b} more. How many {thing} does {pron} have now?",
            f"{name} has {a} {thing}. {friend} gives {obj} {b} more. How many {thing} does {name} have now?",
            f"There are {a} {thing} on a table and {b} {thing} on a shelf. How many {thing} are there in total?",
        ))
        return text, a + b
    if label == "subtraction":
        a = rng.randint(4, 12)
        b = rng.randint(1, min(a - 1, 9))
        text = rng.choice((
            f"{name} has {a} {thing} and gives {b} of them to {friend}. How many {thing} does {name} have left?",
            f"{name} had {a} {thing} and lost {b}. How many {thing} does {pron} have now?",
            f"There were {a} {thing} in a {box}. {name} took out {b}. How many {thing} are left in the {box}?",
        ))
        return text, a - b
    if label == "multiplication":
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        text = rng.choice((
            f"{name} has {a} {boxes} with {b} {thing} in each {box}. How many {thing} does {pron} have in total?",
            f"Each {box} holds {b} {thing}. How many {thing} are in {a} {boxes}?",
            f"{name} buys {a} {boxes} of {thing}. Each {box} has {b} {thing}. How many {thing} did {pron} buy?",
        ))
        return text, a * b
    if label == "division":
        b, q = rng.randint(2, 5), rng.randint(2, 5)
        a = b * q
        text = rng.choice((
            f"{name} has {a} {thing} and shares them equally among {b} friends. How many {thing} does each friend get?",
            f"{name} puts {a} {thing} into {b} {boxes}, the same number in each. How many {thing} are in each {box}?",
        ))
        return text, q
    if label == "two_step":
        a, b = rng.randint(2, 9), rng.randint(1, 5)
        c = rng.randint(1, min(a + b - 1, 5))
        text = rng.choice((
            f"{name} has {a} {thing}. {pron.capitalize()} buys {b} more and then gives {c} to {friend}. "
            f"How many {thing} does {name} have now?",
            f"A {box} has {a} {thing}. {name} adds {b} {thing} and then takes out {c}. "
            f"How many {thing} are in the {box} now?",
        ))
        return text, a + b - c
    raise ValueError(f"unknown arithmetic label {label!r}")


def arithmetic(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[Item]:
    """n word problems with integer answers, labels balanced over ARITH_LABELS."""
    suite = "arithmetic"
    rng = _rng(suite, seed)
    items = []
    for index, label in enumerate(_balanced_labels(ARITH_LABELS, n, rng), 1):
        text, value = _arith_problem(label, rng)
        items.append(_item(suite, index, kind="general", query=text, label=label, answers=[str(value)]))
    return items


# ---------------------------------------------------------------------------------------------
# Refusal

_SYL_A = ("Var", "Ost", "Bel", "Kor", "Mir", "Tal", "Quen", "Dros", "Fen", "Hal", "Lur", "Zem", "Brav", "Cor",
          "Eld", "Grin", "Jor", "Nav", "Pell", "Rusk", "Sil", "Thor", "Ulm", "Wex")
_SYL_B = ("nholt", "ra", "wick", "dane", "mere", "vik", "stead", "oria", "brund", "ley", "marsh", "ton",
          "gard", "rin", "sby", "ova", "ith", "ken")


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = rng.choice(_SYL_A) + rng.choice(_SYL_B)
        if name not in taken:
            taken.add(name)
            return name


# An entity: what it is called, and its facts. Each fact: the sentence the context states it
# in, the question that asks for it, and the gold answer span(s), the first the shortest. A
# fact left out of the context makes its question unanswerable from that context. The
# placeholders: {e} the entity's name, {x} the fact's value, and {n2}, {n3}: more invented names.
_FACTS: dict[str, dict[str, Any]] = {
    "ferry": {
        "entity": "the {n} Ferry",
        "facts": [
            ("{E} crosses Lake {x}.", "Which lake does {e} cross?", "name", ["Lake {x}", "{x}"]),
            ("{E} departs every {x} minutes.", "How often does {e} depart?", ("int", 15, 55, 5),
             ["{x} minutes", "every {x} minutes"]),
            ("{E} can carry up to {x} passengers.", "How many passengers can {e} carry?", ("int", 60, 400, 10),
             ["{x}"]),
            ("{E} entered service in {x}.", "In which year did {e} enter service?", ("int", 1950, 2015, 1), ["{x}"]),
            ("A one-way ticket on {e} costs {x} crowns.", "How much does a one-way ticket on {e} cost?",
             ("int", 3, 19, 1), ["{x} crowns"]),
            ("{E} is run by the {x} Shipping Company.", "Which company runs {e}?", "name",
             ["{x} Shipping Company", "the {x} Shipping Company"]),
        ],
    },
    "museum": {
        "entity": "the {n} Museum",
        "facts": [
            ("{E} is located in the town of {x}.", "In which town is {e} located?", "name", ["{x}"]),
            ("{E} opened in {x}.", "When did {e} open?", ("int", 1890, 2010, 1), ["{x}"]),
            ("{E} is closed on {x}.", "On which day is {e} closed?", ("choice", "Mondays", "Tuesdays",
             "Wednesdays", "Thursdays"), ["{x}"]),
            ("{E} holds a collection of {x} old clocks.", "How many old clocks does {e} hold?",
             ("int", 120, 900, 10), ["{x}"]),
            ("The director of {e} is {x} {n2}.", "Who is the director of {e}?", ("choice", "Ilse", "Marten",
             "Odile", "Teodor", "Wren"), ["{x} {n2}"]),
            ("Entry to {e} costs {x} crowns.", "How much does entry to {e} cost?", ("int", 4, 25, 1),
             ["{x} crowns"]),
        ],
    },
    "festival": {
        "entity": "the {n} Festival",
        "facts": [
            ("{E} takes place every year in {x}.", "In which month does {e} take place?", ("choice", "March",
             "April", "May", "June", "September", "October"), ["{x}"]),
            ("{E} lasts {x} days.", "How many days does {e} last?", ("int", 2, 9, 1), ["{x} days", "{x}"]),
            ("{E} was first held in {x}.", "When was {e} first held?", ("int", 1960, 2015, 1), ["{x}"]),
            ("{E} is held in the village of {x}.", "Where is {e} held?", "name", ["{x}"]),
            ("The main event of {e} is a {x} race.", "What is the main event of {e}?",
             ("choice", "boat", "horse", "bicycle", "goat", "sled"), ["a {x} race", "{x} race"]),
            ("About {x},000 people visit {e} each year.", "How many people visit {e} each year?",
             ("int", 2, 40, 1), ["{x},000"]),
        ],
    },
    "bakery": {
        "entity": "the {n} Bakery",
        "facts": [
            ("{E} is known for its {x} bread.", "What kind of bread is {e} known for?",
             ("choice", "rye", "walnut", "honey", "potato", "onion", "fig"), ["{x} bread", "{x}"]),
            ("{E} opens at {x} in the morning.", "What time does {e} open?",
             ("choice", "5:30", "6:00", "6:30", "7:00", "7:30"), ["{x}"]),
            ("{E} was founded by {x} {n2}.", "Who founded {e}?", ("choice", "Greta", "Pavel", "Liesel",
             "Anton", "Maren"), ["{x} {n2}"]),
            ("{E} bakes {x} loaves every day.", "How many loaves does {e} bake every day?",
             ("int", 80, 600, 10), ["{x}"]),
            ("{E} is on {x} Street.", "On which street is {e}?", "name", ["{x} Street"]),
            ("{E} has been open since {x}.", "Since when has {e} been open?", ("int", 1920, 2018, 1), ["{x}"]),
        ],
    },
    "bridge": {
        "entity": "the {n} Bridge",
        "facts": [
            ("{E} crosses the {x} River.", "Which river does {e} cross?", "name", ["{x} River", "the {x} River"]),
            ("{E} is {x} meters long.", "How long is {e}?", ("int", 120, 2400, 20), ["{x} meters"]),
            ("{E} was completed in {x}.", "When was {e} completed?", ("int", 1870, 2012, 1), ["{x}"]),
            ("{E} is painted {x}.", "What color is {e} painted?", ("choice", "red", "green", "yellow",
             "white", "blue"), ["{x}"]),
            ("{E} was designed by the engineer {x} {n2}.", "Who designed {e}?", ("choice", "Ada", "Bruno",
             "Clara", "Dmitri", "Elin"), ["{x} {n2}"]),
            ("Crossing {e} costs {x} crowns for a car.", "How much does it cost to cross {e} by car?",
             ("int", 2, 12, 1), ["{x} crowns"]),
        ],
    },
    "observatory": {
        "entity": "the {n} Observatory",
        "facts": [
            ("{E} stands on Mount {x}.", "On which mountain does {e} stand?", "name", ["Mount {x}", "{x}"]),
            ("{E} has a telescope with a {x}-meter mirror.", "How wide is the mirror of the telescope at {e}?",
             ("int", 2, 9, 1), ["{x}-meter", "{x}"]),
            ("{E} was built in {x}.", "When was {e} built?", ("int", 1900, 2010, 1), ["{x}"]),
            ("{E} is open to visitors on {x}.", "On which day is {e} open to visitors?", ("choice", "Fridays",
             "Saturdays", "Sundays", "Wednesdays"), ["{x}"]),
            ("{E} employs {x} astronomers.", "How many astronomers does {e} employ?", ("int", 4, 60, 1),
             ["{x}"]),
            ("{E} discovered the comet {x}.", "Which comet did {e} discover?", "name", ["{x}"]),
        ],
    },
    "railway": {
        "entity": "the {n} Railway",
        "facts": [
            ("{E} runs between {x} and {n2}.", "Which towns does {e} connect?", "name",
             ["{x} and {n2}"]),
            ("{E} has {x} stations.", "How many stations does {e} have?", ("int", 4, 30, 1), ["{x}"]),
            ("{E} opened in {x}.", "When did {e} open?", ("int", 1850, 1990, 1), ["{x}"]),
            ("Trains on {e} run every {x} minutes.", "How often do trains run on {e}?", ("int", 10, 60, 5),
             ["{x} minutes", "every {x} minutes"]),
            ("The trains on {e} are painted {x}.", "What color are the trains on {e}?",
             ("choice", "green", "red", "orange", "silver", "blue"), ["{x}"]),
            ("A day ticket for {e} costs {x} crowns.", "How much does a day ticket for {e} cost?",
             ("int", 5, 30, 1), ["{x} crowns"]),
        ],
    },
    "library": {
        "entity": "the {n} Library",
        "facts": [
            ("{E} holds about {x},000 books.", "How many books does {e} hold?", ("int", 12, 95, 1),
             ["{x},000"]),
            ("{E} closes at {x} in the evening.", "What time does {e} close?",
             ("choice", "6:00", "7:00", "8:00", "9:00"), ["{x}"]),
            ("{E} was built in {x}.", "When was {e} built?", ("int", 1880, 2015, 1), ["{x}"]),
            ("The head librarian of {e} is {x} {n2}.", "Who is the head librarian of {e}?",
             ("choice", "Frida", "Hugo", "Irma", "Jonas", "Kaja"), ["{x} {n2}"]),
            ("{E} is in the town of {x}.", "In which town is {e}?", "name", ["{x}"]),
            ("Members of {e} can borrow up to {x} books at a time.",
             "How many books can a member of {e} borrow at a time?", ("int", 3, 15, 1), ["{x}"]),
        ],
    },
}
REFUSAL_LABELS = ("refusal_answerable", "refusal_unanswerable")
REFUSAL_FACTS_SHOWN = 3  # facts in each context; the rest of the entity's facts are withheld


def _fact_value(spec: Any, rng: random.Random, taken: set[str]) -> str:
    if spec == "name":
        return _name(rng, taken)
    if spec[0] == "int":
        _, low, high, step = spec
        return str(rng.randrange(low, high + 1, step))
    return rng.choice(spec[1:])


def _capitalize(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def occurs(span: str, text: str) -> bool:
    """`span` occurs in `text` as whole words, ignoring case ("12" is not in "120")."""
    return re.search(rf"(?<![^\W_]){re.escape(span)}(?![^\W_])", text, re.IGNORECASE) is not None


def _refusal_case(rng: random.Random, answerable: bool) -> dict[str, Any] | None:
    kind = rng.choice(sorted(_FACTS))
    spec = _FACTS[kind]
    taken: set[str] = set()
    entity = spec["entity"].format(n=_name(rng, taken))
    facts = []
    for sentence, question, value_spec, answers in spec["facts"]:
        x = _fact_value(value_spec, rng, taken)
        n2 = _name(rng, taken)
        fill = {"e": entity, "E": _capitalize(entity), "x": x, "n2": n2}
        facts.append({
            "sentence": sentence.format(**fill),
            "question": question.format(**fill),
            "answers": [a.format(**fill) for a in answers],
        })
    order = list(range(len(facts)))
    rng.shuffle(order)
    shown, withheld = sorted(order[:REFUSAL_FACTS_SHOWN]), sorted(order[REFUSAL_FACTS_SHOWN:])
    asked = facts[rng.choice(shown if answerable else withheld)]
    context = " ".join(facts[i]["sentence"] for i in shown)
    # An unanswerable question's answer must not occur in the context at all, not even by
    # coincidence (a withheld "12 stations" next to a shown "12 crowns"); draw again if so.
    if not answerable and any(occurs(a, context) for a in asked["answers"]):
        return None
    return {
        "entity": entity,
        "context": context,
        "query": asked["question"],
        "answers": asked["answers"] if answerable else [],
        "answerable": answerable,
        "asked_answers": asked["answers"],
        "withheld": [facts[i]["sentence"] for i in withheld],
    }


def refusal_cases(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[dict[str, Any]]:
    """The cases behind `refusal`, with what the items leave out: each {"label", "entity",
    "context" (the paragraph), "query", "answers", "answerable", "asked_answers" (the asked
    fact's answers, also when withheld), "withheld" (the sentences not in the context)}."""
    rng = _rng("refusal", seed)
    cases = []
    for label in _balanced_labels(REFUSAL_LABELS, n, rng):
        case = None
        while case is None:
            case = _refusal_case(rng, label == "refusal_answerable")
        cases.append({"label": label, **case})
    return cases


def refusal(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[Item]:
    """n RAG items over invented facts, half answerable from their context and half not."""
    suite = "refusal"
    return [
        _item(suite, index, kind="rag", query=case["query"], label=case["label"], answers=case["answers"],
              answerable=case["answerable"], contexts=[{"id": f"fact-{index:04d}", "text": case["context"]}])
        for index, case in enumerate(refusal_cases(n, seed), 1)
    ]


GENERATORS = {"instruction_following": instruction_following, "arithmetic": arithmetic, "refusal": refusal}


def dumps_suite(items: Sequence[Mapping[str, Any]]) -> bytes:
    """JSONL bytes: sorted keys, one item a line, UTF-8, "\\n" line ends."""
    return "".join(json.dumps(item, sort_keys=True, ensure_ascii=False) + "\n" for item in items).encode("utf-8")


def write_suites(folder: str | Path = SUITES_DIR, n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> list[Path]:
    """Write <folder>/<suite>.jsonl for every guard suite; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for suite, generate in GENERATORS.items():
        path = folder / f"{suite}.jsonl"
        path.write_bytes(dumps_suite(generate(n, seed)))
        paths.append(path)
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else SUITES_DIR
    for written in write_suites(target):
        print(f"wrote {written}")
