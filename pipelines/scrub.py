"""Replace PII and secrets in log text with typed placeholders before anything is written.

Why placeholders, and why typed: a fine-tuning example has to stay a fluent sentence. "Mail
<EMAIL> or call <PHONE>" still teaches the model how such an answer is shaped; blanks or
"[REDACTED]" everywhere would teach it to produce blanks. The type also tells a reviewer what
kind of thing was removed without showing the thing.

Why counts only: the report says how many values of each type were removed
(`Scrubber.counts`), never which ones. A report listing them would be one more copy of exactly
the data we are trying not to keep.

How it stays fast (this runs on every text field of millions of records):
- All built-in detectors are named groups of ONE compiled pattern, so a text is scanned once.
- Every detector is anchored on a "trigger" character it must contain: a digit, one of
  `@ : = _ - + ( /`, or `J K S` (from eyJ, AKIA, ASIA). The pattern starts with that character
  class, which lets CPython's regex engine skip ordinary prose in C instead of trying every
  alternative at every position (about 100x faster on clean English). The part of a value left
  of its trigger ("sk" of "sk-...", the local part of an email) is checked by a fixed-width
  lookbehind and added back to the replaced span in Python. A text with no trigger character
  at all costs one C-level scan, so the fast path for clean text is built into the pattern.
- What a regex cannot confirm is validated in Python only when a candidate occurs: Luhn for
  cards, ISO 13616 mod-97 for IBANs, octet ranges for IPv4, `ipaddress` for IPv6, the E.164
  digit count for international phones. A rejected candidate is not a match: the next
  detector at the same position is tried, then the scan goes on one character later.

Deliberate choices, so nobody "fixes" them by accident:
- Stripe publishable keys (pk_live_/pk_test_) are left alone: they are public by design
  (shipped in web pages) and scrubbing them would only hide harmless text.
- Cards must start with 2-6 (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro).
  That keeps 13-digit millisecond timestamps and other IDs starting with 1, 7, 8, 9 out of the
  Luhn lottery, which one random digit run in ten wins.
- IBANs must be upper case, as banks print them. A mistyped IBAN (bad checksum) is left whole
  rather than having its digit groups reread as a card.
- `key: value` secrets replace the value only and keep the key name, so the sentence still
  says what was there. The key word must end the identifier, which keeps LLM usage fields such
  as `max_tokens=256` and `"total_tokens": 168` intact. At most one space or quote may sit
  between the key and the `:`/`=`.
- A bare `Bearer <token>` is not detected outside an Authorization header ("bearer" is an
  English word); `Authorization: Bearer <token>` is.
- IPv6 needs a digit and, in compressed form, three groups, so Python slices like `x[1::2]`,
  `::1` and C++ names like `std::vector` are not addresses.
- Extra patterns run in a second pass over the already scrubbed text: an arbitrary user regex
  cannot be anchored on the trigger characters, and folding it into the main pattern would make
  every text pay for it at every position. Built-in types therefore always win.
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import re
from typing import Any, NamedTuple

# Every detector below must start its match on one of these characters.
_TRIGGER_CLASS = r"[0-9@:=_\-+(/JKS]"


class _Detector(NamedTuple):
    group: str  # regex group name
    type_name: str  # public type; placeholder is <type_name>
    trigger: str  # key of _TRIGGER_GUARDS: the character the match starts on
    left: int  # characters of the value that sit left of the trigger (checked by lookbehind)
    pattern: str  # matches from just after the trigger character


# Each trigger character leads only to its own detectors, so a digit tries 4 detectors, not 19.
# Ordered by how often the character occurs in prose (digits first): the first guards tried
# are the ones most likely to pass. The digit guard also skips digits inside a number, since
# every number-shaped detector starts on the first digit of its run.
_TRIGGER_GUARDS = {
    "digit": r"(?<=(?<![0-9])[0-9])",
    "-": r"(?<=-)",
    "KS": r"(?<=[KS])",
    "(": r"(?<=\()",
    "J": r"(?<=J)",
    ":=": r"(?<=[:=])",
    "/": r"(?<=/)",
    "_": r"(?<=_)",
    "@": r"(?<=@)",
    "+": r"(?<=\+)",
}


def _secret_key_lookbehind() -> str:
    """Lookbehinds that accept `password: `, `"api_key"=`, `clientSecret :` ... before a : or =.

    Python lookbehinds must be fixed-width, so every (key word, quote/space suffix) spelling is
    listed and grouped by length: one lookbehind per length.
    """
    lower_words = ["passphrase", "password", "passwd", "pwd", "secret", "token", "authorization"]
    for first, second in [("api", "key"), ("secret", "key"), ("access", "key"),
                          ("private", "key"), ("auth", "token")]:
        lower_words += [first + second, f"{first}_{second}", f"{first}-{second}"]
    # camelCase keys: `clientSecret`, `accessToken`, `dbPassword`.
    camel_words = ["Passphrase", "Password", "Passwd", "Secret", "Token", "SecretKey", "ApiKey",
                   "AccessKey", "PrivateKey", "AuthToken"]
    suffixes = ["", '"', "'", '\\"', "\\'", " ", '" ', "' ", "\t"]
    lower_by_width: dict[int, list[str]] = collections.defaultdict(list)
    camel_by_width: dict[int, list[str]] = collections.defaultdict(list)
    for words, by_width in ((lower_words, lower_by_width), (camel_words, camel_by_width)):
        for word in words:
            for suffix in suffixes:
                by_width[len(word) + len(suffix)].append(re.escape(word + suffix))
    lookbehinds = [
        rf"(?<=(?<![A-Za-z0-9])(?i:{'|'.join(spellings)})[:=])"
        for _, spellings in sorted(lower_by_width.items())
    ] + [
        rf"(?<=(?<=[a-z0-9])(?:{'|'.join(spellings)})[:=])"
        for _, spellings in sorted(camel_by_width.items())
    ]
    # Cheap first filter on the last three letters of the key word (password -> "ord"), with
    # the suffix forms grouped by width. Nearly every other `:` or `=` (JSON keys, "x = 3")
    # fails here, before the long list above is tried.
    endings = sorted({word[-3:].lower() for word in lower_words + camel_words})
    ending = f"(?i:{'|'.join(endings)})"
    quick_filter = (
        rf"(?:(?<={ending}[:=])|(?<={ending}[\"' \t][:=])|(?<={ending}(?:\\[\"']|[\"'] )[:=]))"
    )
    return quick_filter + "(?:" + "|".join(lookbehinds) + ")"


_SECRET_VALUE = (
    r"(?:(?<=:)=|(?<==)>)?[ \t]*"  # := and => assignments
    r"(?:\\\"(?P<secret_escaped>[^\"\\\n]+)\\\""  # JSON inside JSON: \"password\": \"x\"
    r"|\"(?P<secret_dquoted>(?:[^\"\\\n]|\\.)+)\""
    r"|'(?P<secret_squoted>[^'\n]+)'"
    # A bare value keeps an HTTP auth scheme word (`Authorization: Bearer <SECRET>`). A PEM
    # block is left to PRIVATE_KEY, which takes the whole block instead of its first word.
    # The placeholder alternative lets an already scrubbed value be recognised and kept.
    r"|(?:(?i:bearer|basic|token|digest)[ \t]+)?(?!-----BEGIN)"
    r"(?P<secret_bare><[A-Z][A-Z0-9_]*>|[^\s\"'`,;&]*[^\s\"'`,;&.)\]}])"
    r")"
)

_BUILTIN_DETECTORS: tuple[_Detector, ...] = (
    _Detector("PRIVATE_KEY", "PRIVATE_KEY", "-", 0,
              r"(?<=-)----BEGIN[ A-Z0-9]*PRIVATE KEY-----"
              # Up to the END line; a truncated log has none, so then take the base64 body that
              # follows (JSON-escaped "\n" included) rather than leak it.
              r"(?:[\s\S]*?-----END[ A-Z0-9]*PRIVATE KEY-----|[A-Za-z0-9+/=\s\\]*)"),
    _Detector("JWT", "JWT", "J", 2,
              r"(?<=(?<![A-Za-z0-9_-])eyJ)[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
    _Detector("AWS_KEY_ID", "AWS_KEY", "KS", 1,
              r"(?<=(?<![A-Za-z0-9])A[KS])IA[A-Z0-9]{16}(?![A-Za-z0-9])"),
    _Detector("GITHUB_TOKEN", "GITHUB_TOKEN", "_", 3,
              r"(?<=(?<![A-Za-z0-9_])gh[pousr]_)[A-Za-z0-9]{36,}"),
    _Detector("GITHUB_PAT", "GITHUB_TOKEN", "_", 6,
              r"(?<=(?<![A-Za-z0-9_])github_)pat_[A-Za-z0-9_]{22,}"),
    _Detector("SLACK_TOKEN", "SLACK_TOKEN", "-", 4,
              r"(?<=(?<![A-Za-z0-9])xox[bpars]-)[A-Za-z0-9-]{10,}"),
    # left=15 is "hooks.slack.com"; an http(s):// before it is added in Python.
    _Detector("SLACK_WEBHOOK", "SLACK_TOKEN", "/", 15,
              r"(?<=(?<![A-Za-z0-9.-])hooks\.slack\.com/)services/[A-Za-z0-9_/-]+"),
    _Detector("STRIPE_KEY", "STRIPE_KEY", "_", 2,
              r"(?<=(?<![A-Za-z0-9_])[sr]k_)(?:live|test)_[A-Za-z0-9]{16,}"),
    _Detector("OPENAI_KEY", "OPENAI_KEY", "-", 2,  # covers sk-proj-
              r"(?<=(?<![A-Za-z0-9_-])sk-)[A-Za-z0-9_-]{20,}"),
    # https://user:<SECRET>@host
    _Detector("URL_PASSWORD", "SECRET", ":=", 0,
              r"(?<=:)//[^\s:/@\"'<>]+:(?P<url_password>[^\s/@\"'<>]+)@"),
    _Detector("SECRET_ASSIGNMENT", "SECRET", ":=", 0, _secret_key_lookbehind() + _SECRET_VALUE),
    # Anchored on '@'; the local part is taken back in Python (it has no fixed width).
    _Detector("EMAIL", "EMAIL", "@", 0,
              r"(?<=[A-Za-z0-9_%+-]@)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
              r"(?![A-Za-z0-9-])"),
    # Anchored on the first check digit: country code (2 letters, lookbehind) + 2 check digits +
    # 11..30 alphanumerics, optionally printed in groups of four.
    _Detector("IBAN", "IBAN", "digit", 2,
              r"(?<=(?<![A-Za-z0-9])[A-Z]{2}[0-9])[0-9](?:[ ]?[A-Z0-9]{4}){2,7}"
              r"(?:[ ]?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
    # Not after a letter (v1.2.3.4) and not inside a longer dotted number (1.2.3.4.5).
    _Detector("IPV4", "IP", "digit", 0,
              r"(?<=(?<![\w.])[0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![\w]|\.[0-9])"),
    # US phones need separators, so a bare 10-digit number, a year or an order number is not one.
    _Detector("PHONE_US_PAREN", "PHONE", "(", 0,
              r"(?<=(?<![\w+.])\()[0-9]{3}\)[ ]?[0-9]{3}[ .-][0-9]{4}(?![\w]|[.-][0-9])"),
    _Detector("PHONE_US", "PHONE", "digit", 0,
              r"(?<=(?<![\w+.])[0-9])(?:(?<=1)[ .-][0-9]{3}[ .-]|[0-9]{2}[ .-])"
              r"[0-9]{3}[ .-][0-9]{4}(?![\w]|[.-][0-9])"),
    # International phones need a leading +; the digit count is checked in Python. Possessive
    # digit runs keep a near-miss from backtracking through every way of splitting the digits.
    _Detector("PHONE_INTL", "PHONE", "+", 0,
              r"(?<=(?<![\w+])\+)[1-9][0-9]{0,3}+(?:[ .-]?\([0-9]{1,4}\))?"
              r"(?:[ .-]?[0-9]{1,6}+){1,6}(?![\w]|[.-][0-9])"),
    # After the phones: at the same start a phone is the better reading. 13..19 digits with
    # optional single spaces or dashes, never cut out of a longer digit string (but a run of
    # groups may end early: "4111 1111 1111 1111 2010"); Luhn is checked in Python.
    _Detector("CARD", "CARD", "digit", 0,
              r"(?<=(?<!\w)[2-6])(?:[ -]?[0-9]){12,18}(?![0-9])"),
    # Anchored on the first ':'; up to 4 hex digits before it are taken back in Python, and
    # `ipaddress` decides. The dotted tail covers ::ffff:192.0.2.1.
    _Detector("IPV6", "IP", ":=", 0,
              r"(?<=:)(?:[0-9A-Fa-f]{0,4}:){1,6}"
              r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.[0-9])"),
)

_DETECTOR_BY_GROUP = {detector.group: detector for detector in _BUILTIN_DETECTORS}

# Detectors whose match is `key: value`; only the value group is replaced.
_VALUE_GROUPS = {
    "URL_PASSWORD": ("url_password",),
    "SECRET_ASSIGNMENT": ("secret_escaped", "secret_dquoted", "secret_squoted", "secret_bare"),
}

# A generic `key: value` whose value is itself a known secret is counted as that secret.
_SPECIFIC_SECRET_TYPES = frozenset(
    {"PRIVATE_KEY", "JWT", "AWS_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "STRIPE_KEY", "OPENAI_KEY"}
)
_AWS_SECRET_VALUE_RE = re.compile(r"[A-Za-z0-9/+]{40}")
_EMAIL_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")


def _compile_detectors(detectors: tuple[_Detector, ...]) -> re.Pattern[str]:
    dispatch = []
    for trigger, guard in _TRIGGER_GUARDS.items():
        alternatives = [f"(?P<{d.group}>{d.pattern})" for d in detectors if d.trigger == trigger]
        if alternatives:
            dispatch.append(f"{guard}(?:{'|'.join(alternatives)})")
    return re.compile(f"{_TRIGGER_CLASS}(?:{'|'.join(dispatch)})")


_DETECTOR_RE = _compile_detectors(_BUILTIN_DETECTORS)


@functools.cache
def _detectors_after(group: str) -> re.Pattern[str] | None:
    """The alternation of the detectors after `group`, to retry at a position it was rejected."""
    index = next(i for i, d in enumerate(_BUILTIN_DETECTORS) if d.group == group)
    rest = _BUILTIN_DETECTORS[index + 1 :]
    return _compile_detectors(rest) if rest else None


# --- validators: run only on candidates -----------------------------------------------------

def _luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position & 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    # int(c, 36) maps 0-9 to 0-9 and A-Z to 10-35: exactly the ISO 13616 letter values.
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _longest_valid_prefix(candidate: str, separators: str, is_valid) -> int | None:
    """Length of the longest prefix of `candidate`, cut at a separator, that `is_valid` accepts.

    A card or IBAN is often followed by more digits (an expiry date "4111 ... 1111 12/26", a
    year); the maximal run then fails the checksum although its first groups pass.
    """
    cut = len(candidate)
    while cut > 0:
        if is_valid(candidate[:cut]):
            return cut
        cut = max(candidate.rfind(separator, 0, cut) for separator in separators)
    return None


def _card_ok(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _ipv4_ok(candidate: str) -> bool:
    return all(int(octet) <= 255 for octet in candidate.split("."))


def _ipv6_ok(candidate: str) -> bool:
    if not any(char.isdigit() for char in candidate):
        return False
    if "::" in candidate and len([part for part in re.split(r"[:.]", candidate) if part]) < 3:
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _phone_intl_ok(candidate: str) -> bool:
    return 8 <= sum(char.isdigit() for char in candidate) <= 15


# --- the scan --------------------------------------------------------------------------------

def _accept(match: re.Match[str], text: str, floor: int) -> tuple[int, int, str, int] | None:
    """(start, end, type, resume) for this candidate, or None if it is rejected.

    start:end is the text to replace, `resume` where the scan continues: the end of a
    `key: value` match (its closing quote or '@' is not the start of anything), else `end` (the
    digits after a card's valid prefix are scanned again).

    `match` starts at the trigger character; `floor` is where the last replacement ended (a
    value never reaches back into text already replaced).
    """
    group = match.lastgroup
    detector = _DETECTOR_BY_GROUP[group]
    start = max(floor, match.start() - detector.left)
    end = resume = match.end()
    type_name = detector.type_name

    if group in _VALUE_GROUPS:
        value_group = next(name for name in _VALUE_GROUPS[group] if match.group(name) is not None)
        start, end = match.span(value_group)
        value = text[start:end]
        if value.startswith("<") and _is_placeholder(value):
            return None
        type_name = _secret_value_type(value, text[max(0, match.start() - 40) : match.start()])
    elif group == "EMAIL":
        while start > floor and text[start - 1] in _EMAIL_LOCAL_CHARS:
            start -= 1
        while text[start] == ".":  # "...john@x.com": the ellipsis is not part of the address
            start += 1
    elif group == "SLACK_WEBHOOK":
        for scheme in ("https://", "http://"):
            if text.endswith(scheme, floor, start):
                start -= len(scheme)
                break
    elif group == "IPV6":
        while start > floor and text[start - 1] in _HEX_CHARS and match.start() - start < 4:
            start -= 1
        before = text[start - 1] if start > 0 else " "
        if before.isalnum() or before in "_:." or not _ipv6_ok(text[start:end]):
            return None
    elif group == "CARD":
        length = _longest_valid_prefix(text[start:end], " -", _card_ok)
        if length is None:
            return None
        end = resume = start + length
    elif group == "IBAN":
        length = _longest_valid_prefix(text[start:end], " ", lambda c: _iban_ok(c.replace(" ", "")))
        if length is None:
            return None
        end = resume = start + length
    elif group == "IPV4":
        if not _ipv4_ok(text[start:end]):
            return None
    elif group == "PHONE_INTL":
        if not _phone_intl_ok(text[start:end]):
            return None
    return start, end, type_name, resume


def _is_placeholder(value: str) -> bool:
    return re.fullmatch(r"<[A-Z][A-Z0-9_]*>", value) is not None


def _secret_value_type(value: str, key_context: str) -> str:
    """SECRET, unless the value is a known secret (`api_key = sk-...` is an OPENAI_KEY)."""
    if _AWS_SECRET_VALUE_RE.fullmatch(value):
        key_letters = re.sub(r"[^a-z]", "", key_context.lower())
        if key_letters.endswith(("awssecretaccesskey", "awssecretkey")):
            return "AWS_KEY"
    scrubbed, found = _scrub_builtin(value, _search_detectors(value))
    if len(found) == 1:
        (only_type,) = found
        if only_type in _SPECIFIC_SECRET_TYPES and scrubbed == f"<{only_type}>":
            return only_type
    return "SECRET"


_search_detectors = _DETECTOR_RE.search


def _scrub_builtin(text: str, match: re.Match[str] | None) -> tuple[str, dict[str, int]]:
    """Scrub `text` with the built-in detectors; `match` is `_search_detectors(text)`."""
    found: dict[str, int] = {}
    if match is None:
        return text, found
    search = _search_detectors
    pieces: list[str] = []
    copied_up_to = 0
    while match is not None:
        accepted = _accept(match, text, copied_up_to)
        rejected_iban_end = match.end() if match.lastgroup == "IBAN" else None
        while accepted is None:
            retry = _detectors_after(match.lastgroup)
            retried = retry.match(text, match.start()) if retry is not None else None
            if retried is None:
                break
            match = retried
            accepted = _accept(match, text, copied_up_to)
        if accepted is None:
            # A mistyped IBAN is one token: do not reread its digit groups as a card.
            match = search(text, rejected_iban_end or match.start() + 1)
            continue
        start, end, type_name, resume = accepted
        pieces.append(text[copied_up_to:start])
        pieces.append(f"<{type_name}>")
        found[type_name] = found.get(type_name, 0) + 1
        copied_up_to = end
        match = search(text, resume)
    if not found:
        return text, found
    pieces.append(text[copied_up_to:])
    return "".join(pieces), found


class Scrubber:
    """Replaces PII and secrets with `<TYPE>` placeholders and counts them per type.

    `counts` accumulates over every `scrub()` / `scrub_value()` call; `scrub_counted()` leaves it
    alone, so callers that cache results per distinct text add the returned counts themselves.
    """

    def __init__(self, extra_patterns: dict[str, str] | None = None):
        """extra_patterns: {"EMPLOYEE_ID": r"EMP-\\d{6}"} -> placeholder <EMPLOYEE_ID>.

        They run after the built-in types, over text those have already scrubbed. An invalid
        regex, or one that matches the empty string (it would put a placeholder between every
        two characters), raises ValueError naming the pattern.
        """
        self.counts: collections.Counter[str] = collections.Counter()
        self._extra_type_of_group: dict[str, str] = {}
        alternatives = []
        for index, (type_name, pattern) in enumerate((extra_patterns or {}).items()):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", type_name):
                raise ValueError(
                    f"extra pattern name {type_name!r} must be letters, digits and underscores"
                )
            try:
                compiled = re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"extra pattern {type_name!r} ({pattern!r}) is not a valid regex: {error}"
                ) from None
            if compiled.fullmatch("") is not None:
                raise ValueError(f"extra pattern {type_name!r} ({pattern!r}) matches the empty string")
            group = f"extra_{index}"
            self._extra_type_of_group[group] = type_name
            alternatives.append(f"(?P<{group}>{pattern})")
        self._extra_re: re.Pattern[str] | None = None
        if alternatives:
            try:
                self._extra_re = re.compile("|".join(alternatives))
            except re.error as error:
                # Each compiles alone, so this is a clash between them, e.g. one reuses a group
                # name of another or a numbered backreference that combining renumbers.
                raise ValueError(
                    f"extra patterns {sorted(extra_patterns)} cannot be combined: {error}"
                ) from None

    # scrub and scrub_counted test for the common case (nothing found) before any other call:
    # on short texts the Python call overhead costs more than the scan itself.

    def scrub(self, text: str) -> str:
        first_match = _search_detectors(text)
        if first_match is None and self._extra_re is None:
            return text
        scrubbed, found = self._scrub(text, first_match)
        if found:
            self.counts.update(found)
        return scrubbed

    def scrub_counted(self, text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
        """Pure: (scrubbed text, ((type, count), ...) sorted by type); `counts` is untouched."""
        first_match = _search_detectors(text)
        if first_match is None and self._extra_re is None:
            return text, ()
        scrubbed, found = self._scrub(text, first_match)
        return scrubbed, tuple(sorted(found.items()))

    def scrub_value(self, obj: Any) -> Any:
        """Scrubs every str inside nested dicts/lists/tuples (keys untouched); returns a new object."""
        if isinstance(obj, str):
            return self.scrub(obj)
        if isinstance(obj, dict):
            return {key: self.scrub_value(value) for key, value in obj.items()}
        if isinstance(obj, list):
            return [self.scrub_value(item) for item in obj]
        if isinstance(obj, tuple):
            return tuple(self.scrub_value(item) for item in obj)
        return obj

    def _scrub(self, text: str, first_match: re.Match[str] | None) -> tuple[str, dict[str, int]]:
        scrubbed, found = _scrub_builtin(text, first_match)
        if self._extra_re is not None:
            scrubbed = self._extra_re.sub(lambda match: self._replace_extra(match, found), scrubbed)
        return scrubbed, found

    def _replace_extra(self, match: re.Match[str], found: dict[str, int]) -> str:
        if not match.group():  # a pattern that matches empty only in some contexts
            return ""
        type_name = self._extra_type_of_group[match.lastgroup]
        found[type_name] = found.get(type_name, 0) + 1
        return f"<{type_name}>"
