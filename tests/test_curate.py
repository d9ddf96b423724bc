"""`refit curate` through the real CLI on small fixtures: routing, rule labels, dedup,
scrubbing, accounting, quarantine and idempotence."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil

import pytest
from conftest import EXPORT, REFUND, TEAM, answer, ctx, rag_logs, read_jsonl, record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.clock import memory_peak_mb

GOOD = answer("Refunds are available within 30 days of purchase [refund-policy].", "refund-policy")
IDK = answer("I don't know based on the provided documents.")


def curate_ok(ws, *args: str):
    result = ws.run("curate", "--config", str(ws.config()), *args)
    assert result.exit_code == 0, result.output
    return result, ws.curated()


def accounting_holds(manifest: dict) -> bool:
    c = manifest["counts"]
    return c["read"] == c["kept"] + c["quarantined"] + c["backlog"] + sum(c["filtered"].values())


def by_log_id(examples: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in examples:
        out.setdefault(e["log_id"], []).append(e)
    return out


def test_routes_every_record_by_the_taxonomy(workspace):
    recs = {
        "bad_format": record("How long do refunds take?", response="Refunds: 30 days.", rating=-1,
                             labels=["bad_format"], correction=GOOD),
        "no_correction": record("Refund window for annual plans?", response="30 days.", rating=-1, labels=["bad_format"]),
        "missing": record("Does it integrate with SAP Ariba?", response=IDK, rating=-1, labels=["missing_knowledge"],
                          comment="we need docs on SAP", correction=answer("Yes via Zapier.")),
        "stale": record("What does the Team plan cost?", rating=-1, labels=["stale_knowledge"]),
        "wrong_retrieval": record("How do I export data?", contexts=[TEAM], rating=-1, labels=["wrong_retrieval"]),
        "halluc_in_ctx": record("Refund after 20 days?", response=answer("Refunds within 90 days [refund-policy].", "refund-policy"),
                                rating=-1, labels=["hallucination"], correction=GOOD),
        "halluc_no_ctx": record("Who is the CEO?", contexts=[TEAM, EXPORT], response=answer("It is Bob [team-plan].", "team-plan"),
                                rating=-1, labels=["hallucination"], correction=IDK),
        "halluc_no_fix": record("What is the SLA?", response=answer("99.99% [team-plan].", "team-plan"), rating=-1,
                                labels=["hallucination"]),
        "weak": record("12 users on Team for a year?", response=answer("100 dollars [team-plan].", "team-plan"),
                       rating=-1, labels=["weak_reasoning"], contexts=[TEAM]),
        "positive": record("Is there a refund window?", response=GOOD, rating=1),
        "positive_bad": record("Is there a refund window at all?", response="yes lol", rating=1),
        "no_feedback": record("Refunds?"),
        "hybrid": record("Refund on the new Pro plan?", rating=-1, labels=["missing_knowledge", "bad_format"], correction=GOOD),
        "aliased": record("Refunds after 2 weeks?", response="sure", rating=-1, labels=["format"], correction=GOOD),
    }
    workspace.write_logs("a.jsonl", list(recs.values()))
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None},
                                   "label_aliases": {"format": "bad_format"}, "idk": {"synthetic_fraction": 0}})
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    out = workspace.curated()
    manifest = json.loads((out / "manifest.json").read_text())
    examples = by_log_id(read_jsonl(out / "examples.jsonl"))
    backlog = read_jsonl(out / "rag_backlog.jsonl")
    backlog_ids = {i for entry in backlog for i in entry["log_ids"]}
    ids = {name: r["id"] for name, r in recs.items()}

    assert examples[ids["bad_format"]][0]["source"] == "correction"
    assert examples[ids["bad_format"]][0]["label"] == "bad_format"
    assert json.loads(examples[ids["bad_format"]][0]["ideal_answer"])["citations"] == ["refund-policy"]
    assert examples[ids["halluc_in_ctx"]][0]["label"] == "hallucination"
    assert examples[ids["positive"]][0]["source"] == "keep"
    assert examples[ids["aliased"]][0]["label"] == "bad_format"
    # Knowledge failures are backlog, never training data, even with a correction.
    for name in ("missing", "stale", "wrong_retrieval", "hybrid", "halluc_no_ctx", "halluc_no_fix"):
        assert ids[name] in backlog_ids, name
    assert ids["missing"] not in examples and ids["hybrid"] not in examples
    # Hallucination without the answer in context: backlog AND a derived "I don't know".
    derived = examples[ids["halluc_no_ctx"]][0]
    assert derived["source"] == "idk_from_hallucination"
    assert json.loads(derived["ideal_answer"]) == {"answer": "I don't know based on the provided documents.", "citations": []}
    f = manifest["counts"]["filtered"]
    assert f == {"no_ideal_answer": 1, "weak_reasoning": 1, "positive_not_exemplary": 1, "no_feedback": 1}
    assert manifest["counts"]["added"] == {"idk_from_hallucination": 1}
    assert accounting_holds(manifest)
    assert manifest["counts"]["read"] == len(recs)
    report = (out / "report.md").read_text()
    assert "## Decision" in report and "| read |" in report


def test_unlabelled_failures_are_labelled_by_rules(workspace):
    recs = [
        record("Refund window please?", response="Refunds within 30 days.", rating=-1, correction=GOOD),
        record("Refund window again?", response=answer("Refunds within 30 days."), rating=-1, correction=GOOD),
        record("Refund window, cite it?", response=answer("Refunds within 30 days [nope].", "nope"), rating=-1, correction=GOOD),
        record("Refund window, grounded?", response=answer("Refunds need a manager signature in blue ink [refund-policy].",
                                                           "refund-policy"), rating=-1, correction=GOOD),
        record("Who founded it?", contexts=[TEAM], response=answer("Alice [team-plan].", "team-plan"), rating=-1, correction=IDK),
        record("Refund window, fine?", response=GOOD, rating=-1),
    ]
    workspace.write_logs("a.jsonl", recs)
    result, out = curate_ok(workspace)
    manifest = json.loads((out / "manifest.json").read_text())
    examples = {e["log_id"]: e for e in read_jsonl(out / "examples.jsonl")}
    got = {r["id"]: (examples[r["id"]]["label"], examples[r["id"]]["rule"]) for r in recs[:4]}
    assert got == {
        recs[0]["id"]: ("bad_format", "format_invalid"),
        recs[1]["id"]: ("missing_citation", "citations_missing"),
        recs[2]["id"]: ("hallucination", "citations_not_in_context"),
        recs[3]["id"]: ("hallucination", "answer_not_in_context"),
    }
    assert all(examples[r["id"]]["label_source"] == "rule" for r in recs[:4])
    assert manifest["rule_labels"]["ideal_answer_not_in_context -> hallucination"] == 1
    assert manifest["counts"]["filtered"] == {"unclassified_failure": 1}
    assert accounting_holds(manifest)


def test_near_duplicates_keep_the_best_labelled_copy(workspace):
    base = "How many days do I have to ask for a refund on my subscription"
    recs = [
        record(base + "?", response=GOOD, rating=1),  # keep: lower rank
        record(base.lower() + "??", response="30 days", rating=-1, labels=["bad_format"], correction=GOOD),  # human
        record(base + " ?", response="30 days", rating=-1, correction=GOOD),  # rule-labelled
        record("How do I export all of my project data as a CSV file from the admin settings page",
               contexts=[EXPORT], response=answer("Admins can export as CSV from Settings, then Export [data-export].", "data-export"),
               rating=1),
    ]
    workspace.write_logs("a.jsonl", recs)
    _, out = curate_ok(workspace)
    examples = read_jsonl(out / "examples.jsonl")
    rag = [e for e in examples if e["source"] != "idk_synthetic"]
    assert sorted(e["log_id"] for e in rag) == sorted([recs[1]["id"], recs[3]["id"]])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["filtered"] == {"duplicate_exact": 2}
    assert len({e["cluster_id"] for e in rag}) == 2
    assert accounting_holds(manifest)


def test_near_duplicate_threshold_catches_paraphrases(workspace):
    q = "How many days do I have to ask for a refund on my annual subscription"
    recs = [record(q + "?", response=GOOD, rating=1),
            record(q.replace("ask for", "request") + "?", response=GOOD, rating=1)]
    workspace.write_logs("a.jsonl", recs)
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "dedup": {"threshold": 0.5}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    manifest = json.loads((workspace.curated() / "manifest.json").read_text())
    assert manifest["counts"]["filtered"] == {"duplicate_near": 1}


SECRETS = {
    "email": "jane.doe@example.com",
    "phone": "+1 415 555 0134",
    "card": "4111 1111 1111 1111",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "ip": "203.0.113.77",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "openai": "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
    "github": "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "slack": "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "stripe": "sk_live_51HxYzAbCdEfGhIjKlMnOpQrSt",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----",
}


def test_no_secret_reaches_any_output(workspace):
    values = list(SECRETS.values())
    recs = []
    for i, value in enumerate(values):
        secret_ctx = ctx("refund-policy", REFUND["text"] + f" Escalations: {value}.")
        recs.append(record(f"Refund after 20 days? my details: {value} (case {i})", contexts=[secret_ctx, TEAM],
                           response="Refunds: 30 days.", rating=-1, labels=["bad_format"],
                           comment=f"customer wrote {value}",
                           correction=answer(f"Refunds are available within 30 days of purchase [refund-policy]. We noted {value}.",
                                             "refund-policy")))
        recs.append(record(f"Missing docs for {value}?", rating=-1, labels=["missing_knowledge"], comment=f"see {value}"))
    # Malformed lines carrying secrets are quarantined, and scrubbed there too.
    bad = [('{"query": "truncated ' + json.dumps(v)[1:-1]).encode() for v in values]
    workspace.write_logs("a.jsonl", recs + bad)
    _, out = curate_ok(workspace)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["quarantined"] == len(values)
    for path in out.iterdir():
        text = path.read_text(encoding="utf-8")
        for name, value in SECRETS.items():
            probe = value.splitlines()[1] if name == "pem" else value
            assert probe not in text, f"{name} leaked into {path.name}"
            assert probe not in json.dumps(text), f"{name} leaked (escaped) into {path.name}"
    scrubbed = manifest["scrubbed"]
    for kind in ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "AWS_KEY", "OPENAI_KEY", "GITHUB_TOKEN",
                 "SLACK_TOKEN", "STRIPE_KEY", "JWT", "PRIVATE_KEY"):
        assert scrubbed.get(kind, 0) > 0, kind
    assert "<EMAIL>" in (out / "examples.jsonl").read_text()


def test_ids_sessions_topics_labels_and_reasons_are_scrubbed_too(workspace):
    email, key, phone = "bob.smith@example.com", "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD", "+1 415 555 0134"
    secret_ctx = {"id": f"{email}#1", "text": REFUND["text"], "score": 0.9}
    recs = [
        record("Refund window please?", contexts=[secret_ctx], response="30 days", rating=-1, labels=["bad_format"],
               session=key, correction=answer(f"Refunds are available within 30 days of purchase [{email}#1].", f"{email}#1"),
               id=f"log-{email}", topic=phone),
        record("Docs for the API?", contexts=[secret_ctx], rating=-1, labels=["missing_knowledge", f"call {phone}"],
               id=f"log-2-{email}"),
        {"query": "q", "feedback": {"rating": email}},
    ]
    workspace.write_logs("a.jsonl", recs)
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "fields": {"topic": "topic"}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    out = workspace.curated()
    for path in out.iterdir():
        text = path.read_text(encoding="utf-8")
        for value in (email, key, phone, "415 555"):
            assert value not in text, f"{value} leaked into {path.name}"
    (example,) = [e for e in read_jsonl(out / "examples.jsonl") if e["source"] == "correction"]
    # The scrubbed citation still matches the scrubbed context id.
    cited = json.loads(example["ideal_answer"])["citations"]
    assert cited == [example["contexts"][0]["id"]] == ["<EMAIL>#1"]


def test_a_blank_correction_is_no_ideal_answer(workspace):
    workspace.write_logs("a.jsonl", [
        record("Refund window?", response="30", rating=-1, labels=["bad_format"], correction="   "),
        record("Refund window again?", response="30", rating=-1, labels=["bad_format"],
               correction=answer("", "refund-policy")),
    ])
    _, out = curate_ok(workspace)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["filtered"] == {"no_ideal_answer": 2} and manifest["counts"]["kept"] == 0


def test_extra_scrub_patterns_from_config(workspace):
    workspace.write_logs("a.jsonl", [record("Refund for employee EMP-123456?", response="30 days", rating=-1,
                                            labels=["bad_format"], correction=GOOD)])
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None},
                                   "scrub": {"extra_patterns": {"EMPLOYEE_ID": r"EMP-\d{6}"}}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    text = (workspace.curated() / "examples.jsonl").read_text()
    assert "EMP-123456" not in text and "<EMPLOYEE_ID>" in text


def test_garbage_file_is_quarantined_line_by_line(workspace):
    rng = random.Random(5)
    lines = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))).replace(b"\n", b" ") for _ in range(200)]
    workspace.write_logs("garbage.jsonl", lines)
    _, out = curate_ok(workspace)
    manifest = json.loads((out / "manifest.json").read_text())
    quarantine = read_jsonl(out / "quarantine.jsonl")
    assert manifest["counts"]["read"] == 200 == manifest["counts"]["quarantined"]
    assert [q["line"] for q in quarantine] == list(range(1, 201))
    assert all(q["file"].endswith("garbage.jsonl") and q["reason"] for q in quarantine)
    assert (out / "examples.jsonl").read_text() == ""


def test_each_kind_of_bad_line_has_a_clear_reason(workspace):
    good = record("Refund window?", response="30 days", rating=-1, labels=["bad_format"], correction=GOOD)
    lines = [
        b"\xef\xbb\xbf" + json.dumps(good).encode(),  # BOM on line 1: stripped, record is fine
        b"",
        b"   ",
        b'{"query": "unterminated',
        b"[1, 2, 3]",
        b'"just a string"',
        json.dumps({"contexts": []}).encode(),
        json.dumps({"query": 42}).encode(),
        json.dumps({"query": "   "}).encode(),
        json.dumps({"query": "q", "contexts": "not a list"}).encode(),
        json.dumps({"query": "q", "contexts": [{"id": "a", "text": 5}]}).encode(),
        json.dumps({"query": "q", "feedback": {"rating": "meh"}}).encode(),
        json.dumps({"query": "q", "feedback": {"labels": "bad_format"}}).encode(),
        b'{"query": "caf\xe9 invalid utf8"}',
        b"\xff\xfe\x00garbage",
    ]
    workspace.write_logs("a.jsonl", lines)
    _, out = curate_ok(workspace)
    reasons = {q["line"]: q["reason"] for q in read_jsonl(out / "quarantine.jsonl")}
    assert 1 not in reasons
    assert reasons[2] == reasons[3] == "empty line"
    assert reasons[4].startswith("invalid JSON")
    assert reasons[5] == "invalid record: not a JSON object (got list)"
    assert reasons[6] == "invalid record: not a JSON object (got str)"
    assert reasons[7] == "invalid record: missing field 'query'"
    assert reasons[8] == "invalid record: field 'query' must be a string, got int"
    assert reasons[9] == "invalid record: field 'query' is empty"
    assert reasons[10] == "invalid record: field 'contexts' must be a list, got str"
    assert reasons[11] == "invalid record: field 'contexts[0].text' must be a string, got a int"
    assert "feedback.rating" in reasons[12]
    assert "feedback.labels" in reasons[13]
    assert reasons[14].startswith("invalid UTF-8")
    assert reasons[15].startswith("invalid UTF-8")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 1 and accounting_holds(manifest)


def test_very_long_lines_never_crash(workspace):
    huge_valid = record("Refund window?", response="x" * 3_000_000, rating=-1, labels=["bad_format"], correction=GOOD)
    workspace.write_logs("a.jsonl", [huge_valid, b"y" * 5_000_000, record("Refunds?", response=GOOD, rating=1)])
    _, out = curate_ok(workspace)
    quarantine = read_jsonl(out / "quarantine.jsonl")
    assert [q["line"] for q in quarantine] == [1, 2]
    assert all(q["reason"].startswith("line too long") for q in quarantine)
    assert quarantine[1]["bytes"] == 5_000_000
    # Raising the limit lets the valid multi-MB record through (its response is not trained on).
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "max_line_bytes": 8_000_000})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    manifest = json.loads((workspace.curated() / "manifest.json").read_text())
    assert manifest["counts"]["kept"] == 2 and manifest["counts"]["quarantined"] == 1


def test_reads_gzip_globs_and_folders(workspace):
    workspace.write_logs("a.jsonl", [record("Refund window, plain?", response=GOOD, rating=1)])
    nested = workspace.root / "logs" / "2026" / "10"
    nested.mkdir(parents=True)
    with gzip.open(nested / "b.jsonl.gz", "wb") as fh:
        fh.write((json.dumps(record("Refund window, gzipped?", response=GOOD, rating=1)) + "\n").encode())
    _, out = curate_ok(workspace)
    assert json.loads((out / "manifest.json").read_text())["counts"]["kept"] == 2
    cfg = workspace.config(curate={"inputs": ["logs/**/*.gz"], "general_mix": {"path": None}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    assert json.loads((workspace.curated() / "manifest.json").read_text())["counts"]["read"] == 1
    cfg = workspace.config(curate={"inputs": ["nowhere/*.jsonl"]})
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 1 and "matches no log file" in result.output


def test_another_log_shape_needs_only_config(workspace):
    shaped = {
        "request": {"id": "r-1", "question": "Can I get a refund after 20 days?", "session": {"key": "abc"}},
        "retrieval": {"hits": [{"doc": {"name": "refund-policy"}, "body": REFUND["text"], "similarity": 0.9}]},
        "output": {"text": "Sure, 30 days."},
        "review": {"thumb": "down", "tags": ["bad_format"], "fixed": GOOD},
    }
    workspace.write_logs("a.jsonl", [shaped])
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "fields": {
        "id": "request.id", "session_id": "request.session.key", "query": "request.question",
        "contexts": "retrieval.hits", "context_id": "doc.name", "context_text": "body", "context_score": "similarity",
        "response": "output.text", "rating": "review.thumb", "labels": "review.tags", "comment": None,
        "correction": "review.fixed", "timestamp": None, "model": None}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    (example,) = read_jsonl(workspace.curated() / "examples.jsonl")
    assert example["log_id"] == "r-1" and example["session_id"] == "abc"
    assert example["contexts"] == [{"id": "refund-policy", "text": REFUND["text"]}]
    assert example["label"] == "bad_format"


def test_same_inputs_do_nothing_and_changes_make_a_new_dataset(workspace):
    workspace.write_logs("a.jsonl", [record("Refund?", response=GOOD, rating=1)])
    first, out = curate_ok(workspace)
    again, out2 = curate_ok(workspace)
    assert out == out2 and "Nothing to do" in again.output and out.name in again.output
    workspace.write_logs("b.jsonl", [record("Refund now?", response=GOOD, rating=1)])
    _, out3 = curate_ok(workspace)
    assert out3 != out
    assert "Next:" in first.output and str(out.relative_to(workspace.root)) in first.output


def test_synthetic_idk_and_general_mix(workspace):
    nouns = ("invoices boards sprints labels webhooks seats backups themes widgets reports calendars "
             "comments mentions exports imports tokens sessions folders templates reminders").split()
    verbs = "archive share".split()
    topics = [(n, v) for n in nouns for v in verbs]
    docs = [ctx(f"doc-{i}", f"Admins {v} {n} from the {n} page; the limit is {i * 7} per day.") for i, (n, v) in enumerate(topics)]
    recs = [record(f"Where would an admin {v} {n}?", contexts=[docs[i]],
                   response=answer(f"Admins {v} {n} from the {n} page [doc-{i}].", f"doc-{i}"), rating=1)
            for i, (n, v) in enumerate(topics)]
    workspace.write_logs("a.jsonl", recs)
    general = workspace.root / "general.jsonl"
    general.write_text("\n".join(json.dumps({"id": f"g{i}", "query": f"What is {i} plus {i}?", "answer": str(2 * i)})
                                 for i in range(100)) + "\nnot json\n")
    # Templated questions are near-duplicates at the default threshold; this test is
    # about the derived examples, so dedup only merges identical questions here.
    cfg = workspace.config(curate={"inputs": ["logs"], "idk": {"synthetic_fraction": 0.25},
                                   "dedup": {"threshold": 0.95},
                                   "general_mix": {"path": str(general), "fraction": 0.2}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    out = workspace.curated()
    examples = read_jsonl(out / "examples.jsonl")
    synthetic = [e for e in examples if e["source"] == "idk_synthetic"]
    general_examples = [e for e in examples if e["kind"] == "general"]
    assert len(synthetic) == 10
    for e in synthetic:
        source = next(x for x in examples if x["query"] == e["query"] and x["source"] == "keep")
        assert e["cluster_id"] == source["cluster_id"]
        assert {c["id"] for c in e["contexts"]}.isdisjoint({c["id"] for c in source["contexts"]})
    assert len(general_examples) == round(0.2 / 0.8 * 50)  # 20% of all examples
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["general_mix"]["skipped"] == {"invalid_json": 1}
    assert manifest["counts"]["examples"] == len(examples)


def test_over_long_examples_are_filtered_with_a_reason(workspace):
    long_ctx = ctx("refund-policy", REFUND["text"] + " filler" * 3000)
    workspace.write_logs("a.jsonl", [record("Refund?", contexts=[long_ctx], response="30", rating=-1,
                                            labels=["bad_format"], correction=GOOD),
                                     record("Refund please?", response=GOOD, rating=1)])
    cfg = workspace.config(model={"base": str(workspace.tokenizer_dir), "max_seq_tokens": 1000},
                           curate={"inputs": ["logs"], "general_mix": {"path": None}, "idk": {"synthetic_fraction": 0}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    manifest = json.loads((workspace.curated() / "manifest.json").read_text())
    assert manifest["counts"]["filtered"] == {"too_long": 1}
    assert manifest["counts"]["kept"] == 1
    assert manifest["labels"]["bad_format"] == {"example": 0, "filtered": 1}


def test_config_errors_name_the_key(workspace):
    path = workspace.root / "bad.yaml"
    path.write_text("curate:\n  dedup:\n    treshold: 0.5\n  label_aliases: {fmt: not_a_label}\n")
    result = workspace.run("curate", "--config", str(path))
    assert result.exit_code == 2
    assert "curate.dedup.treshold: unknown key (did you mean 'threshold'?)" in result.output
    assert "curate.label_aliases" in result.output and "not_a_label" in result.output


# ---------------------------------------------------------------------------- hostile input

_json_ish = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["query", "contexts", "feedback", "rating", "labels", "response", "correction", "id", "text"]),
        inner, max_size=5),
    max_leaves=12,
)


@st.composite
def hostile_line(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "mutated", "record"]))
    if kind == "bytes":
        return draw(st.binary(max_size=120)).replace(b"\n", b"")
    if kind == "json":
        return json.dumps(draw(_json_ish)).encode()
    good = json.dumps(record(draw(st.text(min_size=1, max_size=40)), rating=draw(st.sampled_from([-1, 1, None])),
                             labels=draw(st.lists(st.sampled_from(["bad_format", "hallucination", "missing_knowledge", "zzz"]),
                                                  max_size=2)),
                             correction=draw(st.sampled_from([None, GOOD, IDK, "plain text"])))).encode()
    if kind == "record":
        return good
    cut = draw(st.integers(0, len(good)))
    return good[:cut] + draw(st.binary(max_size=8)).replace(b"\n", b"") + good[cut + 1:]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(lines=st.lists(hostile_line(), min_size=1, max_size=40))
def test_hostile_lines_never_crash_and_always_add_up(tmp_path_factory, tiny_tokenizer, lines):
    from pipelines.config import load_config
    from pipelines.curate import curate

    root = tmp_path_factory.mktemp("hostile")
    (root / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = load_config(None, overrides={"curate.inputs": [str(root / "in.jsonl")],
                                          "curate.output_dir": str(root / "out"),
                                          "curate.general_mix.path": None})
    result = curate(config, tokenizer=tiny_tokenizer)
    c = result.manifest["counts"]
    assert c["read"] == len(lines)
    assert accounting_holds(result.manifest)
    quarantined = read_jsonl(result.path / "quarantine.jsonl")
    assert len(quarantined) == c["quarantined"]
    assert len(read_jsonl(result.path / "examples.jsonl")) == c["examples"]
    shutil.rmtree(root)


def test_unrecognised_labels_are_reported_not_trained(workspace):
    workspace.write_logs("a.jsonl", [record("Refund?", response="30", rating=-1, labels=["vibes"], correction=GOOD)])
    _, out = curate_ok(workspace)
    manifest = json.loads((out / "manifest.json").read_text())
    # An unknown label alone leaves the failure unlabelled, so the rules label it.
    assert manifest["unknown_labels"] == {"vibes": 1}
    assert manifest["rule_labels"] == {"format_invalid -> bad_format": 1}
    assert "label_aliases" in (out / "report.md").read_text()


def test_curate_and_eval_read_an_answer_alike():
    """One answer contract (pipelines/answers.py): curate's rules and eval's metrics agree on
    citations, refusal and format, and split can ask whether an ideal answer cites."""
    from evals import metrics as M
    from pipelines.answers import AnswerContract, is_cited_answer
    from pipelines.config import OutputConfig

    output = OutputConfig()
    rules = AnswerContract(output)
    for raw in (GOOD, IDK, answer("Refunds within 30 days."), "Refunds [refund-policy].",
                "```json\n" + GOOD + "\n```", answer("The documents do not contain the price."),
                json.dumps({"answer": "Yes [a]", "citations": ["a"], "extra": 1})):
        ours, theirs = rules.parse(raw), M.parse_output(raw, output.format, output.idk_answer)
        assert (ours.citations, ours.refusal, ours.format_valid) == (theirs.citations, theirs.refusal,
                                                                     theirs.format_valid), raw
    assert is_cited_answer(GOOD, output) and not is_cited_answer(IDK, output)
    assert not is_cited_answer(answer("Refunds within 30 days."), output)  # compact JSON, no citations
    assert is_cited_answer(rules.canonical(rules.parse(GOOD)), output)  # curate writes compact JSON


def test_accounting_counts_each_line_once():
    import pytest

    from pipelines.accounting import Accounting

    acc = Accounting()
    for _ in range(4):
        acc.read()
    acc.quarantine("invalid JSON: at 3")
    acc.filter("no_feedback", "none")
    acc.candidate("bad_format")
    acc.candidate("bad_format")
    with pytest.raises(AssertionError, match="candidates"):
        acc.check()  # two candidates still undecided
    acc.keep("bad_format")
    acc.filter_candidate("too_long", "bad_format")
    acc.add("idk_synthetic")
    acc.check()
    assert acc.counts()["examples"] == 2 and acc.quarantine_reasons == {"invalid JSON": 1}
    assert acc.label_table()["bad_format"] == {"example": 1, "filtered": 1}


def test_a_stage_records_its_own_peak_memory_not_the_process_s(workspace):
    """`refit retrain` runs every stage in one process: each stage's manifest gives the peak
    since that stage started, not one an earlier step of the process reached (issue 16)."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("the peak can only be restarted on Linux")
    workspace.write_logs("a.jsonl", rag_logs(20))
    spike = b"x" * (768 * 1024 * 1024)  # written, so resident; freed before curate starts
    del spike
    before = memory_peak_mb()
    _, curated = curate_ok(workspace)
    peak = json.loads((curated / "manifest.json").read_text())["timings"]["peak_rss_mb"]
    assert peak < before - 512, (peak, before)
