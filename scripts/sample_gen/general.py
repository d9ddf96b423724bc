"""general.jsonl: short general instruction-following items with correct answers (arithmetic,
case rewriting, lists, one-word answers, definitions, unit conversions), replayed during
fine-tuning against catastrophic forgetting."""

from __future__ import annotations

from .arithmetic import money
from .source import CAPITALS, CATEGORIES, CONVERSIONS, DEFINITIONS, ONE_WORD, OPPOSITES, SENTENCES


def word_problem(rng):
    """An arithmetic word problem and its worked answer, or None when the draw does not fit."""
    kind = rng.randrange(8)
    a, b = rng.randint(2, 30), rng.randint(2, 12)
    if kind == 0:
        return (f"Sam has {a} apples and buys {b} more. How many apples does Sam have now?",
                f"Sam has {a + b} apples ({a} + {b} = {a + b}).")
    if kind == 1:
        a += b
        return (f"Maria had {a} stickers and gave {b} to a friend. How many stickers does she have left?",
                f"She has {a - b} stickers left ({a} − {b} = {a - b}).")
    if kind == 2:
        return (f"A box holds {a} pencils. How many pencils are in {b} boxes?",
                f"There are {a * b} pencils ({b} × {a} = {a * b}).")
    if kind == 3:
        return (f"{a * b} cookies are shared equally among {b} children. How many cookies does each child get?",
                f"Each child gets {a} cookies ({a * b} ÷ {b} = {a}).")
    if kind == 4:
        s, h = rng.choice([40, 50, 60, 80, 90, 100, 120]), rng.randint(2, 6)
        return (f"A car drives at {s} km/h for {h} hours. How far does it travel?",
                f"It travels {s * h} km ({s} × {h} = {s * h}).")
    if kind == 5:
        p, q = rng.randint(2, 9), rng.randint(1, 5)
        return (f"A notebook costs ${p} and a pen costs ${q}. How much do 2 notebooks and 3 pens cost?",
                f"They cost ${2 * p + 3 * q} (2 × ${p} + 3 × ${q} = ${2 * p} + ${3 * q} = ${2 * p + 3 * q}).")
    if kind == 6:
        p, d = rng.choice([20, 40, 60, 80, 120, 150, 200]), rng.choice([10, 20, 25, 50])
        sale, off = p * (100 - d) / 100, p * d / 100
        return (f"A jacket costs ${p} and is {d}% off. What is the sale price?",
                f"The sale price is {money(sale)} ({d}% of ${p} is {money(off)}, and ${p} − {money(off)} = "
                f"{money(sale)}).")
    x, y = rng.randint(2, 20), rng.randint(2, 20)
    z = 3 * rng.randint(4, 20) - x - y
    if z <= 0:
        return None
    mean = (x + y + z) // 3
    return (f"What is the average of {x}, {y} and {z}?",
            f"The average is {mean} (({x} + {y} + {z}) ÷ 3 = {x + y + z} ÷ 3 = {mean}).")


def recall_items(rng):
    """Case rewriting, bulleted lists, one-word answers and definitions from general.yaml."""
    for s in SENTENCES:
        yield f"Rewrite this sentence in lowercase: {s}", s.lower()
    for s in SENTENCES[::2]:
        yield f"Rewrite this sentence in uppercase: {s.lower()}", s.upper()
    for wording in ("List three {c} as bullet points.", "Give me three {c}, one per bullet point.",
                    "Name three {c}. Format the answer as a bulleted list."):
        for c in CATEGORIES:
            picks = rng.sample(CATEGORIES[c], 3)
            yield wording.format(c=c), "\n".join(f"- {p}" for p in picks)
    for country, city in CAPITALS.items():
        yield f"Answer in one word: What is the capital of {country}?", city
    for word, opp in OPPOSITES.items():
        yield f"Answer in one word: What is the opposite of \"{word}\"?", opp
    for q, a in ONE_WORD.items():
        yield f"Answer in one word: {q}", a
    for term, definition in DEFINITIONS.items():
        yield rng.choice([f"Define \"{term}\" in one sentence.", f"What is a short definition of {term}?",
                          f"In one sentence, what does \"{term}\" mean?"]), definition


def conversion(rng):
    if rng.random() < 0.15:
        c = 5 * rng.randint(-8, 20)
        f = c * 9 // 5 + 32
        return f"Convert {c}°C to Fahrenheit.", f"{c}°C is {f}°F ({c} × 9/5 + 32 = {f})."
    src, dst, factor = rng.choice(CONVERSIONS)
    v = rng.randint(2, 48)
    return f"How many {dst} are in {v} {src}?", f"{v} {src} is {v * factor:,} {dst} ({v} × {factor:,} = {v * factor:,})."


def list_task(rng):
    nums = rng.sample(range(1, 60), 4)
    if rng.random() < 0.5:
        return (f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}.",
                ", ".join(map(str, sorted(nums))))
    start, step = rng.randint(1, 20), rng.randint(2, 9)
    seq = [start + step * i for i in range(4)]
    return (f"What is the next number in the sequence {', '.join(map(str, seq))}, ...?",
            f"{start + step * 4} (each number is {step} more than the one before).")


def general_items(rng):
    """~300 short instruction-following items with correct answers."""
    items = {}  # query -> answer in the order first drawn; a query drawn again keeps its first answer
    while len(items) < 70:
        pair = word_problem(rng)
        if pair:
            items.setdefault(*pair)
    for query, answer in recall_items(rng):
        items.setdefault(query, answer)
    while len(items) < 280:
        items.setdefault(*conversion(rng))
    while len(items) < 300:
        items.setdefault(*list_task(rng))
    pairs = list(items.items())
    rng.shuffle(pairs)
    return [{"id": f"gen-{i:04d}", "query": q, "answer": a} for i, (q, a) in enumerate(pairs, 1)]
