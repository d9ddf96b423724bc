"""`refit eval` through the real CLI on a tiny Llama trained in-process: outputs, the
cache, batch-size invariance of greedy generation, exit codes, and user suites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import rag_logs, read_jsonl

FAST_EVAL = {"max_new_tokens": 6, "bootstrap_resamples": 200, "hf": {"batch_size": 8},
             "suites": {"guard_limit": 6}}
LENIENT_GATE = {"min_improvement": -1.0, "champion_tolerance": 1.0, "guard_margin": 1.0, "format_floor": 0.0}


def eval_config(ws, model_dir: Path, eval_settings: dict | None = None):
    settings = json.loads(json.dumps(FAST_EVAL))
    for key, value in (eval_settings or {}).items():
        settings[key] = {**settings[key], **value} if isinstance(value, dict) and key in settings else value
    return ws.config(model={"base": str(model_dir), "max_seq_tokens": 4096},
                     curate={"inputs": ["logs"], "general_mix": {"path": None}, "idk": {"synthetic_fraction": 0.1},
                             "dedup": {"threshold": 0.9}},
                     split={"validation_fraction": 0.2, "min_validation": 5, "min_train": 10,
                            "regression": {"size": 6, "path": "state/regression.jsonl"}},
                     train={"method": "sft", "max_steps": 2, "eval_steps": 2, "save_steps": 2, "batch_size": 4, "eval_batch_size": 8,
                            "lora": {"r": 4, "alpha": 8, "top_layers": None}, "precision": "fp32",
                            "early_stopping_patience": None},
                     tracking={"uri": "sqlite:///artifacts/mlflow.db", "artifact_location": "artifacts/mlartifacts"},
                     eval=settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tiny_tokenizer_dir):
    """One tiny trained run shared by this module's tests (each copies it)."""
    import os

    from conftest import Workspace

    root = tmp_path_factory.mktemp("trained")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        ws = Workspace(root, tiny_tokenizer_dir)
        ws.write_logs("a.jsonl", rag_logs(70))
        cfg = eval_config(ws, tiny_model_dir)
        for stage in ("curate", "split", "train"):
            result = ws.run(stage, "--config", str(cfg))
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def project(trained, workspace, tiny_model_dir):
    import shutil

    for name in ("datasets", "artifacts", "state"):
        shutil.copytree(trained / name, workspace.root / name)
    # Paths in the manifests are relative to the project root, as in a real checkout.
    return workspace


