"""FROZEN REFERENCE for scripts/bench_curate.py, not used by refit: pipelines/scrub.py as it was
before issue 11, when phones were three hand-written regexes (US 3-3-4 and a leading +). The
benchmark measures the new scrubber against this one in the same run.

Replace PII and secrets in log text with typed placeholders before anything is written.

Why placeholders, and why typed: a fine-tuning example has to stay a fluent sentence. "Mail
<EMAIL> or call <PHONE>" still teaches the model how such an answer is shaped; blanks or
"[REDACTED]" everywhere would teach it to produce blanks. The type also tells a reviewer what
kind of thing was removed without showing the thing.

Why counts only: the report says how many values of each type were removed
(`Scrubber.counts`), never which ones. A report listing them would be one more copy of exactly
the data we are trying not to keep.

How it stays fast (this runs on every text field of millions of records):
- Every detector is anchored on a "trigger" character its value must contain: a digit, one of
  `@ : = _ - + ( /`, or `J K S` (from eyJ, AKIA, ASIA). The part of a value left of its
  trigger ("sk" of "sk-...", the local part of an email) is checked by a fixed-width
  lookbehind and added back to the replaced span in Python.
- All detectors are combined into ONE finder pattern, a branch of `<trigger char>(...)`
  alternatives. CPython's regex engine recognises a pattern that must start with one of a set
  of characters and then skips ordinary prose in C; at a trigger it enters only that
  character's alternative. The textbook alternation of named groups tries every alternative
  at every position instead: measured on SQuAD prose, about 1.5 MB/s against about 80 MB/s.
  Named groups cannot be repeated, so the finder has none: at the rare position where it hits,
  the named detectors for that character are tried in priority order to say which one it is.
- A text with no trigger character costs one C-level scan: that is the fast path, and it is
  built into the finder rather than being a second check.
- What a regex cannot confirm is validated in Python only when a candidate occurs: Luhn for
  cards, ISO 13616 mod-97 for IBANs, octet ranges for IPv4, `ipaddress` for IPv6, the E.164
  digit count for international phones. A rejected candidate is not a match: the next detector
  at the same position is tried, then the scan goes on one character later.

Deliberate choices, so nobody "fixes" them by accident:
- Stripe publishable keys (pk_live_/pk_test_) are left alone: they are public by design
  (shipped in web pages) and scrubbing them would only hide harmless text.
- Cards must start with 2-6 (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro)
  and with at least two digits before any separator. That keeps 13-digit millisecond
  timestamps and other IDs starting with 1, 7, 8, 9 out of the Luhn lottery, which one random
  digit run in ten wins.
- IBANs must be upper case, as banks print them. A run failing mod-97 is not an IBAN, but its
  digit groups are still scanned: "AB12 4111 1111 1111 1111" is a code followed by a card. So
  a mistyped IBAN whose digits happen to pass Luhn is scrubbed as a card; for a bank account
  number, over-scrubbing is the safe direction.
- `key: value` secrets replace the value only and keep the key name, so the sentence still
  says what was there. The key word must end the identifier, which keeps LLM usage fields such
  as `max_tokens=256` and `"total_tokens": 168` intact. At most one space or quote may sit
  between the key and the `:`/`=`.
- A bare `Bearer <token>` is not detected outside an Authorization header ("bearer" is an
  English word); `Authorization: Bearer <token>` is.
- IPv6 needs a digit and, in compressed form, three groups, so Python slices like `x[1::2]`,
  `::1` and C++ names like `std::vector` are not addresses.
- Extra patterns run in a second pass over the already scrubbed text: an arbitrary user regex
  cannot be anchored on the trigger characters, and folding it into the finder would make every
  text pay for it at every position. Built-in types therefore always win.
"""

from __future__ import annotations

import collections
import ipaddress
import re
from typing import Any, NamedTuple


