"""`refit split` through the real CLI: determinism, grouping, stratification, the frozen
regression set, the leakage check, OpenAI format checks and the epochs rule."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from conftest import BEHAVIOUR_LABELS, NOUNS, VERBS, rag_logs, read_jsonl, record

LABELS = BEHAVIOUR_LABELS


def split_config(ws, **split):
    base = {"validation_fraction": 0.2, "min_validation": 5, "min_train": 10,
            "regression": {"size": 10, "path": "pipeline-state/regression.jsonl"}}
    base.update(split)
    return ws.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "idk": {"synthetic_fraction": 0.1},
                             "dedup": {"threshold": 0.9}},
                     split=base)


def curate_and_split(ws, cfg: Path, *extra: str):
    result = ws.run("curate", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    result = ws.run("split", "--config", str(cfg), *extra)
    assert result.exit_code == 0, result.output
    latest = (ws.root / "datasets" / "splits" / "LATEST").read_text().strip()
    return result, ws.root / "datasets" / "splits" / latest


def load_sets(path: Path) -> dict[str, list[dict]]:
    return {name: read_jsonl(path / f"{name}.jsonl") for name in ("train", "validation", "regression")}


def test_split_writes_every_artifact_and_is_a_noop_the_second_time(workspace):
    workspace.write_logs("a.jsonl", rag_logs(120, sessions=10))
    cfg = split_config(workspace)
    result, out = curate_and_split(workspace, cfg)
    for name in ("train.jsonl", "validation.jsonl", "regression.jsonl", "train.openai.jsonl",
                 "validation.openai.jsonl", "baseline_prompt.json", "manifest.json", "hf/dataset_dict.json"):
        assert (out / name).exists(), name
    assert "billed tokens" in result.output and "Next:" in result.output and str(out.name) in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    sets = load_sets(out)
    assert manifest["counts"]["train"] == len(sets["train"]) and manifest["counts"]["validation"] == len(sets["validation"])
    curated = manifest["counts"]["curated"]
    assert curated == len(sets["train"]) + len(sets["validation"]) + manifest["counts"]["held_out_for_regression"]
    # The OpenAI exports are messages only, rendered by the shared template.
    line = json.loads((out / "train.openai.jsonl").read_text().split("\n")[0])
    assert list(line) == ["messages"] and [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]
    import datasets

    hf = datasets.load_from_disk(str(out / "hf"))
    assert hf["train"].num_rows == len(sets["train"]) and hf["train"][0]["messages"] == line["messages"]
    again = workspace.run("split", "--config", str(cfg))
    assert again.exit_code == 0 and "Nothing to do" in again.output and out.name in again.output


def test_split_is_byte_identical_for_the_same_inputs_and_seed(workspace):
    workspace.write_logs("a.jsonl", rag_logs(120, sessions=10))
    cfg = split_config(workspace)
    _, first = curate_and_split(workspace, cfg)
    copy = workspace.root / "first-copy"
    shutil.copytree(first, copy)
    assert workspace.run("split", "--config", str(cfg), "--force").exit_code == 0
    for path in sorted(p for p in copy.rglob("*") if p.is_file() and p.name != "manifest.json"):
        assert path.read_bytes() == (first / path.relative_to(copy)).read_bytes(), path.name
    m1, m2 = (json.loads((d / "manifest.json").read_text()) for d in (copy, first))
    assert m1["files"] == m2["files"] and m1["counts"] == m2["counts"]
    # A different seed gives a different split.
    cfg2 = split_config(workspace, seed=99)
    _, other = curate_and_split(workspace, cfg2)
    assert (other / "train.jsonl").read_bytes() != (copy / "train.jsonl").read_bytes()


def test_a_forced_split_that_fails_keeps_the_old_split_and_the_regression_set(workspace, monkeypatch):
    workspace.write_logs("a.jsonl", rag_logs(120, sessions=10))
    cfg = split_config(workspace)
    _, first = curate_and_split(workspace, cfg)
    before = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    state = workspace.root / "pipeline-state" / "regression.jsonl"
    frozen = state.read_bytes()
    latest = (first.parent / "LATEST").read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-split")

    monkeypatch.setattr("pipelines.split._write_hf_copy", crash)
    with pytest.raises(RuntimeError, match="killed mid-split"):
        workspace.run("split", "--config", str(cfg), "--force")
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == before
    assert state.read_bytes() == frozen and (first.parent / "LATEST").read_bytes() == latest
    assert sorted(p.name for p in first.parent.iterdir()) == sorted(["LATEST", first.name])


def test_groups_never_straddle_sets_and_labels_are_stratified(workspace):
    workspace.write_logs("a.jsonl", rag_logs(160, sessions=15))
    cfg = split_config(workspace)
    _, out = curate_and_split(workspace, cfg)
    sets = load_sets(out)
    where: dict[str, set[str]] = {}
    for name, items in sets.items():
        for e in items:
            for key in (e.get("cluster_id"), e.get("session_id")):
                if key:
                    where.setdefault(key, set()).add(name)
    assert all(len(names) == 1 for names in where.values()), {k: v for k, v in where.items() if len(v) > 1}
    # Stratification: each behaviour label's validation share is near the asked 20%.
    train, val = Counter(e["label"] for e in sets["train"]), Counter(e["label"] for e in sets["validation"])
    for label in LABELS:
        share = val[label] / (train[label] + val[label])
        assert 0.08 <= share <= 0.35, (label, share)


def test_split_groups_near_duplicates_sessions_and_clusters_itself():
    from pipelines.minhash import MinHasher
    from pipelines.split import group_ids

    examples = [
        {"id": "a", "query": "How do I archive an invoice?", "cluster_id": "c1", "session_id": None},
        {"id": "b", "query": "how do i archive an invoice??", "cluster_id": "c2", "session_id": None},  # near a
        {"id": "c", "query": "Where are billing settings?", "cluster_id": "c3", "session_id": "s1"},
        {"id": "d", "query": "And for the Team plan?", "cluster_id": "c4", "session_id": "s1"},  # session of c
        {"id": "e", "query": "Can guests comment on tasks?", "cluster_id": "c3", "session_id": None},  # cluster of c
        {"id": "f", "query": "What is the API rate limit?", "cluster_id": "c5", "session_id": None},
    ]
    g = group_ids(examples, MinHasher(128, 5, 0.7, 1)).tolist()
    assert g[0] == g[1] and g[2] == g[3] == g[4] and len({g[0], g[2], g[5]}) == 3


def test_new_turns_of_a_regression_session_stay_out_of_training():
    from pipelines.minhash import MinHasher
    from pipelines.split import near_regression

    regression = [{"id": "r1", "query": "How do I archive an invoice?", "cluster_id": "c1", "session_id": "s-9"}]
    examples = [{"id": "e1", "query": "And can I restore it later on the Team plan?", "cluster_id": "c7", "session_id": "s-9"},
                {"id": "e2", "query": "Where are billing settings?", "cluster_id": "c8", "session_id": "s-1"}]
    assert near_regression(examples, regression, MinHasher(128, 5, 0.7, 1)) == {0}


def test_frozen_regression_set_survives_a_second_split_over_grown_data(workspace):
    workspace.write_logs("a.jsonl", rag_logs(120))
    cfg = split_config(workspace)
    _, first = curate_and_split(workspace, cfg)
    state = workspace.root / "pipeline-state" / "regression.jsonl"
    frozen = state.read_bytes()
    regression = read_jsonl(state)
    assert 6 <= len(regression) <= 16 and regression == read_jsonl(first / "regression.jsonl")
    # New logs arrive, including a near-duplicate of a regression question.
    reg_query = regression[0]["query"]
    more = rag_logs(60, offset=200)
    more.append(record(reg_query.lower() + "?", contexts=regression[0]["contexts"], response="x", rating=-1,
                       labels=["bad_format"], correction=regression[0]["ideal_answer"]))
    workspace.write_logs("b.jsonl", more)
    _, second = curate_and_split(workspace, cfg)
    assert second != first
    assert state.read_bytes() == frozen  # carried forward unchanged
    assert (second / "regression.jsonl").read_bytes() == frozen
    sets = load_sets(second)
    queries = {e["query"].lower().strip("?") for name in ("train", "validation") for e in sets[name]}
    assert reg_query.lower().strip("?") not in queries
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["regression"]["carried_forward"] == len(regression) and manifest["regression"]["drawn"] == 0
    # Appending happens only when the config asks.
    cfg3 = split_config(workspace, regression={"size": 10, "append": 5, "path": "pipeline-state/regression.jsonl"})
    _, third = curate_and_split(workspace, cfg3)
    grown = read_jsonl(state)
    assert grown[: len(regression)] == regression and len(grown) > len(regression)
    assert json.loads((third / "manifest.json").read_text())["regression"]["appended"] == len(grown) - len(regression)


def test_too_small_a_dataset_says_how_many_are_needed(workspace):
    workspace.write_logs("a.jsonl", rag_logs(20))
    cfg = split_config(workspace)
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    result = workspace.run("split", "--config", str(cfg))
    assert result.exit_code == 1
    assert "needs at least 25" in result.output


def test_split_without_a_curated_dataset_is_a_clear_error(workspace):
    result = workspace.run("split", "--config", str(split_config(workspace)))
    assert result.exit_code == 1 and "run `make curate` first" in result.output


def test_a_malformed_curated_manifest_is_a_one_line_error_naming_it(workspace):
    workspace.write_logs("a.jsonl", rag_logs(120, sessions=10))
    cfg = split_config(workspace)
    assert workspace.run("curate", "--config", str(cfg)).exit_code == 0
    curated = workspace.root / "datasets" / "curated"
    manifest = curated / (curated / "LATEST").read_text().strip() / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["decision"]
    manifest.write_text(json.dumps(data))
    result = workspace.run("split", "--config", str(cfg))
    assert result.exit_code == 1 and "manifest.json: decision: Field required" in result.output


def test_leakage_check_catches_a_planted_duplicate():
    from pipelines.minhash import MinHasher
    from pipelines.split import LeakageError, check_leakage, find_leaks

    hasher = MinHasher(128, 5, 0.7, 1)
    train = [{"id": f"t{i}", "query": f"How do I {v} the {n}?"} for i, (v, n) in enumerate(zip(VERBS, NOUNS))]
    validation = [{"id": "v1", "query": "Where are the billing settings for seat upgrades?"}]
    regression = [{"id": "r1", "query": "Can guests see private dashboards at all?"}]
    check_leakage({"train": train, "validation": validation, "regression": regression}, hasher)  # clean
    validation.append({"id": "v2", "query": "how do i ARCHIVE the invoice"})  # exact after normalisation
    regression.append({"id": "r2", "query": "How do I rename the board, please?"})  # near duplicate
    leaks = find_leaks({"train": train, "validation": validation, "regression": regression}, hasher)
    pairs = {(x["a"], x["b"]) for x in leaks}
    assert ("train:t0", "validation:v2") in pairs and ("regression:r2", "train:t1") in pairs
    with pytest.raises(LeakageError, match="train:t0"):
        check_leakage({"train": train, "validation": validation, "regression": regression}, hasher)


# ---------------------------------------------------------------------------- OpenAI format


def _valid(i: int) -> dict:
    return {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": "a"}]}


@pytest.mark.parametrize("bad, check", [
    ("[1, 2]", "data_type"),
    ({"prompt": "x"}, "missing_messages_list"),
    ({"messages": [{"content": "x"}, {"role": "assistant", "content": "a"}]}, "message_missing_key"),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}, {"role": "assistant", "content": "a"}]},
     "message_unrecognized_key"),
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "a"}]}, "unrecognized_role"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}, "missing_content"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}, "missing_content"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]},
     "example_missing_assistant_message"),
])
def test_each_format_check_catches_a_planted_bad_example(tmp_path, bad, check):
    from pipelines.openai_format import FormatError, check_file, require_valid

    lines = [json.dumps(_valid(i)) for i in range(12)]
    lines.insert(6, bad if isinstance(bad, str) else json.dumps(bad))
    path = tmp_path / "train.openai.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = check_file(path)
    assert not report.ok and report.errors[check] == 1 and report.first_error[check] == 7
    with pytest.raises(FormatError, match=rf"{check} \(1 example\(s\), first at line 7\)"):
        require_valid(path)


def test_format_checks_count_missing_system_and_user_and_the_minimum(tmp_path):
    from pipelines.openai_format import check_file

    path = tmp_path / "f.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                        {"role": "assistant", "content": "a"}]}) for _ in range(9)))
    report = check_file(path)
    assert report.missing_system == 9 and report.missing_user == 0
    assert not report.ok and "too_few_examples (9 < the minimum of 10)" in report.problems()


@pytest.mark.parametrize("n, epochs", [(5, 20), (33, 3), (34, 3), (40, 3), (3, 25), (1, 25), (8333, 3),
                                       (8334, 2), (10_000, 2), (30_000, 1)])
def test_epochs_rule_at_its_edges(n, epochs):
    from pipelines.openai_format import billing_estimate, default_epochs

    assert default_epochs(n) == epochs
    estimate = billing_estimate([100] * n, 65_536, 3.0)
    assert estimate["billed_tokens"] == 100 * n * epochs
    assert estimate["estimated_cost"] == pytest.approx(100 * n * epochs * 3.0 / 1e6, abs=1e-4)


def test_billing_caps_tokens_per_example():
    from pipelines.openai_format import billing_estimate

    estimate = billing_estimate([10, 500], 100, 1.0, n_epochs=2)
    assert estimate["tokens_per_epoch"] == 110 and estimate["billed_tokens"] == 220 and estimate["over_max_tokens"] == 1


# ---------------------------------------------------------------------------- the template


def test_template_renders_identical_messages_for_train_and_eval(workspace):
    workspace.write_logs("a.jsonl", rag_logs(120))
    cfg = split_config(workspace)
    _, out = curate_and_split(workspace, cfg)
    from pipelines.config import load_config
    from pipelines.template import render_messages

    config = load_config(cfg)
    example = read_jsonl(out / "validation.jsonl")[0]
    trained = render_messages(example, config.prompt, config.output)
    served = render_messages(example, config.prompt, config.output, with_answer=False)
    assert trained[:-1] == served and trained[-1] == {"role": "assistant", "content": example["ideal_answer"]}
    exported = [json.loads(x)["messages"] for x in (out / "validation.openai.jsonl").read_text().split("\n") if x]
    assert exported[0] == trained
    assert f"Document 1 [{example['contexts'][0]['id']}]" in served[1]["content"]
    assert served[1]["content"].endswith(f"Question: {example['query']}")
    # The baseline renders the same question after its few-shot turns, which come from train only.
    baseline = json.loads((out / "baseline_prompt.json").read_text())
    train_ids = {e["id"] for e in read_jsonl(out / "train.jsonl")}
    assert baseline["few_shot_ids"] and set(baseline["few_shot_ids"]) <= train_ids
    strong = render_messages(example, config.prompt, config.output, with_answer=False, baseline_shots=baseline["few_shot"])
    assert strong[-1] == served[-1] and len(strong) == 2 + 2 * len(baseline["few_shot"])
    assert strong[0]["content"] != served[0]["content"]