def test_eval_writes_the_report_and_exit_code_reflects_the_gate(project, tiny_model_dir):
    cfg = eval_config(project, tiny_model_dir, {"gate": LENIENT_GATE})
    result = project.run("eval", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    assert "Gate: PASS" in result.output and "make promote" in result.output
    folder = next((project.root / "artifacts" / "evals").glob("eval-*"))
    report = json.loads((folder / "report.json").read_text())
    assert set(report["contenders"]) == {"candidate", "baseline"}
    assert set(report["suites"]) == {"validation", "regression", "instruction_following", "arithmetic", "refusal"}
    validation = report["suites"]["validation"]
    n_validation = len(read_jsonl(Path(report["split"]["path"]) / "validation.jsonl"))
    assert validation["n"] == n_validation
    assert validation["comparisons"]["baseline"]["f1"]["n"] == n_validation
    assert {"f1", "exact_match", "format_valid"} <= set(validation["contenders"]["candidate"]["metrics"])
    assert validation["contenders"]["baseline"]["tokens"]["prompt_per_query"] > \
        validation["contenders"]["candidate"]["tokens"]["prompt_per_query"]  # the strong prompt costs more
    assert report["suites"]["arithmetic"]["primary_metric"] == "accuracy"
    # Answer quality split by whether the logged contexts held the answer (every item in one group).
    groups = validation["by_context"]["groups"]
    assert sum(g["n"] for g in groups.values()) == n_validation
    assert set(groups["answer in context"]["contenders"]) == {"candidate", "baseline"}
    assert report["suites"]["arithmetic"]["by_context"] is None
    for contender in ("candidate", "baseline"):
        for suite in report["suites"]:
            rows = read_jsonl(folder / "predictions" / contender / f"{suite}.jsonl")
            assert len(rows) == report["suites"][suite]["n"]
            assert all("prediction" in r and "scores" in r for r in rows)
    page = (folder / "report.html").read_text()
    assert "<svg" in page and "beats_baseline" in page and "Wins on validation" in page
    assert "did the logged contexts contain the answer?" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["run"]["id"] == report["run"]["id"] and manifest["split"]["id"] == report["split"]["id"]
    assert manifest["cache"]["candidate"]["generated"] > 0

    # The default gate on an untrained-looking tiny model fails: exit 3, champion unchanged.
    strict = eval_config(project, tiny_model_dir)
    failed = project.run("eval", "--config", str(strict))
    assert failed.exit_code == 3, failed.output
    assert "Gate: FAIL" in failed.output and "[FAIL] beats_baseline" in failed.output


def test_rerun_is_a_no_op_and_the_cache_serves_a_forced_rerun(project, tiny_model_dir):
    cfg = eval_config(project, tiny_model_dir, {"gate": LENIENT_GATE})
    assert project.run("eval", "--config", str(cfg)).exit_code == 0
    again = project.run("eval", "--config", str(cfg))
    assert again.exit_code == 0 and "Nothing to do" in again.output
    forced = project.run("eval", "--config", str(cfg), "--force")
    assert forced.exit_code == 0, forced.output
    folder = next((project.root / "artifacts" / "evals").glob("eval-*"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["cache"]["candidate"]["generated"] == 0
    assert manifest["cache"]["baseline"]["generated"] == 0
    assert manifest["cache"]["candidate"]["cached"] == manifest["cache"]["candidate"]["prompts"]
    # New decoding settings are a different key: everything is generated again.
    longer = eval_config(project, tiny_model_dir, {"gate": LENIENT_GATE, "max_new_tokens": 7})
    assert project.run("eval", "--config", str(longer)).exit_code == 0
    latest = (project.root / "artifacts" / "evals" / "LATEST").read_text().strip()
    manifest = json.loads((project.root / "artifacts" / "evals" / latest / "manifest.json").read_text())
    assert manifest["cache"]["candidate"]["cached"] == 0


@pytest.fixture(scope="module")
def wandering_model(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny Llama with wider initial weights than the shared one, so greedy decoding
    wanders through the vocabulary instead of repeating one token: a real test of padding,
    prefix sharing and early exit."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from evals.providers import HFModel

    target = tmp_path_factory.mktemp("wandering")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return HFModel(str(target), None)


def prompts_for(model, shared_system: bool):
    system = [{"role": "system", "content": "Refunds are available within 30 days of purchase. " * 4}] if shared_system else []
    return [model.render(system + [{"role": "user", "content": "How do I reset my password? " * k}]) for k in range(1, 8)]


@pytest.mark.parametrize("shared_system", [False, True])
def test_greedy_predictions_do_not_depend_on_the_batch_size(wandering_model, shared_system):
    prompts = prompts_for(wandering_model, shared_system)
    outputs = {size: [g.text for g in wandering_model.generate(prompts, batch_size=size, max_new_tokens=12)]
               for size in (1, 3, 8)}
    assert outputs[1] == outputs[3] == outputs[8]
    assert len(set(outputs[1])) > 1  # not a degenerate constant output


@pytest.mark.parametrize("shared_system", [False, True])
def test_decoding_matches_transformers_generate(wandering_model, shared_system):
    """The decoding loop (shared prefix computed once, rows leaving the batch when they end)
    gives exactly what transformers' own greedy generate gives."""
    import torch

    model = wandering_model
    prompts = prompts_for(model, shared_system)
    encoded = [model.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    if shared_system:  # the prefix path is taken
        assert sum(1 for a, b in zip(encoded[0], encoded[-1]) if a == b) >= model.MIN_SHARED_PREFIX
    ours = [g.text for g in model.generate(prompts, batch_size=8, max_new_tokens=12)]
    tok = model.tokenizer
    reference = []
    for ids in encoded:  # one prompt at a time: no padding at all in the reference
        with torch.inference_mode():
            out = model.load().generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=12, do_sample=False, temperature=None, top_p=None, top_k=None,
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        reference.append(tok.decode(out[0, len(ids):], skip_special_tokens=True).strip())
    assert ours == reference


def test_errors_exit_1_with_a_clear_message(workspace, tiny_model_dir):
    cfg = eval_config(workspace, tiny_model_dir)
    result = workspace.run("eval", "--config", str(cfg))
    assert result.exit_code == 1
    assert "no trained run" in result.output.lower() or "make train" in result.output


def test_user_suites_in_squad_and_gsm8k_shapes(project, tiny_model_dir):
    squad = {"data": [{"title": "Normans", "paragraphs": [{"context": "The Normans lived in Normandy.", "qas": [
        {"id": "q1", "question": "Where did the Normans live?", "answers": [{"text": "Normandy"}], "is_impossible": False},
        {"id": "q2", "question": "Who was their king?", "answers": [], "is_impossible": True}]}]}]}
    (project.root / "squad.json").write_text(json.dumps(squad))
    (project.root / "gsm.jsonl").write_text(json.dumps({"question": "2 + 3?", "answer": "2+3=5\n#### 5"}) + "\n")
    cfg = eval_config(project, tiny_model_dir, {"gate": LENIENT_GATE, "suites": {
        "guards": [], "user": [{"name": "squad", "path": "squad.json"}, {"name": "gsm", "path": "gsm.jsonl"}]}})
    cfg_data = __import__("yaml").safe_load(cfg.read_text())
    cfg_data["eval"]["gate"]["guard_suites"] = ["regression"]
    cfg.write_text(__import__("yaml").safe_dump(cfg_data))
    result = project.run("eval", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    folder = next((project.root / "artifacts" / "evals").glob("eval-*"))
    report = json.loads((folder / "report.json").read_text())
    assert report["suites"]["squad"]["n"] == 2 and report["suites"]["gsm"]["primary_metric"] == "accuracy"
    labels = report["suites"]["squad"]["contenders"]["candidate"]["labels"]
    assert set(labels) == {"answerable", "unanswerable"}


def test_scores_of_fixed_predictions():
    from evals.runner import score
    from pipelines.config import load_config

    config = load_config()
    item = {"scorer": "rag", "answerable": True, "answers": ["within 30 days"],
            "contexts": [{"id": "refund-policy", "text": "Refunds are available within 30 days of purchase."}]}
    good = score(item, json.dumps({"answer": "Within 30 days [refund-policy].", "citations": ["refund-policy"]}), config)
    assert good["exact_match"] == 1.0 and good["f1"] == 1.0 and good["format_valid"] == 1.0
    assert good["citation_valid"] == 1 and good["false_refusal"] == 0.0 and good["refusal_accuracy"] is None
    idk = json.dumps({"answer": config.output.idk_answer, "citations": []})
    refused = score(item, idk, config)
    assert refused["false_refusal"] == 1.0 and refused["f1"] == 0.0
    unanswerable = {**item, "answerable": False, "answers": []}
    right = score(unanswerable, idk, config)
    assert right["refusal_accuracy"] == 1.0 and right["f1"] == 1.0 and right["f1_no_answer"] == 1.0
    wrong = score(unanswerable, json.dumps({"answer": "Yes [refund-policy].", "citations": ["refund-policy"]}), config)
    assert wrong["refusal_accuracy"] == 0.0 and wrong["f1"] == 0.0


def test_champion_refusals():
    from evals.gate import champion_refusals

    passed = {"passed": True, "failed": []}
    failed = {"passed": False, "failed": ["beats_baseline", "format_floor"]}
    assert champion_refusals(passed, champion_source="registry", measured="3", current="3", version="4") == []
    assert champion_refusals(passed, champion_source="registry", measured=None, current=None, version="1") == []
    assert champion_refusals(failed, champion_source="registry", measured="3", current="3", version="4") == [
        "the gate failed: beats_baseline, format_floor"]
    stale = "the champion moved since this eval measured against it (3 -> 5); run `make eval` again"
    assert champion_refusals(passed, champion_source="registry", measured="3", current="5", version="4") == [stale]
    assert champion_refusals(failed, champion_source="registry", measured="3", current="5", version="4") == [
        "the gate failed: beats_baseline, format_floor", stale]
    assert champion_refusals(passed, champion_source="registry", measured=None, current="2", version="4") == [
        "the champion moved since this eval measured against it (none -> 2); run `make eval` again"]
    # Already the champion, or a champion not taken from the registry: nothing is stale.
    assert champion_refusals(passed, champion_source="registry", measured="3", current="4", version="4") == []
    assert champion_refusals(passed, champion_source="none", measured=None, current="5", version="4") == []


def test_guard_suite_names_come_from_the_suites_table():
    from evals.scorers import SCORERS
    from evals.suites import GUARD_DIR, GUARD_SUITES, SUITES
    from pipelines.config import ConfigError, load_config

    for name in GUARD_SUITES:
        assert (GUARD_DIR / f"{name}.jsonl").exists() and SUITES[name].scorer in SCORERS
    assert set(load_config().eval.suites.guards) <= set(GUARD_SUITES)
    with pytest.raises(ConfigError) as error:
        load_config(overrides={"eval.suites.guards": ["arithmetic", "arithmetik"]})
    message = str(error.value)
    assert "eval.suites.guards" in message and "'arithmetik'" in message
    assert all(name in message for name in GUARD_SUITES)
