"""Preference pairs end to end through the real CLI: derived by curate (corrections and
"I don't know" from hallucinations), scrubbed, dropped when both sides are the same answer,
deduplicated with their examples; placed by split in their example's set with no leakage;
written in OpenAI's preference format and checked, by refit and by the local server."""

from __future__ import annotations

import json
import sys
import time

import pytest
from conftest import REPO, answer, rag_logs, read_jsonl, record
from test_curate import GOOD, curate_ok

sys.path.insert(0, str(REPO / "scripts"))
from openai_server import serve  # noqa: E402

IDK = answer("I don't know based on the provided documents.")
OUTSIDE = "Can I pay for the Team plan with a purchase order from our finance team?"


def _pairs(out) -> list[dict]:
    return read_jsonl(out / "preferences.jsonl")


def test_pairs_come_from_corrections_and_from_hallucinations_answered_with_i_dont_know(workspace):
    recs = [
        record("Can I get a refund after 20 days?", response="yes!!! refunds are fine", rating=-1,
               labels=["bad_format"], correction=GOOD),
        record(OUTSIDE, response=answer("Yes, purchase orders are accepted [team-plan].", "team-plan"), rating=-1,
               labels=["hallucination"], correction=IDK),
        record("What is the refund window for annual plans?", response=GOOD, rating=1),  # positive: no pair
        # The same answer, only re-spaced and with its keys reordered: nothing to prefer.
        record("How long is the refund period for monthly plans?", rating=-1, labels=["wrong_tone"],
               response='{ "citations": ["refund-policy"],\n  "answer": "Refunds are available within 30 days of '
                        'purchase [refund-policy]." }', correction=GOOD),
        record("Is there a refund for unused seats on my plan?", response="", rating=-1, labels=["wrong_tone"],
               correction=GOOD),  # no production response logged: no rejected side
    ]
    workspace.write_logs("a.jsonl", recs)
    _, out = curate_ok(workspace)
    examples = {e["id"]: e for e in read_jsonl(out / "examples.jsonl")}
    pairs = {p["label"]: p for p in _pairs(out)}
    assert set(pairs) == {"bad_format", "hallucination"}
    fix, idk = pairs["bad_format"], pairs["hallucination"]
    assert fix["rejected"] == "yes!!! refunds are fine" and fix["chosen"] == examples[fix["example_id"]]["ideal_answer"]
    assert idk["source"] == "idk_from_hallucination" and "I don't know" in idk["chosen"]
    assert "purchase orders are accepted" in idk["rejected"]
    for pair in pairs.values():  # each pair names its example, and shares its prompt and cluster
        example = examples[pair["example_id"]]
        assert (pair["cluster_id"], pair["query"], pair["contexts"]) == \
            (example["cluster_id"], example["query"], example["contexts"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preferences"] == {"pairs": 2, "by_label": {"bad_format": 1, "hallucination": 1},
                                       "dropped": {"equal_sides": 1}}
    assert manifest["files"]["preferences.jsonl"]
    report = (out / "report.md").read_text()
    assert "## Preference pairs" in report and "| bad_format | 1 |" in report and "equal_sides 1" in report


def test_the_rejected_side_is_scrubbed_like_everything_else(workspace):
    email, key = "jane.doe@example.com", "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD"
    workspace.write_logs("a.jsonl", [record("Can I get a refund after 20 days?", rating=-1, labels=["bad_format"],
                                            response=f"mail {email}, key {key}", correction=GOOD)])
    _, out = curate_ok(workspace)
    text = (out / "preferences.jsonl").read_text()
    assert email not in text and key not in text and "<EMAIL>" in text
    [pair] = _pairs(out)
    assert pair["rejected"].startswith("mail <EMAIL>, key <")


def test_a_pair_goes_with_its_example_when_dedup_drops_it(workspace):
    base = "How many days do I have to ask for a refund on my subscription"
    recs = [record(base.lower() + "??", response="30 days", rating=-1, labels=["bad_format"], correction=GOOD),
            record(base + " ?", response="thirty days", rating=-1, correction=GOOD),  # rule-labelled: dropped
            record(base + "?", response=GOOD, rating=1)]  # positive: dropped, and had no pair
    workspace.write_logs("a.jsonl", recs)
    _, out = curate_ok(workspace)
    [example] = [e for e in read_jsonl(out / "examples.jsonl") if e["source"] != "idk_synthetic"]
    [pair] = _pairs(out)
    assert pair["example_id"] == example["id"] and pair["rejected"] == "30 days"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["preferences"]["dropped"] == {"with_their_example": 1}


def test_split_keeps_each_pair_in_its_examples_set_without_leakage(workspace):
    from pipelines.config import load_config
    from pipelines.openai_format import check_dpo_lines
    from pipelines.split import _hasher, find_leaks

    workspace.write_logs("a.jsonl", rag_logs(70, sessions=5))
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "dedup": {"threshold": 0.9}},
                           split={"validation_fraction": 0.2, "min_validation": 5, "min_train": 10,
                                  "regression": {"size": 8, "path": "state/regression.jsonl"}})
    for stage in ("curate", "split"):
        result = workspace.run(stage, "--config", str(cfg))
        assert result.exit_code == 0, result.output
    split = next((workspace.root / "datasets" / "splits").glob("spl-*"))
    sets = {name: read_jsonl(split / f"{name}.jsonl") for name in ("train", "validation", "regression")}
    pairs = {name: read_jsonl(split / f"{name}.preferences.jsonl") for name in ("train", "validation")}
    curated = _pairs(workspace.curated())
    for name, items in pairs.items():
        ids = {e["id"] for e in sets[name]}
        assert items and all(p["example_id"] in ids for p in items)
    held = len(curated) - len(pairs["train"]) - len(pairs["validation"])
    regression_ids = {e["id"] for e in sets["regression"]}
    assert held == sum(p["example_id"] in regression_ids for p in curated) > 0  # none of theirs trains
    leaks = find_leaks({"train": pairs["train"], "validation": pairs["validation"], "regression": sets["regression"]},
                       _hasher(load_config(cfg)))
    assert leaks == []
    manifest = json.loads((split / "manifest.json").read_text())
    section = manifest["preferences"]
    assert section["counts"] == {"train": len(pairs["train"]), "validation": len(pairs["validation"])}
    assert section["held_out"] == held and section["format_checks"]["train"]["ok"]
    assert section["billing"]["tokens_per_epoch"] > 0
    # The OpenAI preference file: one line per pair, the prompt rendered by the one template.
    lines = (split / "train.dpo.openai.jsonl").read_bytes().splitlines()
    first, sft = json.loads(lines[0]), json.loads((split / "train.openai.jsonl").read_bytes().splitlines()[0])
    assert len(lines) == len(pairs["train"]) and check_dpo_lines(lines).ok
    assert [m["role"] for m in first["input"]["messages"]] == ["system", "user"]
    assert first["input"]["messages"][0] == sft["messages"][0]  # the same system prompt as the SFT file
    assert first["preferred_output"] == [{"role": "assistant", "content": pairs["train"][0]["chosen"]}]
    assert first["non_preferred_output"] == [{"role": "assistant", "content": pairs["train"][0]["rejected"]}]
    assert {"train.dpo.openai.jsonl", "validation.preferences.jsonl"} <= set(manifest["files"])


