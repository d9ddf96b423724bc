"""Small text helpers: the answer format, question framing, wrong numbers, near-identical
rewrites, and the character-shingle similarity that keeps fresh queries distinct."""

from __future__ import annotations

import json
import re
from collections import Counter

IDK = "I don't know based on the provided documents."
SIMILAR = 0.6               # fresh queries stay below this char-5-gram Jaccard to every earlier query
DETECT = 0.7                # similarity reported as "near-duplicate" in the summary
NUM_RE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?!\w)")


def lower_first(text):
    """Lower-case the first letter unless the first word is 'I' or an acronym."""
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def frame(lead, question, tail):
    if lead.endswith((", ", ": ", "but ")):
        question = lower_first(question)
    return f"{lead}{question}{tail}"


def cite(sentence, ids):
    body = sentence.rstrip().rstrip(".")
    return f"{body} {''.join(f'[{i}]' for i in ids)}."


def answer_json(text, citations):
    return json.dumps({"answer": text, "citations": list(citations)}, ensure_ascii=False)


IDK_JSON = answer_json(IDK, [])


def perturb_number(rng, sentence):
    """Return ``sentence`` with its first number changed to a wrong one, plus the original number."""
    m = NUM_RE.search(sentence)
    raw = m.group(1)
    if "." in raw and "," not in raw:
        decimals = len(raw.split(".")[1])
        value = float(raw)
        wrong = f"{rng.choice([value - 0.5, value + 0.4, value * 2]):.{decimals}f}"
    else:
        n = int(raw.replace(",", ""))
        step = 10 ** (len(str(n)) - 1)
        options = [x for x in (n * 2, n + (1 if n < 10 else step), n // 2, n * 3) if x > 0 and x != n]
        choice = rng.choice(options)
        wrong = f"{choice:,}" if "," in raw else str(choice)
    return sentence[:m.start(1)] + wrong + sentence[m.end(1):], raw


def surface_variant(rng, text):
    """A near-identical rewrite: casing, punctuation, whitespace or a typo."""
    for _ in range(10):
        out = text
        kind = rng.choice(["lower", "punct", "typo", "space", "upper_first"])
        if kind == "lower":
            out = text.lower()
        elif kind == "punct":
            out = text.rstrip("?!. ") if text.rstrip().endswith(("?", "!", ".")) else text + "??"
        elif kind == "typo":
            words = text.split(" ")
            idx = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
            if idx:
                i = rng.choice(idx)
                w = words[i]
                j = rng.randint(1, len(w) - 3)
                words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:]
                out = " ".join(words)
        elif kind == "space":
            out = text.replace(" ", "  ", 1) + " "
        else:
            out = text[0].upper() + text[1:] if text[:1].islower() else text.upper()
        if out != text:
            return out
    return text + "?"


def quota(rng, n, k):
    """n flags in shuffled order, k of them True."""
    flags = [True] * min(k, n) + [False] * max(0, n - k)
    rng.shuffle(flags)
    return flags


WORD_RE = re.compile(r"\w+")


def shingles(text, n=5):
    """Character n-grams of the lowercased words joined by single spaces."""
    norm = " ".join(WORD_RE.findall(text.lower()))
    return {norm[i:i + n] for i in range(max(1, len(norm) - n + 1))}


class SimilarityIndex:
    """Exact Jaccard similarity of a query to all earlier ones, via an inverted shingle index."""

    def __init__(self):
        self.postings = {}
        self.sizes = []

    def max_similarity(self, text):
        sh = shingles(text)
        overlap = Counter()
        for g in sh:
            overlap.update(self.postings.get(g, ()))
        return max((ov / (len(sh) + self.sizes[i] - ov) for i, ov in overlap.items()), default=0.0)

    def add(self, text):
        sh = shingles(text)
        for g in sh:
            self.postings.setdefault(g, []).append(len(self.sizes))
        self.sizes.append(len(sh))