class _Detector(NamedTuple):
    group: str  # name of this detector (several may share a type)
    type_name: str  # public type; the placeholder is <type_name>
    triggers: str  # the characters its match can start on
    left: int  # characters of the value left of the trigger (checked by a lookbehind)
    pattern: str  # matches from just after the trigger character
    prefilter: str = ""  # a cheap condition shared by a family of detectors


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
    # Cheap filters first, so nearly every other `:` or `=` (JSON keys, "3 + 4 = 7") is
    # rejected before the long list above is tried: the character before it, then the last
    # three letters of the key word (password -> "ord") with the suffix forms grouped by width.
    last_chars = sorted({word[-1] for word in lower_words + camel_words} | set("\"' \t"))
    last_chars += sorted({char.upper() for char in last_chars if char.isalpha()})
    endings = sorted({word[-3:].lower() for word in lower_words + camel_words})
    ending = f"(?i:{'|'.join(endings)})"
    quick_filter = (
        f"(?<=[{re.escape(''.join(last_chars))}][:=])"
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

# The first digit of a number (not after a letter, digit or '_') followed by at least the shape
# of an IPv4, a US phone or a card. In number-heavy text ("16 - 3 = 13", years, prices) almost
# every digit stops here, before any of the three detectors is tried.
_NUMBER_PREFILTER = (
    r"(?<=(?<!\w)[0-9])"
    r"(?=[0-9]{0,2}\.[0-9]|[0-9]{2}[ .-][0-9]|(?<=1)[ .-][0-9]|[0-9](?:[ -]?[0-9]){11})"
)
_DIGITS = "0123456789"

# In priority order: where two detectors can match at the same character, the first wins
# (specific secrets before the generic `key: value`, phones before cards).
_BUILTIN_DETECTORS: tuple[_Detector, ...] = (
    _Detector("PRIVATE_KEY", "PRIVATE_KEY", "-", 0,
              r"----BEGIN[ A-Z0-9]*PRIVATE KEY-----"
              # The body: base64, whitespace, JSON-escaped "\n", and the header lines of
              # encrypted keys (Proc-Type: 4,ENCRYPTED / DEK-Info: AES-128-CBC,...), up to the
              # next "-----". Possessive, so the cost is linear however the text looks. Then the
              # END line, which a truncated log may lack: the body is removed all the same.
              r"(?:[A-Za-z0-9+/=\s\\:,.]|-(?!----))*+(?:-----END[ A-Z0-9]*PRIVATE KEY-----)?"),
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
    _Detector("URL_PASSWORD", "SECRET", ":", 0,
              r"//[^\s:/@\"'<>]+:(?P<url_password>[^\s/@\"'<>]+)@"),
    _Detector("SECRET_ASSIGNMENT", "SECRET", ":=", 0, _secret_key_lookbehind() + _SECRET_VALUE),
    # Anchored on '@'; the local part is taken back in Python (it has no fixed width).
    _Detector("EMAIL", "EMAIL", "@", 0,
              r"(?<=[A-Za-z0-9_%+-]@)[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
              r"(?![A-Za-z0-9-])"),
    # Anchored on the first check digit: country code (2 letters, lookbehind) + 2 check digits +
    # 11..30 alphanumerics, optionally printed in groups of four.
    _Detector("IBAN", "IBAN", _DIGITS, 2,
              r"(?<=(?<![A-Za-z0-9])[A-Z]{2}[0-9])[0-9](?:[ ]?[A-Z0-9]{4}){2,7}"
              r"(?:[ ]?[A-Z0-9]{1,3})?(?![A-Za-z0-9])"),
    # Not after a letter (v1.2.3.4) and not inside a longer dotted number (1.2.3.4.5).
    _Detector("IPV4", "IP", _DIGITS, 0,
              r"(?<!\.[0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![\w]|\.[0-9])", _NUMBER_PREFILTER),
    # US phones need separators, so a bare 10-digit number, a year or an order number is not one.
    _Detector("PHONE_US_PAREN", "PHONE", "(", 0,
              r"(?<=(?<![\w+.])\()[0-9]{3}\)[ ]?[0-9]{3}[ .-][0-9]{4}(?![\w]|[.-][0-9])"),
    _Detector("PHONE_US", "PHONE", _DIGITS, 0,
              r"(?<![+.][0-9])(?:(?<=1)[ .-][0-9]{3}[ .-]|[0-9]{2}[ .-])"
              r"[0-9]{3}[ .-][0-9]{4}(?![\w]|[.-][0-9])", _NUMBER_PREFILTER),
    # International phones need a leading +; the digit count is checked in Python. Possessive
    # digit runs keep a near-miss from backtracking through every way of splitting the digits.
    _Detector("PHONE_INTL", "PHONE", "+", 0,
              r"(?<=(?<![\w+])\+)[1-9][0-9]{0,3}+(?:[ .-]?\([0-9]{1,4}\))?"
              r"(?:[ .-]?[0-9]{1,6}+){1,6}(?![\w]|[.-][0-9])"),
    # After the phones: at the same start a phone is the better reading. 13..19 digits with
    # optional single spaces or dashes, never cut out of a longer digit string (but a run of
    # groups may end early: "4111 1111 1111 1111 2010"); Luhn is checked in Python.
    _Detector("CARD", "CARD", "23456", 0,
              r"[0-9](?:[ -]?[0-9]){11,17}(?![0-9])", _NUMBER_PREFILTER),
    # Anchored on the first ':'; up to 4 hex digits before it are taken back in Python, and
    # `ipaddress` decides. The dotted tail covers ::ffff:192.0.2.1.
    _Detector("IPV6", "IP", ":", 0,
              r"(?:[0-9A-Fa-f]{0,4}:){1,6}"
              r"(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.[0-9])"),
)

# Detectors whose match is `key: value`; only the value group is replaced.
_VALUE_GROUPS = {
    "URL_PASSWORD": ("url_password",),
    "SECRET_ASSIGNMENT": ("secret_escaped", "secret_dquoted", "secret_squoted", "secret_bare"),
}


def _without_group_names(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


def _compile_finder(detectors: tuple[_Detector, ...]) -> re.Pattern[str]:
    """`c1(?:...)|c2(?:...)|...`: one literal-led alternative per trigger character.

    Only a branch whose every alternative starts with a literal character gets CPython's
    "must start with one of these characters" scan, hence digits as ten alternatives rather
    than one [0-9]. Consecutive detectors sharing a prefilter are grouped behind it, so it is
    evaluated once.
    """
    alternatives = []
    triggers = dict.fromkeys(char for detector in detectors for char in detector.triggers)
    for char in triggers:
        families: list[tuple[str, list[str]]] = []
        for detector in detectors:
            if char not in detector.triggers:
                continue
            if families and families[-1][0] == detector.prefilter:
                families[-1][1].append(_without_group_names(detector.pattern))
            else:
                families.append((detector.prefilter, [_without_group_names(detector.pattern)]))
        body = "|".join(f"{prefilter}(?:{'|'.join(patterns)})" for prefilter, patterns in families)
        alternatives.append(f"{re.escape(char)}(?:{body})")
    return re.compile("|".join(alternatives))


_find_candidate = _compile_finder(_BUILTIN_DETECTORS).search

# For each trigger character, its detectors in priority order, each compiled on its own (with
# its named value groups) to identify a candidate the finder reported.
_DETECTORS_BY_TRIGGER: dict[str, list[tuple[_Detector, re.Pattern[str]]]] = {}
for _detector in _BUILTIN_DETECTORS:
    _compiled = re.compile(
        f"[{re.escape(_detector.triggers)}]{_detector.prefilter}(?:{_detector.pattern})"
    )
    for _char in _detector.triggers:
        _DETECTORS_BY_TRIGGER.setdefault(_char, []).append((_detector, _compiled))
del _detector, _compiled, _char

# A `key: value` whose value is itself a known secret is counted as that secret.
_SPECIFIC_SECRET_TYPES = frozenset(
    {"PRIVATE_KEY", "JWT", "AWS_KEY", "GITHUB_TOKEN", "SLACK_TOKEN", "STRIPE_KEY", "OPENAI_KEY"}
)
_AWS_SECRET_VALUE_RE = re.compile(r"[A-Za-z0-9/+]{40}")
_PLACEHOLDER_RE = re.compile(r"<[A-Z][A-Z0-9_]*>")
_EMAIL_LOCAL_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-"
)
_HEX_CHARS = frozenset("0123456789abcdefABCDEF")


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


# ISO 13616 letter values: A=10 ... Z=35 (digits stand for themselves).
_IBAN_LETTER_VALUES = str.maketrans({chr(ord("A") + i): str(10 + i) for i in range(26)})


def _iban_ok(compact: str) -> bool:
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int(rearranged.translate(_IBAN_LETTER_VALUES)) % 97 == 1


def _card_ok(candidate: str) -> bool:
    digits = candidate.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and _luhn_ok(digits)


def _longest_valid_prefix(
    candidate: str, separators: str, min_length: int, is_valid
) -> int | None:
    """Length of the longest prefix of `candidate`, cut at a separator, that `is_valid` accepts.

    A card or IBAN is often followed by more digits (an expiry date "4111 ... 1111 12/26", a
    year); the whole run then fails its checksum although its first groups pass. Prefixes
    shorter than `min_length` characters cannot be valid and are not tried.
    """
    cut = len(candidate)
    while cut >= min_length:
        if is_valid(candidate[:cut]):
            return cut
        cut = max(candidate.rfind(separator, 0, cut) for separator in separators)
    return None


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

def _accept(
    detector: _Detector, match: re.Match[str], text: str, floor: int, inside_value: bool
) -> tuple[int, int, str, int] | None:
    """(start, end, type, resume) for this candidate, or None if validation rejects it.

    `match` starts at the trigger character; start:end is the text to replace; `resume` is where
    the scan continues: the end of a `key: value` match (its closing quote or '@' starts
    nothing), else `end` (the digits after a card's valid prefix are scanned again). `floor` is
    where the last replacement ended: a value never reaches back into replaced text.
    `inside_value`: this text is itself a `key: value` value being classified; its own values
    are not classified again (one level is enough, and "a=a=a=..." must not recurse).
    """
    group = detector.group
    start = max(floor, match.start() - detector.left)
    end = resume = match.end()
    type_name = detector.type_name

    if group in _VALUE_GROUPS:
        value_group = next(name for name in _VALUE_GROUPS[group] if match.group(name) is not None)
        start, end = match.span(value_group)
        value = text[start:end]
        if _PLACEHOLDER_RE.fullmatch(value):
            return None
        if not inside_value:
            type_name = _secret_value_type(value, text[max(0, match.start() - 40) : match.start()])
    elif group == "EMAIL":
        while start > floor and text[start - 1] in _EMAIL_LOCAL_CHARS:
            start -= 1
        # A local part has no "..": in "see...john@x.com" the address starts after the dots.
        last_double_dot = text.rfind("..", start, match.start())
        if last_double_dot >= 0:
            start = last_double_dot + 2
        while text[start] == ".":
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
        length = _longest_valid_prefix(text[start:end], " -", 13, _card_ok)
        if length is None:
            return None
        end = resume = start + length
    elif group == "IBAN":
        length = _longest_valid_prefix(
            text[start:end], " ", 15, lambda candidate: _iban_ok(candidate.replace(" ", ""))
        )
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


def _secret_value_type(value: str, key_context: str) -> str:
    """SECRET, unless the value is a known secret (`api_key = sk-...` is an OPENAI_KEY)."""
    if _AWS_SECRET_VALUE_RE.fullmatch(value):
        key_letters = re.sub(r"[^a-z]", "", key_context.lower())
        if key_letters.endswith(("awssecretaccesskey", "awssecretkey")):
            return "AWS_KEY"
    scrubbed, found = _scrub_builtin(value, _find_candidate(value), inside_value=True)
    if len(found) == 1:
        (only_type,) = found
        if only_type in _SPECIFIC_SECRET_TYPES and scrubbed == f"<{only_type}>":
            return only_type
    return "SECRET"


def _scrub_builtin(
    text: str, candidate: re.Match[str] | None, inside_value: bool = False
) -> tuple[str, dict[str, int]]:
    """Scrub `text` with the built-in detectors; `candidate` is `_find_candidate(text)`."""
    found: dict[str, int] = {}
    pieces: list[str] = []
    copied_up_to = 0
    while candidate is not None:
        position = candidate.start()
        accepted = None
        for detector, compiled in _DETECTORS_BY_TRIGGER[text[position]]:
            match = compiled.match(text, position)
            if match is None:
                continue
            accepted = _accept(detector, match, text, copied_up_to, inside_value)
            if accepted is not None:
                break
        if accepted is None:
            # Also after a rejected IBAN-shaped run: "AB12 4111 1111 1111 1111" is a code and a
            # card, and skipping the whole run would leak the card.
            candidate = _find_candidate(text, position + 1)
            continue
        start, end, type_name, resume = accepted
        pieces.append(text[copied_up_to:start])
        pieces.append(f"<{type_name}>")
        found[type_name] = found.get(type_name, 0) + 1
        copied_up_to = end
        candidate = _find_candidate(text, resume)
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
                raise ValueError(
                    f"extra pattern {type_name!r} ({pattern!r}) matches the empty string"
                )
            group = f"extra_{index}"
            self._extra_type_of_group[group] = type_name
            alternatives.append(f"(?P<{group}>{pattern})")
        self._extra_re: re.Pattern[str] | None = None
        if alternatives:
            try:
                self._extra_re = re.compile("|".join(alternatives))
            except re.error as error:
                # Each compiles alone, so this is a clash between them, e.g. two define the same
                # group name, or a numbered backreference that combining renumbers.
                raise ValueError(
                    f"extra patterns {sorted(extra_patterns)} cannot be combined: {error}"
                ) from None

    # scrub and scrub_counted test for the common case (nothing found) before any other call:
    # on short texts the Python call overhead costs more than the scan itself.

    def scrub(self, text: str) -> str:
        candidate = _find_candidate(text)
        if candidate is None and self._extra_re is None:
            return text
        scrubbed, found = self._scrub(text, candidate)
        if found:
            self.counts.update(found)
        return scrubbed

    def scrub_counted(self, text: str) -> tuple[str, tuple[tuple[str, int], ...]]:
        """Pure: (scrubbed text, ((type, count), ...) sorted by type); `counts` is untouched."""
        candidate = _find_candidate(text)
        if candidate is None and self._extra_re is None:
            return text, ()
        scrubbed, found = self._scrub(text, candidate)
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

    def _scrub(self, text: str, candidate: re.Match[str] | None) -> tuple[str, dict[str, int]]:
        scrubbed, found = _scrub_builtin(text, candidate)
        if self._extra_re is not None:
            scrubbed = self._extra_re.sub(lambda match: self._replace_extra(match, found), scrubbed)
        return scrubbed, found

    def _replace_extra(self, match: re.Match[str], found: dict[str, int]) -> str:
        if not match.group():  # a pattern that matches empty only in some contexts
            return ""
        type_name = self._extra_type_of_group[match.lastgroup]
        found[type_name] = found.get(type_name, 0) + 1
        return f"<{type_name}>"
