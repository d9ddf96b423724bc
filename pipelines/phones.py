"""Phone numbers, for pipelines/scrub.py: found by Google's libphonenumber (the `phonenumbers`
port) instead of hand-written regexes, so the national formats of every region in
`curate.scrub.phone_regions` are caught as well as +international numbers.

The matcher is pure Python, so it only sees what could be a phone: the finder of scrub.py
reports a text holding a run of 7+ digits and separators (its PHONE_RUN alternative), and of
that text only the runs not written the way sums and prices are reach the matcher. Real prose
and arithmetic (SQuAD, GSM8K) get no replacement; the tests hold that at zero.
"""

from __future__ import annotations

import re
from collections.abc import Callable

DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "AU", "CA")

# A run of digits and separators, 7+ characters long: the least a phone number of any region
# looks like. The finder reports a text with one (PHONE_RUN), so a text without costs nothing
# more than the finder's scan; runs with fewer than 7 digits or written like sums are dropped
# next, and only what is left reaches the matcher, which is pure Python.
_PHONE_RUN_RE = re.compile(r"[0-9][0-9 ().\-/\u00a0]{5,}[0-9]")
_GROUP_GAP_RE = re.compile(r"[ \u00a0]+")
# What a number cut out of a longer run must look like: international, with a trunk prefix or
# an area code in brackets, or the two prefix-less shapes of the default regions (NANP
# 3-3-4, Indian mobile 5-5). "5555 5555 5555" is a valid Brazilian number but no phone here.
_PLAUSIBLE_CUT_RE = re.compile(r"[+0(].*|(?:1[ .-])?[2-9][0-9]{2}[ .-][0-9]{3}[ .-][0-9]{4}|[6-9][0-9]{4} [0-9]{5}")


def _phone_spans(text: str, regions: tuple[str, ...]) -> list[tuple[int, int]]:
    """Spans of valid phone numbers in any of `regions` (national formats of those regions,
    and every +international number), merged where they overlap. The matcher only sees the
    phone-shaped runs of the text, one at a time, and not those written the way sums are."""
    runs = []  # (start, run): the start takes in a "+" or "(" just before the first digit
    for run in _PHONE_RUN_RE.finditer(text):
        start = run.start() - (run.start() > 0 and text[run.start() - 1] in "+(")
        if sum(char.isdigit() for char in run.group()) >= 7 and not _sum_shaped(text[start:run.end()]):
            runs.append((start, run))
    if not runs:
        return []
    from phonenumbers import Leniency, PhoneNumberMatcher

    def matches(start: int, end: int, leniency: int = Leniency.VALID) -> set[tuple[int, int]]:
        # One character either side: the matcher rejects a number glued to a letter (an id).
        start, end = max(0, start - 1), end + 1
        piece = text[start:end]
        return {_balanced(text, start + m.start, start + m.end) for region in regions
                for m in PhoneNumberMatcher(piece, region, leniency=leniency)}

    found: set[tuple[int, int]] = set()
    for start, run in runs:
        found |= matches(start, run.end()) or _cut_out(run, start, matches, Leniency.STRICT_GROUPING)
    spans = sorted((start, end) for start, end in found if not _arithmetic(text, start, end))
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _cut_out(run: re.Match[str], first: int, matches: Callable[..., set[tuple[int, int]]],
             leniency: int) -> set[tuple[int, int]]:
    """The matcher reads a whole run of digits and separators as one candidate, so a number
    glued to another ("costs 12  074104 10123", "020 7946 0958 12") is no match: the run is
    tried again without its leading and trailing groups, shortest cut first. A cut is a guess,
    so its number must also be grouped the way its region writes numbers, and look like a
    phone without its neighbours (`_PLAUSIBLE_CUT_RE`)."""
    text, gaps = run.string, list(_GROUP_GAP_RE.finditer(run.group()))
    starts = [first] + [run.start() + gap.end() for gap in gaps[:5]]
    ends = [run.end()] + [run.start() + gap.start() for gap in gaps[::-1][:5]]
    for start, end in sorted(((a, b) for a in starts for b in ends if b - a >= 7), key=lambda s: s[0] - s[1]):
        if (start, end) == (first, run.end()) or not _PLAUSIBLE_CUT_RE.fullmatch(text, start, end):
            continue  # checked before the matcher runs: most cuts are not even shaped like a phone
        hits = {(a, b) for a, b in matches(start, end, leniency) if _PLAUSIBLE_CUT_RE.fullmatch(text, a, b)}
        if hits:
            return hits
    return set()


# Numbers that a region's plan accepts but that are written the way sums are: a bare digit run
# ("350000"), groups joined by minus or slash signs ("4000-3000", "300 - 150 - 45") unless in the
# North American 3-3-4 shape, or one not written as a phone next to `*`, `%`, `$` ... ("$350 000"). A national
# number of the other default regions starts with 0 (the trunk prefix) or a bracket, and an
# international one with +. `=` and `<` are not in the list: `phone=415-555-0134` is a log line.
_SUM_SHAPED_RE = re.compile(r"[0-9]+(?: ?[-/] ?[0-9]+)*")
_NANP_RE = re.compile(r"(?:1[-.])?[2-9][0-9]{2}[-.][0-9]{3}[-.][0-9]{4}")
_ARITHMETIC_NEIGHBOURS = frozenset("*×÷^%$€£")


def _sum_shaped(raw: str) -> bool:
    return raw[0] not in "+0(" and _SUM_SHAPED_RE.fullmatch(raw) is not None and not _NANP_RE.fullmatch(raw)


def _arithmetic(text: str, start: int, end: int) -> bool:
    raw = text[start:end]
    if _sum_shaped(raw):
        return True
    if raw[0] in "+0(" or _NANP_RE.fullmatch(raw):  # written as a phone: its neighbours do not matter
        return False
    before, after = text[:start].rstrip()[-1:], text[end:].lstrip()[:1]
    return before in _ARITHMETIC_NEIGHBOURS and before != "" or after in _ARITHMETIC_NEIGHBOURS and after != ""


def _balanced(text: str, start: int, end: int) -> tuple[int, int]:
    """The matcher keeps the bracket of "(415-555-0134)" or "[...]"; one without its pair is prose."""
    for opening, closing in ("()", "[]", "{}"):
        raw = text[start:end]
        if raw.startswith(opening) and raw.count(opening) > raw.count(closing):
            start += 1
        elif raw.endswith(closing) and raw.count(closing) > raw.count(opening):
            end -= 1
    return start, end


def scrub_phones(text: str, regions: tuple[str, ...], found: dict[str, int]) -> str:
    spans = _phone_spans(text, regions)
    if not spans:
        return text
    pieces, copied_up_to = [], 0
    for start, end in spans:
        pieces += [text[copied_up_to:start], "<PHONE>"]
        copied_up_to = end
    found["PHONE"] = found.get("PHONE", 0) + len(spans)
    return "".join(pieces) + text[copied_up_to:]
