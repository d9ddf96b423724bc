"""What a registered version says about itself: its lineage as registry tags (`lineage_tags`,
searchable by any registry client) and its model card (`model_card`, for people).

The card is Markdown, one function per section: what the model is, what it was trained on and
how, how it did against the baseline and the champion (with intervals), the gate and guard
results, how to use it and where it is weak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.registry import TAG_EVAL, TAG_RUN, Evaluated, fmt_primary, model_name, now, primary, stage_manifest, who


def lineage_tags(config: PipelineConfig, ev: Evaluated) -> dict[str, str]:
    """The tags a version is registered with: where it came from and what its eval found."""
    run, report = ev.run, ev.report
    dataset = run.get("dataset") or ev.manifest.get("dataset") or {}
    base = run.get("base_model") or {}
    p = primary(report)
    champion = ev.manifest.get("champion") or {}
    tags = {
        "refit.pipeline": config.name,
        TAG_RUN: run["id"],
        "refit.backend": run.get("backend", "lora"),
        "refit.method": run.get("method", "sft"),
        "refit.base_model": str(base.get("id") or base.get("name") or config.model.base),
        "refit.dataset_id": str(dataset.get("id")),
        "refit.dataset_sha256": str(dataset.get("examples_sha256")),
        "refit.split_id": str((run.get("split") or {}).get("id")),
        "refit.config_hash": str(run.get("config_hash")),
        TAG_EVAL: ev.eval_id,
        "refit.eval_report": str(ev.path / "report.json"),
        "refit.eval_config_hash": str(ev.manifest.get("config_hash")),
        "refit.gate": "passed" if report["gate"]["passed"] else "failed",
        "refit.gate_failed": ",".join(report["gate"]["failed"]) or "none",
        "refit.primary": fmt_primary(report),
        "refit.primary_metric": f"{p.get('suite')}/{p.get('metric')}",
        "refit.champion_at_eval": str(champion.get("registry_version") or "none"),
        "refit.code_version": str(ev.manifest.get("code_version")),
    }
    for key in ("delta", "low", "high", "n"):
        if p.get(key) is not None:
            tags[f"refit.primary_{key}"] = f"{p[key]:.6g}" if isinstance(p[key], float) else str(p[key])
    if run.get("backend") == "openai":
        tags["refit.openai_model"] = run["openai"]["fine_tuned_model"]
        if base.get("shutdown_date"):  # the fine-tune answers only until its base snapshot is retired
            tags["refit.openai_shutdown_date"] = str(base["shutdown_date"])
    else:
        tags["refit.adapter"] = str(ev.run_path / run.get("adapter", {}).get("path", "adapter"))
    return tags



def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(m: dict[str, Any] | None, signed: bool = False) -> str:
    if not m or m.get("mean" if not signed else "delta") is None:
        return "n/a"
    value = m["delta"] if signed else m["mean"]
    f = "{:+.3f}" if signed else "{:.3f}"
    if m.get("low") is None:
        return f.format(value)
    return f"{f.format(value)} [{f.format(m['low'])}, {f.format(m['high'])}]"


def _upstream(run: dict[str, Any], key: str) -> dict[str, Any] | None:
    """The manifest of the dataset or split a run records, when it is still on disk."""
    ref = run.get(key) or {}
    return stage_manifest(Path(ref["path"])) if ref.get("path") else None


def intended_use(config: PipelineConfig) -> str:
    if config.registry.intended_use:
        return config.registry.intended_use
    fmt = ("a JSON object {\"answer\": ..., \"citations\": [...]}" if config.output.format == "json"
           else "prose with inline [doc-id] citations")
    return (f"Answering users' questions from the documents a retrieval system supplies, in {fmt}, citing the "
            f"documents it uses, and replying \"{config.output.idk_answer}\" when they lack the answer. Serve it "
            "with the same prompt template and system prompt it was trained with (below); the eval measured it "
            "that way. It is not a source of knowledge: questions whose answer is not in the retrieved documents "
            "are a retrieval problem (see the curated dataset's RAG backlog), and it was not evaluated beyond the "
            "suites listed above.")


def _header(config: PipelineConfig, version: Any, ev: Evaluated) -> list[str]:
    run, gate = ev.run, ev.report["gate"]
    mlflow_run = (run.get("mlflow") or {}).get("run_id")
    return [
        f"# {model_name(config)} v{version.version}",
        "",
        f"Gate: **{'PASS' if gate['passed'] else 'FAIL'}** ({gate['summary']}). Primary: {fmt_primary(ev.report)}.",
        f"Registered {now()} by {who()} from eval `{ev.eval_id}` (`{ev.path / 'report.json'}`); run `{run['id']}`"
        + (f", MLflow run `{mlflow_run}`" if mlflow_run else "") + ".",
    ]


def _model(config: PipelineConfig, ev: Evaluated) -> list[str]:
    run = ev.run
    lines = ["", "## Model", ""]
    if run.get("backend") == "openai":
        o = run["openai"]
        return lines + [f"- Backend: OpenAI fine-tuning; base model `{o.get('model')}`",
                        f"- Model id: `{o['fine_tuned_model']}` at {o.get('base_url') or 'the OpenAI API'}",
                        f"- Job: `{o.get('job_id')}`, {o.get('trained_tokens') or '?'} trained tokens"]
    base = run.get("base_model") or {}
    adapter = run.get("adapter", {})
    ident = f"`{base['id']}`, " if base.get("id") and base.get("id") != base.get("name") else ""
    return lines + [f"- Backend: LoRA adapter (PEFT format) on `{base.get('name', config.model.base)}` "
                    f"({ident}{base.get('parameters', 0):,} parameters)",
                    f"- Adapter: `{ev.run_path / adapter.get('path', 'adapter')}` "
                    f"({adapter.get('trainable_parameters', 0):,} trainable parameters), also under "
                    "`model/` in the MLflow run's artifacts"]


def _lineage(config: PipelineConfig, ev: Evaluated, curated: dict[str, Any] | None) -> list[str]:
    dataset = ev.run.get("dataset") or {}
    lines = ["", "## Data lineage", ""]
    if curated:
        c = curated["counts"]
        lines.append(f"- Logs: {len(curated.get('inputs', []))} file(s), {c['read']:,} lines read")
        for item in curated.get("inputs", [])[:20]:
            lines.append(f"  - `{item['path']}` (sha256 `{item['sha256'][:16]}...`)")
        sha = str(dataset.get("examples_sha256", "?"))[:16]
        lines.append(f"- Curated dataset `{curated['id']}` (examples sha256 `{sha}...`): "
                     f"{c['examples']} examples ({c['kept']} kept from the logs, "
                     f"{sum(c.get('added', {}).values())} derived), {c['backlog']} to the RAG backlog, "
                     f"{c['quarantined']} quarantined; decision: {curated['decision']['verdict']}")
        by_source = curated.get("examples_by_source") or {}
        if by_source:
            lines.append("- Examples by source: " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())))
    else:
        lines.append(f"- Curated dataset `{dataset.get('id')}` (examples sha256 `{dataset.get('examples_sha256')}`)")
    split_m = _upstream(ev.run, "split")
    if split_m:
        sc = split_m["counts"]
        lines.append(f"- Split `{split_m['id']}`: train {sc['train']}, validation {sc['validation']}, "
                     f"frozen regression set {sc['regression']} (`{config.regression_path()}`, never trained on)")
    else:
        lines.append(f"- Split `{(ev.run.get('split') or {}).get('id')}`")
    return lines


def _lora_settings(run: dict[str, Any]) -> list[tuple[str, Any]]:
    t = run.get("config") or {}
    lora = t.get("lora") or {}
    steps = run.get("steps") or {}
    hardware = run.get("hardware") or {}
    return [("LoRA rank / alpha / dropout", f"{lora.get('r')} / {lora.get('alpha')} / {lora.get('dropout')}"),
            ("target modules", ", ".join(lora.get("target_modules") or [])),
            ("adapted layers", f"top {lora['top_layers']}" if lora.get("top_layers") else "all"),
            ("steps", f"{steps.get('done')} of {steps.get('max')}" + (" (early stopped)" if steps.get("early_stopped")
                                                                      else "")),
            ("epochs / max steps", f"{t.get('epochs')} / {t.get('max_steps')}"),
            ("batch size x accumulation", f"{t.get('batch_size')} x {t.get('gradient_accumulation')}"),
            ("learning rate, schedule, warmup", f"{t.get('learning_rate')}, {t.get('lr_scheduler')}, "
                                                f"{t.get('warmup_fraction')}"),
            ("max length", t.get("max_length")),
            ("precision, batching, device", f"{hardware.get('precision')}, {hardware.get('batching')}, "
                                            f"{hardware.get('device')}"),
            ("seed", t.get("seed"))]


def _training(run: dict[str, Any]) -> list[str]:
    if run.get("backend") == "openai":
        hyper = run["openai"].get("hyperparameters") or {}
        method = "dpo" if run.get("method") == "dpo" else "supervised"
        settings = [("method", method), *((k, v) for k, v in hyper.items()),
                    ("suffix", run["openai"].get("suffix")), ("seed", run["openai"].get("seed"))]
    else:
        settings = [("method", run.get("method", "sft")), *_lora_settings(run)]
    if run.get("dpo"):
        settings.append(("DPO beta; last validation reward margin, accuracy",
                         f"{run['dpo']['beta']}; {run['dpo']['rewards'].get('margins')}, "
                         f"{run['dpo']['rewards'].get('accuracies')}"))
    losses = run.get("losses") or {}
    settings.append(("validation loss: base -> final (best)",
                     f"{_pct(losses.get('base_eval_loss'))} -> {_pct(losses.get('final_eval_loss'))} "
                     f"({_pct(losses.get('best_eval_loss'))})"))
    settings.append(("train config hash", f"`{str(run.get('config_hash'))[:16]}...`"))
    return ["", "## Training settings", "", "| setting | value |", "| --- | --- |",
            *(f"| {k} | {v} |" for k, v in settings)]


def _evaluation(config: PipelineConfig, report: dict[str, Any]) -> list[str]:
    level = f"{report.get('confidence', 0.95):.0%}"
    others = [c for c in report["contenders"] if c != "candidate"]
    header = ["suite", "n", "metric", "candidate"] + [f"{o}" for o in others] + [f"candidate - {o}" for o in others]
    lines = ["", f"## Evaluation ({level} bootstrap intervals)", "",
             "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    first = (report["gate"].get("primary") or {}).get("suite", "validation")
    order = sorted(report["suites"],
                   key=lambda n: (n != first, n != "regression", n not in config.eval.suites.guards, n))
    for name in order:
        suite = report["suites"][name]
        metric = suite["primary_metric"]
        row = [name, str(suite["n"]), metric, _ci(suite["contenders"]["candidate"]["metrics"].get(metric))]
        row += [_pct((suite["contenders"].get(o, {}).get("metrics", {}).get(metric) or {}).get("mean")) for o in others]
        row += [_ci(suite["comparisons"].get(o, {}).get(metric), signed=True) for o in others]
        lines.append("| " + " | ".join(row) + " |")
    contenders = "; ".join(f"{k}: {v['model']}" + (f" (registry v{v['registry_version']})"
                                                   if v.get("registry_version") else "")
                           for k, v in report["contenders"].items())
    return lines + ["", f"Contenders: {contenders}."]


def _gate(gate: dict[str, Any]) -> list[str]:
    lines = ["", "## Gate and guard results", "", "| rule | result | value | needs | detail |",
             "| --- | --- | --- | --- | --- |"]
    for r in gate["rules"]:
        value = "n/a" if r["value"] is None else f"{r['value']:+.3f}"
        lines.append(f"| {r['rule']} | {'pass' if r['passed'] else 'FAIL'} | {value} | {r['threshold']} | "
                     f"{r['detail'].replace('|', '/')} |")
    return lines


def _intended_use(config: PipelineConfig) -> list[str]:
    system = config.prompt.system.replace("{idk}", config.output.idk_answer)
    return ["", "## Intended use", "", intended_use(config), "", "System prompt:", "",
            *("> " + line for line in system.splitlines())]


def _failure_labels(report: dict[str, Any], curated: dict[str, Any] | None) -> list[str]:
    lines = ["", "## Known failure labels", ""]
    suite_name = (report["gate"].get("primary") or {}).get("suite", "validation")
    primary_suite = report["suites"].get(suite_name)
    if primary_suite:
        metric = primary_suite["primary_metric"]
        labels = primary_suite["contenders"]["candidate"].get("labels") or {}
        base_labels = (primary_suite["contenders"].get("baseline") or {}).get("labels") or {}
        ranked = sorted(((lab, v) for lab, v in labels.items() if v.get(metric) is not None),
                        key=lambda kv: kv[1][metric])
        if ranked:
            lines += [f"Per failure label on {suite_name} ({metric}, weakest first):", "",
                      "| label | n | candidate | baseline |", "| --- | --- | --- | --- |"]
            lines += [f"| {lab} | {v['n']} | {_pct(v[metric])} | {_pct((base_labels.get(lab) or {}).get(metric))} |"
                      for lab, v in ranked]
            lines.append("")
    if curated:
        curated_labels = curated.get("labels") or {}
        knowledge = {lab: v.get("backlog", 0) for lab, v in curated_labels.items() if v.get("backlog")}
        if knowledge:
            lines.append("Not fixed by this model (routed to the RAG backlog): "
                         + ", ".join(f"{k} ({v})" for k, v in sorted(knowledge.items(), key=lambda kv: -kv[1])) + ".")
        weak = curated_labels.get("weak_reasoning", {}).get("filtered")
        if weak:
            lines.append(f"Not trained on: weak_reasoning ({weak} logs; a stronger base model or task decomposition).")
    return lines + [""]


def model_card(config: PipelineConfig, version: Any, ev: Evaluated) -> str:
    """Markdown: base model, data lineage, training settings, eval table with intervals,
    guard results, intended use and known failure labels."""
    curated = _upstream(ev.run, "dataset")
    sections = [_header(config, version, ev), _model(config, ev), _lineage(config, ev, curated), _training(ev.run),
                _evaluation(config, ev.report), _gate(ev.report["gate"]), _intended_use(config),
                _failure_labels(ev.report, curated)]
    return "\n".join(line for section in sections for line in section)
