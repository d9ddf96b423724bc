"""Issue 11: every kind of bad input gets a clear message and loses nothing. Each test runs the
real CLI on a tiny workspace: damaged .gz files (item 6), a model.base that is not there (7),
[brackets] in paths and messages (8), an extra pattern matching the empty string (10), files
that are not JSONL (11), control characters (12), placeholders as topic words (5) and the
decision counting an "I don't know" taught from a hallucination on both sides (16)."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
from conftest import answer, rag_logs, read_jsonl, record


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _gz(records: list[dict]) -> bytes:
    return gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records))


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "not gzip"])
def test_a_damaged_gz_keeps_the_lines_before_the_damage_and_says_so(workspace, damage):
    good = rag_logs(40)
    data = _gz(good)
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "corrupt":
        data = data[:40] + bytes(b ^ 0x5A for b in data[40:80]) + data[80:]
    else:
        data = b"".join(json.dumps(r).encode() + b"\n" for r in good)
    path = workspace.root / "logs" / "b.jsonl.gz"
    path.write_bytes(data)
    workspace.write_logs("a.jsonl", rag_logs(5, offset=100))
    result = workspace.run("curate", "--config", str(workspace.config()))
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "Aborted" not in result.output
    warning = [line for line in _lines(result.stderr) if "b.jsonl.gz" in line]
    assert warning and warning[0].startswith("warning:"), result.stderr
    out = workspace.curated()
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["read"] == c["kept"] + c["quarantined"] + c["backlog"] + sum(c["filtered"].values())
    damaged = [q for q in read_jsonl(out / "quarantine.jsonl") if q["file"].endswith("b.jsonl.gz")]
    assert len(damaged) == 1 and damaged[0]["reason"].startswith("damaged compressed file")
    kept_before = damaged[0]["line"] - 1
    assert c["read"] == 5 + kept_before + 1
    if damage == "truncated":
        assert kept_before > 10  # the readable lines before the cut are kept
    report = (out / "report.md").read_text()
    assert "b.jsonl.gz" in report and "damaged compressed file" in report


def test_a_model_base_that_does_not_exist_is_one_line_exit_2(workspace):
    workspace.write_logs("a.jsonl", rag_logs(3))
    missing = workspace.root / "no-such-model"
    result = workspace.run("curate", "--config", str(workspace.config(model={"base": str(missing)})))
    assert result.exit_code == 2, result.output
    lines = _lines(result.stderr)
    assert len(lines) == 1 and "model.base" in lines[0] and str(missing) in lines[0], lines


def test_square_brackets_survive_in_messages(workspace):
    cfg = workspace.config()
    result = workspace.run("curate", "--config", str(cfg), "--input", str(workspace.root / "[bold]x.jsonl"))
    assert result.exit_code == 1 and "[bold]x.jsonl" in result.stderr, result.stderr
    bad = workspace.root / "bad.yaml"
    bad.write_text("curate: {inputs: [a, b}\n")
    result = workspace.run("curate", "--config", str(bad))
    assert result.exit_code == 2 and "']'" in result.stderr, result.stderr


def test_an_extra_pattern_matching_the_empty_string_is_a_config_error(workspace):
    workspace.write_logs("a.jsonl", rag_logs(3))
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None},
                                   "scrub": {"extra_patterns": {"X": "\\d*"}}})
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 2, result.output
    # The config file's usual shape: the file, then one line per bad key.
    assert "Traceback" not in result.output
    (line,) = [line for line in _lines(result.stderr) if "curate.scrub.extra_patterns" in line]
    assert "empty string" in line, result.stderr


def test_json_that_is_not_jsonl_is_named_once_and_skipped_files_are_listed(workspace):
    workspace.write_logs("a.jsonl", rag_logs(3))
    (workspace.root / "logs" / "pretty.jsonl").write_text(json.dumps(rag_logs(3), indent=2))
    (workspace.root / "logs" / "export.json").write_text(json.dumps(rag_logs(2)))
    (workspace.root / "logs" / "notes.txt").write_text("hello")
    result = workspace.run("curate", "--config", str(workspace.config()))
    assert result.exit_code == 0, result.output
    hints = [line for line in _lines(result.stderr) if "pretty.jsonl" in line]
    assert len(hints) == 1 and "not JSON Lines" in hints[0], result.stderr
    report = (workspace.curated() / "report.md").read_text()
    assert "pretty.jsonl looks like one" in report
    assert "export.json" in report and "notes.txt" in report


def test_control_characters_never_reach_an_example(workspace):
    raw = record("Can I get a refund\u0000 after 20\u001b days?\u0007", rating=-1, labels=["bad_format"],
                 correction=answer("Refunds are available within 30 days\u0000 of purchase [refund-policy].",
                                   "refund-policy"))
    raw["contexts"][0] = {**raw["contexts"][0], "text": raw["contexts"][0]["text"] + "\u0000\u0085"}
    workspace.write_logs("a.jsonl", [raw])
    result = workspace.run("curate", "--config", str(workspace.config()))
    assert result.exit_code == 0, result.output
    (example,) = read_jsonl(workspace.curated() / "examples.jsonl")
    for text in (example["query"], example["ideal_answer"], example["contexts"][0]["text"]):
        assert not any(ord(ch) < 32 and ch not in "\n\t" or 0x7F <= ord(ch) <= 0x9F for ch in text), repr(text)
    assert example["query"] == "Can I get a refund after 20 days?"


def test_placeholders_are_not_backlog_keywords(workspace):
    iban, jwt = "GB82 WEST 1234 5698 7654 32", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc"
    recs = [record(f"Why was payment {i} to {iban} refused, token {jwt}?", rating=-1, labels=["missing_knowledge"])
            for i in range(3)]
    workspace.write_logs("a.jsonl", recs)
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None},
                                   "scrub": {"extra_patterns": {"REF": "REF-\\d+"}}})
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    keywords = [w for e in read_jsonl(workspace.curated() / "rag_backlog.jsonl") for w in e["keywords"]]
    assert keywords and not {"iban", "jwt", "ref"} & set(keywords), keywords
    assert "refused" in keywords


def test_a_failure_routed_to_backlog_and_training_counts_on_both_sides():
    from pipelines.config import DecisionConfig
    from pipelines.curate_report import decide

    # The other team's logs: 346 unanswerable hallucinations (backlog) made 313 "I don't know"
    # examples; with the other failures that read "fix RAG (75% knowledge)".
    labels = {"hallucination": Counter({"backlog": 346}), "missing_knowledge": Counter({"backlog": 250}),
              "bad_format": Counter({"example": 200})}
    counts = {"kept": 200, "added": {"idk_from_hallucination": 313}}
    decision = decide(labels, counts, DecisionConfig())
    assert decision["verdict"] == "hybrid", decision
    assert decision["counted_on_both_sides"] == 313 and decision["behaviour_failures"] == 513


def test_few_shot_examples_are_read_not_matched_as_text():
    from pipelines.config import OutputConfig
    from pipelines.split import choose_few_shot

    def ex(i: int, cites: list[str]) -> dict:
        ideal = json.dumps({"answer": f"Answer {i} [doc-{i}]." if cites else f"Answer {i}.", "citations": cites},
                           separators=(",", ":"))  # compact, as curate writes it
        return {"id": f"e{i}", "kind": "rag", "label": "bad_format", "ideal_answer": ideal}

    train = [ex(i, []) for i in range(20)] + [ex(i, [f"doc-{i}"]) for i in range(20, 24)]
    shots = choose_few_shot(train, 4, 0, OutputConfig())
    assert shots and all(json.loads(s["ideal_answer"])["citations"] for s in shots), shots


def test_a_generation_that_drops_a_prompt_fails_loudly(tiny_model_dir):
    from evals.providers import HFModel, ProviderError

    model = HFModel(str(tiny_model_dir))
    real = model._decode
    model._decode = lambda prompts, *args, **kw: real(prompts, *args, **kw)[:-1]  # a group comes back one short
    with pytest.raises(ProviderError, match="would not line up"):
        model.generate(["a b c", "d e f"], batch_size=2, max_new_tokens=2)