GOOD_PAIR = {"input": {"messages": [{"role": "system", "content": "Answer."}, {"role": "user", "content": "Q?"}]},
             "preferred_output": [{"role": "assistant", "content": "Yes [a]."}],
             "non_preferred_output": [{"role": "assistant", "content": "yes"}]}


@pytest.mark.parametrize(("change", "check"), [
    (lambda p: p.pop("input"), "missing_input_messages"),
    (lambda p: p["input"]["messages"].append({"role": "assistant", "content": "x"}), "input_not_ending_with_user"),
    (lambda p: p.update(preferred_output=[{"role": "user", "content": "x"}]), "output_not_assistant"),
    (lambda p: p["non_preferred_output"].append({"role": "assistant", "content": "y"}), "output_not_one_message"),
    (lambda p: p.update(non_preferred_output=p["preferred_output"]), "identical_outputs"),
    (lambda p: p.pop("non_preferred_output"), "missing_non_preferred_output"),
    (lambda p: p.update(messages=[]), "unrecognized_key"),
    (lambda p: p["preferred_output"][0].update(content=" "), "missing_content"),
])
def test_the_preference_format_checks(change, check):
    from pipelines.openai_format import dpo_example_errors

    assert dpo_example_errors(json.loads(json.dumps(GOOD_PAIR))) == []
    broken = json.loads(json.dumps(GOOD_PAIR))
    change(broken)
    assert check in dpo_example_errors(broken)


def test_the_server_validates_files_by_the_jobs_method():
    import openai

    chat = b"".join(json.dumps({"messages": GOOD_PAIR["input"]["messages"] + GOOD_PAIR["preferred_output"]}).encode()
                    + b"\n" for _ in range(12))
    prefs = b"".join(json.dumps(GOOD_PAIR).encode() + b"\n" for _ in range(12))
    with serve({"jobs": {"validating_s": 0.05, "queued_s": 0.05, "running_s": 0.2}}) as server:
        c = openai.OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
        chat_file = c.files.create(file=("chat.jsonl", chat), purpose="fine-tune")
        pref_file = c.files.create(file=("prefs.jsonl", prefs), purpose="fine-tune")
        dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3, "n_epochs": 1}}}
        wrong = c.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=chat_file.id, method=dpo)
        right = c.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=pref_file.id, method=dpo)
        sft_on_pairs = c.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=pref_file.id)
        with pytest.raises(openai.BadRequestError, match="beta"):
            c.fine_tuning.jobs.create(model="gpt-4.1-mini", training_file=pref_file.id,
                                      method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}})
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and c.fine_tuning.jobs.retrieve(right.id).status != "succeeded":
            time.sleep(0.02)
        done = c.fine_tuning.jobs.retrieve(right.id)
        assert done.status == "succeeded" and done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.3
        for job in (wrong, sft_on_pairs):
            failed = c.fine_tuning.jobs.retrieve(job.id)
            assert failed.status == "failed" and failed.error.code == "invalid_training_file"
        model = c.models.retrieve("gpt-4.1-mini")
        assert model.id == "gpt-4.1-mini" and model.shutdown_date is None


def test_split_refuses_a_preference_file_that_fails_the_checks(workspace, tmp_path):
    from pipelines.config import load_config
    from pipelines.openai_format import FormatError
    from pipelines.split_preferences import write_preferences

    config = load_config(workspace.config())
    example = {"id": "ex-1", "query": "Q?", "contexts": [], "label": "bad_format"}
    pair = {"id": "pr-1", "example_id": "ex-1", "label": "bad_format", "query": "Q?", "contexts": [],
            "chosen": "same", "rejected": "same"}
    with pytest.raises(FormatError, match="identical_outputs"):
        write_preferences(tmp_path, [pair], {"train": [example], "validation": [], "regression": []}, config,
                          lambda messages: 1)
