"""The gate cannot be passed by refusing, nor by never refusing; guards say how small a loss
they could see; conclusions know that a false-refusal rate is better lower.

The candidates here are behaviours, not trained models: their answers are put in the
generation cache under the exact keys `refit eval` looks up (the same model key, rendered
prompt and decoding settings), so the real CLI reads, scores and judges them as it would a
model's. The baseline answers like an oracle: the gold answer on answerable items, the
refusal sentence on the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_eval import eval_config, project, trained  # noqa: F401  (fixtures)

CORRECT_GUARDS = {"min_improvement": 0.0, "champion_tolerance": 0.02, "guard_margin": 0.05, "format_floor": 0.0}


def _oracle(item: dict, idk: str) -> str:
    cid = item["contexts"][0]["id"] if item["contexts"] else "doc"
    if not item["answerable"]:
        return json.dumps({"answer": idk, "citations": []})
    return json.dumps({"answer": f"{item['answers'][0]} [{cid}]", "citations": [cid]})


def _refuse_all(item: dict, idk: str) -> str:
    return json.dumps({"answer": idk, "citations": []})


def _never_refuse(item: dict, idk: str) -> str:
    if item["answerable"]:
        return _oracle(item, idk)
    cid = item["contexts"][0]["id"] if item["contexts"] else "doc"
    return json.dumps({"answer": f"It opened in 1900 [{cid}].", "citations": [cid]})


def plant(cfg_path: Path, candidate_answer) -> None:
    """Every prompt of every contender answered in the cache: rag items by the oracle
    (baseline) or `candidate_answer` (candidate), other suites the same text for both."""
    from evals.providers import Generation, GenerationCache
    from evals.runner import _model_for, gather_inputs, render
    from pipelines.config import load_config

    config = load_config(cfg_path)
    inputs = gather_inputs(config)
    idk = config.output.idk_answer
    cache = GenerationCache(Path(config.eval.cache))
    for contender in inputs.contenders:
        model, decoding = _model_for(contender, config)
        answer = candidate_answer if contender.name == "candidate" else _oracle
        rows = []
        for suite in inputs.suites:
            for item in suite.items:
                text = answer(item, idk) if item["scorer"] == "rag" else "42"
                prompt = model.render(render(item, contender, config, inputs.baseline_prompt["few_shot"]))
                rows.append((GenerationCache.key(model.key, prompt, decoding), Generation(text, 100, 10)))
        cache.put_many(model.key, rows)
    cache.close()


def _rules(report: dict) -> dict:
    return {r["rule"]: r for r in report["gate"]["rules"]}


def _latest_report(root: Path) -> dict:
    latest = (root / "artifacts" / "evals" / "LATEST").read_text().strip()
    return json.loads((root / "artifacts" / "evals" / latest / "report.json").read_text())


def test_a_candidate_that_always_refuses_fails_on_over_refusal(project, tiny_model_dir):  # noqa: F811
    cfg = eval_config(project, tiny_model_dir, {"gate": CORRECT_GUARDS})
    plant(cfg, _refuse_all)
    result = project.run("eval", "--config", str(cfg))
    assert result.exit_code == 3, result.output
    assert "[FAIL] not_over_refusing: over-refuses: 100.0% of answerable questions vs 0.0%" in result.output
    assert "[FAIL] answers_hold" in result.output
    report = _latest_report(project.root)
    rules = _rules(report)
    assert not rules["not_over_refusing"]["passed"] and rules["not_over_refusing"]["value"] == pytest.approx(1.0)
    assert rules["answers_hold"]["value"] == pytest.approx(-1.0)
    # The report's conclusions: a false-refusal rate that rose is worse, not "better".
    cmp = report["suites"]["validation"]["comparisons"]["baseline"]["false_refusal"]
    assert cmp["delta"] == pytest.approx(1.0) and cmp["conclusion"].startswith("worse:")
    page = (project.root / "artifacts" / "evals" / report["id"] / "report.html").read_text()
    assert "not_over_refusing" in page and "over-refuses: 100.0% of answerable questions" in page


def test_a_candidate_that_never_refuses_fails_on_the_refusal_guard(project, tiny_model_dir):  # noqa: F811
    cfg = eval_config(project, tiny_model_dir, {"gate": CORRECT_GUARDS})
    plant(cfg, _never_refuse)
    result = project.run("eval", "--config", str(cfg))
    assert result.exit_code == 3, result.output
    rules = _rules(_latest_report(project.root))
    assert rules["not_over_refusing"]["passed"] and rules["answers_hold"]["passed"]
    assert "[FAIL] guard:refusal" in result.output and not rules["guard:refusal"]["passed"]
    assert rules["guard:refusal"]["value"] < -0.05  # it answers what it should refuse


def test_the_oracle_itself_passes_every_refusal_rule(project, tiny_model_dir):  # noqa: F811
    cfg = eval_config(project, tiny_model_dir, {"gate": CORRECT_GUARDS})
    plant(cfg, _oracle)
    result = project.run("eval", "--config", str(cfg))
    rules = _rules(_latest_report(project.root))
    assert rules["not_over_refusing"]["passed"] and rules["answers_hold"]["passed"], result.output
    assert rules["guard:refusal"]["passed"]
    assert "refuses: 0.0% of answerable questions vs 0.0%" in result.output


def test_guards_state_the_smallest_loss_they_could_detect(project, tiny_model_dir):  # noqa: F811
    from evals.power import detectable_loss

    cfg = eval_config(project, tiny_model_dir, {"gate": CORRECT_GUARDS})
    plant(cfg, _never_refuse)
    result = project.run("eval", "--config", str(cfg))
    report = _latest_report(project.root)
    guard = _rules(report)["guard:refusal"]
    cmp = report["suites"]["refusal"]["comparisons"]["baseline"]["f1"]
    expected = detectable_loss(cmp, report["confidence"], 0.05)
    assert guard["detectable_loss"] == expected["loss"] and expected["statement"] in guard["detail"]
    # Six guard items: no guard this small can see a 0.05 loss, and it says so.
    assert f"smallest loss detectable at n={cmp['n']}: 1.000" in guard["detail"]
    assert "cannot tell such a loss from noise" in result.output


def test_detectable_loss_numbers():
    from evals.power import detectable_loss, sign_test_items

    assert sign_test_items(0.95) == 6  # 2 * 0.5**6 = 0.031 < 0.05 < 2 * 0.5**5
    # n=400, a 95% interval +-0.05: SE 0.0255, MDE (1.960 + 0.842) * 0.0255 = 0.0715 (above 6/400).
    big = detectable_loss({"n": 400, "low": -0.05, "high": 0.05}, 0.95, margin=0.1)
    assert big["loss"] == pytest.approx(0.0715, abs=5e-4) and "cannot tell" not in big["statement"]
    # Every pair tied (an interval of width zero): the sign test's floor, 6 items of 20.
    tied = detectable_loss({"n": 20, "low": 0.0, "high": 0.0}, 0.95, margin=0.05)
    assert tied["loss"] == pytest.approx(0.3) and "cannot tell such a loss from noise" in tied["statement"]


def test_a_false_refusal_rise_is_labelled_worse():
    from evals import metrics as M

    rose = M.paired_bootstrap([1.0] * 27 + [0.0] * 23, [0.0] * 50, resamples=500, seed=0,
                              higher_is_better="false_refusal" not in M.LOWER_IS_BETTER)
    assert rose["delta"] == pytest.approx(0.54) and rose["conclusion"].startswith("worse:")
    fell = M.paired_bootstrap([0.0] * 50, [1.0] * 27 + [0.0] * 23, resamples=500, seed=0, higher_is_better=False)
    assert fell["conclusion"].startswith("better:")
    assert M.paired_bootstrap([1.0] * 30, [0.0] * 30, resamples=500, seed=0)["conclusion"].startswith("better:")
