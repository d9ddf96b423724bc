"""report.html: one self-contained page (inline CSS and SVG, no scripts, no downloads) that
says whether the candidate ships and why: the gate table, per-suite metric bars with their
intervals, the paired deltas, the per-label breakdown, token cost per query, and a sample of
the candidate's wins and losses with their contexts."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig

COLOURS = {"candidate": "#2563eb", "baseline": "#9ca3af", "champion": "#f59e0b"}
# The metrics drawn as bars and listed in the comparison tables.
SHOWN_METRICS = ["f1", "exact_match", "format_valid", "refusal_accuracy", "false_refusal", "citation_valid",
                 "groundedness", "accuracy"]

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#111;padding:0 16px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 16px} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top} th{background:#f5f5f5} .pass{color:#15803d;font-weight:600} .fail{color:#b91c1c;font-weight:600}
.num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#666} pre{white-space:pre-wrap;margin:0;
font-size:12px;max-height:220px;overflow:auto;background:#fafafa;padding:4px} .verdict{font-size:18px;padding:8px 12px;
border-radius:6px;display:inline-block} .vpass{background:#dcfce7} .vfail{background:#fee2e2}
.legend span{display:inline-block;margin-right:14px} .sw{width:10px;height:10px;display:inline-block;margin-right:4px}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _num(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def metric_bars(suite: dict[str, Any]) -> str:
    """Grouped horizontal bars, one group per metric, one bar per contender, with the 95%
    bootstrap interval of each mean as a whisker."""
    names = [m for m in SHOWN_METRICS if any(
        (c["metrics"].get(m) or {}).get("mean") is not None for c in suite["contenders"].values())]
    contenders = list(suite["contenders"])
    row_h, label_w, plot_w = 14, 150, 520
    group_h = row_h * len(contenders) + 10
    height = group_h * len(names) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 70}" height="{height}" '
             f'font-size="11" font-family="system-ui,sans-serif">']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + tick * plot_w
        parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 20}" stroke="#eee"/>'
                     f'<text x="{x}" y="{height - 6}" text-anchor="middle" fill="#666">{tick:g}</text>')
    for g, name in enumerate(names):
        top = g * group_h
        parts.append(f'<text x="{label_w - 8}" y="{top + group_h / 2}" text-anchor="end">{_e(name)}</text>')
        for r, cname in enumerate(contenders):
            m = suite["contenders"][cname]["metrics"].get(name) or {}
            if m.get("mean") is None:
                continue
            y = top + r * row_h + 3
            w = max(m["mean"], 0) * plot_w
            parts.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{row_h - 3}" '
                         f'fill="{COLOURS.get(cname, "#555")}"><title>{_e(cname)} {name}: {m["mean"]:.3f} '
                         f'[{_num(m["low"])}, {_num(m["high"])}] n={m["n"]}</title></rect>')
            if m.get("low") is not None:
                x1, x2, ym = label_w + m["low"] * plot_w, label_w + m["high"] * plot_w, y + (row_h - 3) / 2
                parts.append(f'<line x1="{x1:.1f}" y1="{ym}" x2="{x2:.1f}" y2="{ym}" stroke="#111"/>'
                             f'<line x1="{x1:.1f}" y1="{ym - 3}" x2="{x1:.1f}" y2="{ym + 3}" stroke="#111"/>'
                             f'<line x1="{x2:.1f}" y1="{ym - 3}" x2="{x2:.1f}" y2="{ym + 3}" stroke="#111"/>')
            parts.append(f'<text x="{label_w + plot_w + 6}" y="{y + row_h - 4}" fill="#333">{m["mean"]:.3f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _header(report: dict[str, Any]) -> list[str]:
    gate = report["gate"]
    cls = "vpass" if gate["passed"] else "vfail"
    return [f"<!doctype html><html><head><meta charset='utf-8'><title>refit eval {_e(report['id'])}</title>"
            f"<style>{CSS}</style></head><body>",
            f"<h1>refit eval {_e(report['id'])}</h1>",
            f"<p class='muted'>pipeline {_e(report['pipeline'])} · run {_e(report['run']['id'])} "
            f"({_e(report['run']['backend'])}, {_e(report['run'].get('method', 'sft'))}) · split {_e(report['split']['id'])} · {_e(report['created_at'])}</p>",
            f"<div class='verdict {cls}'>Gate: {_e(gate['summary'])}</div>"]


def _contenders(report: dict[str, Any]) -> list[str]:
    out = ["<h2>Contenders</h2><table><tr><th>name</th><th>model</th><th>backend</th><th>prompt</th>"
           "<th>run</th><th>registry version</th><th>dtype</th></tr>"]
    for name, c in report["contenders"].items():
        out.append(f"<tr><td><span class='sw' style='background:{COLOURS.get(name, '#555')}'></span>{_e(name)}</td>"
                   f"<td>{_e(c['model'])}</td><td>{_e(c['backend'])}</td><td>{_e(c['prompt'])}</td>"
                   f"<td>{_e(c['run_id'] or '-')}</td><td>{_e(c['registry_version'] or '-')}</td>"
                   f"<td>{_e(c.get('dtype') or '-')}</td></tr>")
    return [*out, "</table>"]


def _gate(report: dict[str, Any]) -> list[str]:
    out = ["<h2>Gate</h2><table><tr><th>rule</th><th>result</th><th>value</th><th>threshold</th><th>numbers</th></tr>"]
    for rule in report["gate"]["rules"]:
        status = "<span class='pass'>pass</span>" if rule["passed"] else "<span class='fail'>FAIL</span>"
        out.append(f"<tr><td>{_e(rule['rule'])}</td><td>{status}</td><td class='num'>{_num(rule['value'])}</td>"
                   f"<td>{_e(rule['threshold'])}</td><td>{_e(rule['detail'])}</td></tr>")
    return [*out, "</table>"]


def _token_cost(report: dict[str, Any]) -> list[str]:
    out = ["<h2>Token cost per query</h2><table><tr><th>suite</th><th>contender</th><th>prompt tokens</th>"
           "<th>completion tokens</th><th>USD per 1,000 queries</th></tr>"]
    for sname, suite in report["suites"].items():
        for cname, c in suite["contenders"].items():
            t = c["tokens"]
            out.append(f"<tr><td>{_e(sname)}</td><td>{_e(cname)}</td><td class='num'>{t['prompt_per_query']:,.1f}</td>"
                       f"<td class='num'>{t['completion_per_query']:,.1f}</td>"
                       f"<td class='num'>{t['cost_per_1000_queries']:.4f}</td></tr>")
    return [*out, "</table>"]


def _comparisons(suite: dict[str, Any], conf: str) -> list[str]:
    if not suite["comparisons"]:
        return []
    out = [f"<table><tr><th>metric</th><th>vs</th><th>delta (candidate - other)</th><th>{conf} CI</th>"
           "<th>n</th><th>conclusion</th></tr>"]
    for other, by_metric in suite["comparisons"].items():
        for name in SHOWN_METRICS:
            cmp = by_metric.get(name)
            if not cmp or cmp["n"] == 0:
                continue
            out.append(f"<tr><td>{_e(name)}</td><td>{_e(other)}</td><td class='num'>{_num(cmp['delta'], True)}</td>"
                       f"<td class='num'>[{_num(cmp['low'], True)}, {_num(cmp['high'], True)}]</td>"
                       f"<td class='num'>{cmp['n']}</td><td>{_e(cmp['conclusion'])}</td></tr>")
    return [*out, "</table>"]


def _labels(suite: dict[str, Any]) -> list[str]:
    labels = suite["contenders"]["candidate"]["labels"]
    if len(labels) <= 1:
        return []
    metric = suite["primary_metric"]
    out = ["<table><tr><th>label</th><th>n</th>" + "".join(
        f"<th>{_e(c)} {_e(metric)}</th>" for c in suite["contenders"]) + "<th>candidate format_valid</th></tr>"]
    for label, row in labels.items():
        cells = "".join(f"<td class='num'>{_num(suite['contenders'][c]['labels'][label].get(metric))}</td>"
                        for c in suite["contenders"])
        out.append(f"<tr><td>{_e(label)}</td><td class='num'>{row['n']}</td>{cells}"
                   f"<td class='num'>{_num(row.get('format_valid'))}</td></tr>")
    return [*out, "</table>"]


def _by_context(suite: dict[str, Any], conf: str) -> list[str]:
    """Answer quality split by whether the logged contexts held the answer (evals/context_split.py)."""
    split = suite.get("by_context")
    if not split:
        return []
    metric = split["metric"]
    contenders = list(suite["contenders"])
    out = [f"<h3>By retrieval: did the logged contexts contain the answer? <span class='muted'>({_e(metric)}; "
           f"delta: candidate - other, paired, {conf} CI)</span></h3><table><tr><th>group</th><th>n</th>"
           + "".join(f"<th>{_e(c)}</th>" for c in contenders)
           + "".join(f"<th>delta vs {_e(c)}</th>" for c in contenders[1:]) + "<th>refusal_accuracy (candidate)</th></tr>"]
    for group, g in split["groups"].items():
        cells = "".join(f"<td class='num'>{_num(g['contenders'][c].get(metric))}</td>" for c in contenders)
        deltas = "".join(f"<td class='num'>{_num(g['comparisons'][c]['delta'], True)} "
                         f"[{_num(g['comparisons'][c]['low'], True)}, {_num(g['comparisons'][c]['high'], True)}]</td>"
                         for c in contenders[1:])
        out.append(f"<tr><td>{_e(group)}</td><td class='num'>{g['n']}</td>{cells}{deltas}"
                   f"<td class='num'>{_num(g['contenders']['candidate'].get('refusal_accuracy'))}</td></tr>")
    return [*out, "</table>"]


def _suite_section(sname: str, suite: dict[str, Any], conf: str) -> list[str]:
    return [f"<h2>Suite: {_e(sname)} <span class='muted'>(n={suite['n']}, primary metric "
            f"{_e(suite['primary_metric'])}; bars: means with {conf} bootstrap intervals)</span></h2>",
            "<div class='legend'>" + "".join(
                f"<span><span class='sw' style='background:{COLOURS.get(n, '#555')}'></span>{_e(n)}</span>"
                for n in suite["contenders"]) + "</div>",
            metric_bars(suite), *_comparisons(suite, conf), *_by_context(suite, conf), *_labels(suite)]


def _wins_and_losses(report: dict[str, Any], suites: list[Any], generations: dict[str, dict[str, list[Any]]],
                     scores: dict[str, dict[str, list[dict[str, Any]]]], primary: str) -> list[str]:
    """Where the candidate and the baseline differ most on the primary suite."""
    suite = next((s for s in suites if s.name == primary), None)
    if suite is None or "baseline" not in scores:
        return []
    metric = report["suites"][primary]["primary_metric"]
    cand, base = scores["candidate"][primary], scores["baseline"][primary]
    deltas = [((c.get(metric) or 0.0) - (b.get(metric) or 0.0), i) for i, (c, b) in enumerate(zip(cand, base))]
    wins = [d for d in sorted(deltas, reverse=True) if d[0] > 0][:5]
    losses = [d for d in sorted(deltas) if d[0] < 0][:5]
    out = []
    for title, rows in (("Wins", wins), ("Losses", losses)):
        out.append(f"<h2>{title} on {_e(primary)} <span class='muted'>({metric}, candidate vs baseline; "
                   f"{len([d for d in deltas if (d[0] > 0) == (title == 'Wins') and d[0] != 0])} in all)</span></h2>")
        if not rows:
            out.append("<p class='muted'>none</p>")
            continue
        out.append("<table><tr><th>question and documents</th><th>gold</th><th>candidate</th><th>baseline</th></tr>")
        for delta, i in rows:
            item = suite.items[i]
            docs = "\n\n".join(f"[{c['id']}] {c['text'][:400]}" for c in item["contexts"])
            gold = " | ".join(item["answers"]) or "(no answer: should refuse)"
            out.append(f"<tr><td><b>{_e(item['query'])}</b> <span class='muted'>({_e(item['label'])}, "
                       f"delta {delta:+.2f})</span><pre>{_e(docs)}</pre></td><td>{_e(gold)}</td>"
                       f"<td><pre>{_e(generations['candidate'][primary][i].text)}</pre></td>"
                       f"<td><pre>{_e(generations['baseline'][primary][i].text)}</pre></td></tr>")
        out.append("</table>")
    return out


def write_html(report: dict[str, Any], suites: list[Any], generations: dict[str, dict[str, list[Any]]],
               scores: dict[str, dict[str, list[dict[str, Any]]]], config: PipelineConfig, target: Path) -> None:
    conf = f"{report['confidence']:.0%}"
    out = [*_header(report), *_contenders(report), *_gate(report), *_token_cost(report)]
    for sname, suite in report["suites"].items():
        out += _suite_section(sname, suite, conf)
    out += _wins_and_losses(report, suites, generations, scores, config.eval.gate.primary_suite)
    out.append("</body></html>")
    target.write_text("\n".join(out), encoding="utf-8")
