"""Issue 11, items 3 and 4: phone numbers of every default region are found by libphonenumber
(`phonenumbers`), in national and international formats; version numbers and prose after a
key word are not secrets; real text (SQuAD, GSM8K) gets no replacement at all."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from pipelines.scrub import DEFAULT_PHONE_REGIONS, Scrubber

# region -> (national format, international format)
PHONES = {
    "US": ("(415) 555-0134", "+1 415-555-0134"),
    "GB": ("020 7946 0958", "+44 20 7946 0958"),
    "DE": ("030 901820", "+49 30 901820"),
    "FR": ("01 23 45 67 89", "+33 1 23 45 67 89"),
    "IN": ("022 2345 6789", "+91 22 2345 6789"),
    "BR": ("(11) 2345-6789", "+55 11 2345-6789"),
    "JP": ("03-1234-5678", "+81 3-1234-5678"),
    "AU": ("(02) 9876 5432", "+61 2 9876 5432"),
    "CA": ("(416) 555-0134", "+1 416 555 0134"),
}
ALL_PHONES = [number for pair in PHONES.values() for number in pair]


def test_the_default_regions_cover_the_issue_list():
    assert set(PHONES) <= set(DEFAULT_PHONE_REGIONS)


@pytest.mark.parametrize("number", ALL_PHONES)
@pytest.mark.parametrize("template", ["Call § today.", "Call extension §", "§", "(tel: §)", '{"phone": "§"}'])
def test_each_region_national_and_international(number, template):
    scrubber = Scrubber()
    out = scrubber.scrub(template.replace("§", number))
    assert out == template.replace("§", "<PHONE>")
    assert dict(scrubber.counts) == {"PHONE": 1}


def test_national_formats_follow_the_configured_regions():
    assert Scrubber(phone_regions=["US"]).scrub("call 020 7946 0958") == "call 020 7946 0958"
    assert Scrubber(phone_regions=["GB"]).scrub("call 020 7946 0958") == "call <PHONE>"
    # An international number is one in every region list.
    assert Scrubber(phone_regions=["US"]).scrub("call +44 20 7946 0958") == "call <PHONE>"


@pytest.mark.parametrize("text", [
    "Version 1.2.3.4 of the gauge software", "version 10.0.0.1 was released", "upgrade to v1.2.0.1 now",
    "build 4.1.0.12 fixed it", "api_key: see docs", "password: required", "the token: none yet",
    "order 4000-3000 = 1000", "it costs $350 000 in total", "<<80000+50000=130000>>130000",
    "timestamp 2026-10-01T12:01:00Z", "record 20261001120100", "pages 12 13 14 15 16 17",
    "300 - 150 - 45 = 105 bikes", "Also 5555 5555 5555 4445 fails Luhn.",
])
def test_crafted_text_is_not_scrubbed(text):
    scrubber = Scrubber()
    assert scrubber.scrub(text) == text and not scrubber.counts


@pytest.mark.parametrize(("text", "expected"), [
    ("server 10.0.0.1 is down", "server <IP> is down"),
    ("api_key: sk9ab12 see docs", "api_key: <SECRET> see docs"),
    ("password: hunter2", "password: <SECRET>"),
    ('password: "see"', 'password: "<SECRET>"'),  # a quoted value is a value whatever it says
    ("phone=415-555-0134", "phone=<PHONE>"),
    # Glued to another number, the matcher reads one invalid run: the number is cut out of it.
    ("The Team plan costs 12  074104 10123 now", "The Team plan costs 12  <PHONE> now"),
    ("call 020 7946 0958 12 times", "call <PHONE> 12 times"),
])
def test_the_tightened_rules_still_catch_real_values(text, expected):
    assert Scrubber().scrub(text) == expected


def _real_texts() -> list[str]:
    squad, gsm8k = SHARED_DATA / "squad2-dev-slice.json", SHARED_DATA / "gsm8k-test.jsonl"
    if not squad.exists() or not gsm8k.exists():
        pytest.skip(f"reference data not in {SHARED_DATA}")
    data = json.loads(squad.read_text(encoding="utf-8"))
    texts = [p["context"] for a in data["data"] for p in a["paragraphs"]]
    texts += [q["question"] for a in data["data"] for p in a["paragraphs"] for q in p["qas"]]
    for line in gsm8k.read_text(encoding="utf-8").splitlines():
        if line:
            record = json.loads(line)
            texts += [record["question"], record["answer"]]
    return texts


def test_real_text_gets_no_replacement_at_all():
    scrubber = Scrubber()
    changed = [text for text in _real_texts() if scrubber.scrub(text) != text]
    assert not changed and not scrubber.counts, (dict(scrubber.counts), changed[:3])


def test_no_phone_of_any_region_reaches_any_file_curate_or_split_writes(workspace, tiny_model_dir):
    """In queries, contexts, responses and corrections; checked in every file under datasets/:
    examples, backlog, quarantine, report, train/validation/regression, OpenAI exports, the HF
    arrow files."""
    from conftest import REFUND, answer, ctx, rag_logs, record
    from test_eval import eval_config

    recs = rag_logs(60)
    for i, number in enumerate(ALL_PHONES):
        doc = ctx("refund-policy", REFUND["text"] + f" Escalations: Call extension {number}.")
        recs.append(record(f"Refund after {i + 20} days? call me on {number}", contexts=[doc],
                           response=f"Call {number}.", rating=-1, labels=["bad_format"],
                           correction=answer(f"Refunds are available within 30 days of purchase [refund-policy]. "
                                             f"We will call {number}.", "refund-policy")))
        recs.append(record(f"Which office answers {number} number {i}?", rating=-1, labels=["missing_knowledge"],
                           comment=f"customer gave {number}"))
    workspace.write_logs("a.jsonl", recs)
    cfg = eval_config(workspace, tiny_model_dir)
    for stage in ("curate", "split"):
        result = workspace.run(stage, "--config", str(cfg))
        assert result.exit_code == 0, result.output
    files = [p for p in (workspace.root / "datasets").rglob("*") if p.is_file()]
    assert any(p.suffix == ".arrow" for p in files) and any("openai" in p.name for p in files)
    for path in files:
        data = path.read_bytes()
        for number in ALL_PHONES:
            assert number.encode() not in data, f"{number} leaked into {path}"
            assert json.dumps(number)[1:-1].encode() not in data, f"{number} leaked into {path}"
