"""Property tests (hypothesis) over the log reader and the scrubber, issue 11's fuzzing: random
bytes, random JSON values at every field path, random nesting. Properties: no exception
escapes (a bad line is a BadLine, never a crash), every line is accounted for
(read = kept + quarantined + backlog + filtered), and no planted secret from a generated list
survives in any file curate writes. Example counts are kept small: the file runs in seconds."""

from __future__ import annotations

import gzip
import io
import json
import random
import string
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import answer, record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.config import PipelineConfig, load_config
from pipelines.records import BadLine, RecordReader, parse_line
from pipelines.scrub import Scrubber
from pipelines.storage import DamagedTail, iter_lines

FIELD_PATHS = ["id", "timestamp", "session_id", "query", "contexts", "contexts.0", "contexts.0.id",
               "contexts.0.text", "contexts.0.score", "response", "model", "feedback", "feedback.rating",
               "feedback.labels", "feedback.labels.0", "feedback.comment", "correction"]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


READER = RecordReader(PipelineConfig())  # the default field map


def _parse(raw: bytes):
    """The property: a record, or BadLine with a reason (and the line for the quarantine)."""
    try:
        return parse_line(READER, raw, len(raw), 1 << 20, "f:1", 1)
    except BadLine as bad:
        assert bad.reason and bad.raw is not None  # the raw line goes to the quarantine
        return None


def _set(obj, path: str, value):
    keys = path.split(".")
    for key in keys[:-1]:
        obj = obj[int(key)] if key.isdigit() else obj.setdefault(key, {})
    last = keys[-1]
    if last.isdigit():
        obj[int(last)] = value
    else:
        obj[last] = value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_are_a_record_or_a_quarantine_reason(raw):
    _parse(raw)


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(FIELD_PATHS), value=JSON)
def test_any_json_value_at_any_field_path_is_a_record_or_a_reason(path, value):
    rec = json.loads(json.dumps(record(rating=-1, labels=["bad_format"], comment="c",
                                       correction=answer("x [refund-policy]", "refund-policy"))))  # a copy
    _set(rec, path, value)
    _parse(json.dumps(rec).encode())


@settings(max_examples=30, deadline=None)
@given(depth=st.integers(1, 3000), opener=st.sampled_from(["[", '{"a":']))
def test_any_nesting_depth_is_a_record_or_a_reason(depth, opener):
    closer = "]" if opener == "[" else "}"
    _parse(('{"query": "q", "contexts": ' + opener * depth + "1" + closer * depth + "}").encode())


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=400), st.booleans())
def test_random_gz_bytes_end_in_lines_or_one_damaged_tail(data, compress):
    payload = gzip.compress(data)[: len(data)] if compress else data  # a cut-short real gzip or noise
    reader = gzip.GzipFile(fileobj=io.BytesIO(payload), mode="rb")
    items = list(iter_lines(reader, 1024))
    assert all(isinstance(raw, (bytes, type(None))) for _, raw, _ in items[:-1])
    numbers = [n for n, _, _ in items]
    assert numbers == list(range(1, len(items) + 1))
    assert sum(isinstance(raw, DamagedTail) for _, raw, _ in items) <= 1


# --------------------------------------------------------------------------- secrets


def _luhn_card(rng: random.Random) -> str:
    digits = [4] + [rng.randrange(10) for _ in range(14)]
    total = sum(d if i % 2 else (2 * d if 2 * d < 10 else 2 * d - 9) for i, d in enumerate(reversed(digits)))
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i:i + 4] for i in range(0, 16, 4))


def _phone(rng: random.Random) -> str:
    import phonenumbers

    region = rng.choice(["US", "GB", "DE", "FR", "IN", "BR", "JP", "AU", "CA"])
    number = phonenumbers.example_number(region)
    style = rng.choice([phonenumbers.PhoneNumberFormat.NATIONAL, phonenumbers.PhoneNumberFormat.INTERNATIONAL])
    return phonenumbers.format_number(number, style)


def _secret(seed: int) -> str:
    rng = random.Random(seed)
    alnum = string.ascii_letters + string.digits
    kind = rng.randrange(7)
    if kind == 0:
        return "".join(rng.choices(string.ascii_lowercase, k=8)) + "@" + "".join(
            rng.choices(string.ascii_lowercase, k=6)) + ".com"
    if kind == 1:
        return "AKIA" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=16))
    if kind == 2:
        return "ghp_" + "".join(rng.choices(alnum, k=36))
    if kind == 3:
        return "sk-" + "".join(rng.choices(alnum, k=32))
    if kind == 4:
        return _luhn_card(rng)
    if kind == 5:
        return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
    return _phone(rng)


WHERE = ["query", "context", "response", "correction", "comment", "broken"]


@pytest.fixture(scope="module")
def curate_project(tiny_tokenizer_dir):
    root = Path(tempfile.mkdtemp(prefix="refit-fuzz-"))
    (root / "logs").mkdir()
    cfg = root / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"base": str(tiny_tokenizer_dir)},
                                   "curate": {"inputs": [str(root / "logs")], "output_dir": str(root / "curated"),
                                              "general_mix": {"path": None}}}))
    return root, load_config(cfg)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plants=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(WHERE)), min_size=1, max_size=8),
       noise=st.lists(st.binary(max_size=60), max_size=5))
def test_curate_accounts_for_every_line_and_no_planted_secret_survives(curate_project, tiny_tokenizer,
                                                                      plants, noise):
    from pipelines.curate import curate

    root, config = curate_project
    lines, secrets = [], []
    for i, (seed, where) in enumerate(plants):
        secret = _secret(seed)
        secrets.append(secret)
        text = f"note {secret} end"
        rec = record(f"Refund after {i} days? {text if where == 'query' else ''}", rating=-1,
                     labels=["bad_format" if i % 2 else "missing_knowledge"],
                     response=text if where == "response" else "Refunds: 30 days.",
                     comment=text if where == "comment" else None,
                     correction=answer(f"Refunds are available within 30 days [refund-policy]. "
                                       f"{text if where == 'correction' else ''}", "refund-policy"))
        if where == "context":
            rec["contexts"][0] = {**rec["contexts"][0], "text": rec["contexts"][0]["text"] + " " + text}
        line = json.dumps(rec).encode()
        lines.append(line[: len(line) // 2] + f" {secret} ".encode() if where == "broken" else line)
    lines += [n.replace(b"\n", b" ") for n in noise]
    (root / "logs" / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = curate(config, force=True, tokenizer=tiny_tokenizer)
    c = result.manifest["counts"]
    assert c["read"] == len(lines)
    assert c["read"] == c["kept"] + c["quarantined"] + c["backlog"] + sum(c["filtered"].values())
    for path in result.path.iterdir():
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} survived in {path.name}"


@settings(max_examples=300, deadline=None)
@given(prefix=st.text(max_size=30), suffix=st.text(max_size=30), seed=st.integers(0, 10**6))
def test_a_generated_secret_between_spaces_never_survives_the_scrubber(prefix, suffix, seed):
    secret = _secret(seed)
    assert secret not in Scrubber().scrub(f"{prefix} {secret} {suffix}")
