"""The answer contract: what an answer in the pipeline's output format is, what it cites,
whether it refuses, and whether the retrieved documents support it.

curate uses it to label failures and vet ideal answers, split to pick few-shot examples, and
eval to score model outputs, so the three agree on every answer. The contract is configured
by `config.output`: `format` (json: exactly {"answer": "... [doc-id]", "citations":
["doc-id"]}; text: prose with inline [doc-id] citations), `idk_answer` (the one refusal
sentence) and `min_support` (the one support threshold).

"Support" is lexical: the share of the answer's content words (words that are not stopwords,
citation markers removed) that occur in the documents. An answer with no content words
("Yes.") cannot be checked and counts as supported.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from pipelines.config import OutputConfig

# A citation is any bracketed token without spaces: [refund-policy], [kb/12#3], [<EMAIL>].
# Deliberately broad, so an invented marker counts as a citation (and fails as one) rather
# than passing as prose.
CITATION = re.compile(r"\[([^\[\]\s]{1,200})\]")
# Words: runs of letters and digits (any script), with an inner apostrophe kept ("don't").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
# Refusals a model writes besides the configured sentence.
_REFUSAL = re.compile(
    r"\b(?:i\s+(?:do\s+not|don'?t|dont)\s+know|i\s+(?:cannot|can'?t|am\s+unable\s+to)\s+(?:answer|find|tell)"
    r"|(?:is|are)\s+not\s+(?:mentioned|provided|stated|specified|given)\s+in\s+the\s+(?:provided\s+)?"
    r"(?:documents?|context)|(?:documents?|context)\s+(?:does|do)\s+not\s+(?:contain|say|mention|provide))",
    re.IGNORECASE,
)
STOPWORDS = frozenset(
    "a an the and or but if then than so of to in on at by for with from as is are was were be "
    "been being it its this that these those there here you your yours we our us i me my he she "
    "they them their his her do does did done can could will would should may might must shall "
    "not no yes any all some each every more most other such only own same too very just also "
    "into about over under up down out off again further once how what which who whom why when "
    "where have has had having get gets got per via".split()
)


def words(text: str) -> list[str]:
    """Lowercased words, typographic apostrophes made plain."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def content_words(text: str) -> list[str]:
    """The words that carry meaning: no stopwords, no citation markers, nothing of one
    character. (Keeping single digits was tried on the sample: they are mostly the pieces
    of "$2,520" in arithmetic the documents cannot hold, and flipped four corrections.)"""
    return [w for w in words(CITATION.sub(" ", text)) if w not in STOPWORDS and len(w) > 1]


def strip_citations(text: str) -> str:
    return " ".join(CITATION.sub(" ", text).split())


# Words one of _REFUSAL's branches must contain, checked on the casefolded text first: most
# answers hold none, and the search costs ten times the check. (Exact: casefold maps every
# character that re.IGNORECASE equates with these letters, such as the Kelvin sign, onto them.)
_REFUSAL_WORDS = ("know", "can", "unable", "document", "context")


@functools.lru_cache(maxsize=8)
def _normal_idk(idk_answer: str) -> tuple[str, str]:
    """The sentence's words joined, and its longest word: a text whose words hold the
    sentence holds that word in its lowercased characters."""
    found = words(idk_answer)
    return " ".join(found), max(found, key=len, default="")


def is_refusal(text: str, idk_answer: str) -> bool:
    """The configured "I don't know" sentence, or a refusal in other words."""
    plain = text.replace("\u2019", "'")
    lowered = plain.lower()
    idk, longest = _normal_idk(idk_answer)
    if idk and longest in lowered and idk in " ".join(_WORD.findall(lowered)):
        return True
    folded = plain.casefold()
    return any(word in folded for word in _REFUSAL_WORDS) and bool(_REFUSAL.search(plain))


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer as the output contract reads it."""

    text: str  # the answer text as written, [doc-id] markers included
    citations: tuple[str, ...]  # ids listed in "citations", then ids cited inline, each once
    format_valid: bool  # the whole output is exactly the pipeline's format
    refusal: bool

    @property
    def answer(self) -> str:
        """The answer text without its citation markers (what answer-matching compares)."""
        return strip_citations(self.text)


_INVALID = object()  # what `_decode` returns for text that is not JSON


def _decode(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _INVALID


def _json_object(text: str) -> tuple[dict[str, Any] | None, Any]:
    """The output as a JSON object, leniently: whole, inside a ``` fence, or the first
    {...} span (None when there is none); and the whole output decoded (`_INVALID` when it
    is not JSON), which `json_format_valid` checks without decoding it again."""
    stripped = text.strip()
    whole = _decode(stripped)
    if isinstance(whole, dict):
        return whole, whole
    candidates = []
    fenced = _FENCE.match(stripped)
    if fenced:
        candidates.append(fenced.group(1))
    start, end = stripped.find("{"), stripped.rfind("}")
    if 0 <= start < end:
        candidates.append(stripped[start:end + 1])
    for candidate in candidates:
        value = _decode(candidate)
        if isinstance(value, dict):
            return value, whole
    return None, whole


def json_format_valid(raw: str) -> bool:
    """The JSON format: one object and nothing around it, with exactly a non-empty string
    "answer" and a list of string "citations"."""
    return _is_json_format(_decode(raw.strip()))


def _is_json_format(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"answer", "citations"} and isinstance(value["answer"], str)
            and bool(value["answer"].strip()) and isinstance(value["citations"], list)
            and all(isinstance(c, str) for c in value["citations"]))


def parse_answer(raw: str, output_format: str, idk_answer: str) -> Answer:
    """Read an answer in the pipeline's output format ("json" or "text"). A JSON object is
    read in either format (logs store structured answers as objects), leniently; whether the
    output was exactly the format is `format_valid`."""
    obj, whole = _json_object(raw)
    if obj is not None and isinstance(obj.get("answer"), str):
        text = obj["answer"].strip()
        listed = obj.get("citations") if isinstance(obj.get("citations"), list) else []
        listed = [c for c in listed if isinstance(c, str)]
    else:
        obj, text, listed = None, raw.strip(), []
    citations = tuple(dict.fromkeys([*listed, *CITATION.findall(text)]))
    refusal = is_refusal(text, idk_answer)
    if output_format == "json":
        valid = _is_json_format(whole)
    else:  # prose, with inline citations unless it refuses
        valid = obj is None and bool(text) and (refusal or bool(CITATION.search(text)))
    return Answer(text, citations, valid, refusal)


def is_cited_answer(raw: str, output: OutputConfig) -> bool:
    """Does this answer (in the output format) cite at least one document without refusing?
    What split's few-shot choice asks of an ideal answer."""
    answer = parse_answer(raw, output.format, output.idk_answer)
    return bool(answer.citations) and not answer.refusal


def support(answer: Answer, documents: Iterable[str]) -> float | None:
    """The share of the answer's content words found in the documents; None when the answer
    has no content words."""
    return _share(content_words(answer.text), [frozenset(words(text)) for text in documents])


def _share(found: list[str], vocabularies: list[frozenset[str]]) -> float | None:
    if not found:
        return None
    if not vocabularies:
        return 0.0
    # A word in any vocabulary, without building their union: a dozen words against a few
    # hundred, so the union costs twice these lookups (and a generator seven times).
    hits = 0
    for word in found:
        for vocabulary in vocabularies:
            if word in vocabulary:
                hits += 1
                break
    return hits / len(found)


def _kept(recent: dict[str, Any], key: str, make: Callable[[], Any]) -> Any:
    """`recent[key]`, made on a miss; the oldest of more than four entries goes."""
    hit = recent.get(key)
    if hit is None:
        if len(recent) >= 4:
            del recent[next(iter(recent))]
        hit = recent[key] = make()
    return hit


class AnswerContract:
    """The contract bound to one `config.output`; caches document vocabularies, because
    retrieved documents repeat across thousands of log records."""

    def __init__(self, output: OutputConfig):
        self.output = output
        self.min_support = output.min_support
        self._vocabularies: dict[str, frozenset[str]] = {}
        # curate's routing and its retrieval metrics read one record's answers back to back:
        # the last few parses and content words are kept, so each is computed once.
        self._recent: dict[str, Answer] = {}
        self._recent_words: dict[str, list[str]] = {}

    def parse(self, raw: str) -> Answer:
        return _kept(self._recent, raw, lambda: parse_answer(raw, self.output.format, self.output.idk_answer))

    def content_words(self, text: str) -> list[str]:
        return _kept(self._recent_words, text, lambda: content_words(text))

    def idk(self) -> Answer:
        return Answer(self.output.idk_answer, (), True, True)

    def support(self, answer: Answer, documents: Iterable[str]) -> float | None:
        found = self.content_words(answer.text)
        return _share(found, [self._vocabulary(text) for text in documents]) if found else None

    def supported(self, answer: Answer, documents: Iterable[str]) -> bool:
        """At least `output.min_support` of the answer's content words are in the documents
        (an answer without content words cannot be checked and passes)."""
        share = self.support(answer, documents)
        return share is None or share >= self.min_support

    def support_each(self, answer: Answer, documents: list[str]) -> tuple[float | None, list[float | None]]:
        """Support by all the documents together and by each alone, the content words found once."""
        found = self.content_words(answer.text)
        if not found:
            return None, [None] * len(documents)
        vocabularies = [self._vocabulary(text) for text in documents]
        return _share(found, vocabularies), [_share(found, [v]) for v in vocabularies]

    def _vocabulary(self, text: str) -> frozenset[str]:
        found = self._vocabularies.get(text)
        if found is None:
            if len(self._vocabularies) > 50_000:
                self._vocabularies.clear()
            found = self._vocabularies[text] = frozenset(words(text))
        return found

    def canonical(self, answer: Answer) -> str:
        """The answer written in the pipeline's output format (a refusal as the one sentence)."""
        if answer.refusal:
            text, citations = self.output.idk_answer, []
        else:
            text, citations = answer.text.strip(), list(answer.citations)
        if self.output.format == "json":
            return orjson.dumps({"answer": text, "citations": citations}).decode()
        return text
