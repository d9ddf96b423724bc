"""The retrieval side of curate's reports: the "Retrieval health" section of report.md, and
report.html, one self-contained page (inline CSS, plots as embedded PNGs, a Content Security
Policy that allows nothing from outside, no scripts) with the accounting, the labels, the
decision, and the retrieval metrics of pipelines/rag_health.py: trends per log date, the
score-bucket curve with the low-confidence threshold, miss rate per topic, retriever versions.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from pipelines.curate_report import _table

# Trend lines drawn per log date, and the names people read.
TRENDS = {"retrieval_miss": "retrieval miss", "unsupported_answer": "unsupported answer",
          "ideal_in_context": "ideal answer in context", "refusal": "refusal", "correction": "correction"}
SHOWN = ["answer_in_context", "ideal_in_context", "retrieval_miss", "hit@1", "hit@3", "hit@5",
         "unsupported_answer", "citation_valid", "correction", "refusal", "failure"]
TOPICS_SHOWN = 20
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#111;padding:0 16px}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0 16px} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f5f5f5} .num{text-align:right;font-variant-numeric:tabular-nums} .muted{color:#666}
.verdict{font-size:18px;padding:8px 12px;border-radius:6px;display:inline-block;background:#e0e7ff}
img{max-width:100%;border:1px solid #eee}
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _rate(m: dict[str, Any] | None) -> str:
    if not m or m.get("rate") is None:
        return "n/a"
    return f"{m['rate']:.1%}"


def _ci(m: dict[str, Any] | None) -> str:
    if not m or m.get("low") is None:
        return "-"
    return f"[{m['low']:.1%}, {m['high']:.1%}]"


def _mrr(m: dict[str, Any]) -> tuple[str, str]:
    if m["mean"] is None:
        return "n/a", "-"
    return f"{m['mean']:.3f}", f"[{m['low']:.3f}, {m['high']:.3f}]"


def _signed(cmp: dict[str, Any]) -> str:
    if cmp.get("delta") is None:
        return "n/a"
    return f"{cmp['delta']:+.1%} [{cmp['low']:+.1%}, {cmp['high']:+.1%}]"


# --------------------------------------------------------------------------- rows shared by both reports


def overall_rows(group: dict[str, Any]) -> list[list[str]]:
    rows = [[name, _rate(group[name]), _ci(group[name]), f"{group[name]['k']} / {group[name]['n']}"] for name in SHOWN]
    mean, ci = _mrr(group["mrr"])
    return [*rows, ["mrr", mean, ci, f"n = {group['mrr']['n']}"]]


def topic_rows(health: dict[str, Any]) -> list[list[Any]]:
    """Topics with the most retrieval misses first."""
    topics = sorted(health["by_topic"].items(), key=lambda kv: (-kv[1]["retrieval_miss"]["k"], kv[0]))
    return [[topic, g["records"], _rate(g["retrieval_miss"]), _ci(g["retrieval_miss"]), _rate(g["answer_in_context"]),
             _rate(g["unsupported_answer"]), _mrr(g["mrr"])[0]] for topic, g in topics[:TOPICS_SHOWN]]


TOPIC_HEADER = ["topic", "records", "miss rate", "CI", "answer in context", "unsupported", "MRR"]
DATE_HEADER = ["date", "records", "miss rate", "CI", "unsupported", "ideal in context", "refusal", "correction"]
BUCKET_HEADER = ["top score", "records", "traffic", "harmful answers", "CI", "unsupported", "failure rate",
                 "refusals"]
VERSION_HEADER = ["from -> to", "metric", "paired delta (n)", "unpaired delta", "newer is"]


def date_rows(health: dict[str, Any]) -> list[list[Any]]:
    return [[date, g["records"], _rate(g["retrieval_miss"]), _ci(g["retrieval_miss"]), _rate(g["unsupported_answer"]),
             _rate(g["ideal_in_context"]), _rate(g["refusal"]), _rate(g["correction"])]
            for date, g in health["by_date"].items()]


def bucket_rows(threshold: dict[str, Any]) -> list[list[Any]]:
    return [[f"{b['low']:.3f}-{b['high']:.3f}", b["records"], f"{b['traffic_share']:.1%}", _rate(b["harmful"]),
             _ci(b["harmful"]), _rate(b["unsupported"]), _rate(b["failure"]), _rate(b["refusal"])]
            for b in threshold["buckets"]]


def version_rows(health: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for cmp in health["retriever_comparisons"]:
        for name, m in cmp["metrics"].items():
            paired = m["paired"]
            rows.append([f"{cmp['from']} -> {cmp['to']}", name,
                         f"{_signed(paired)} ({paired['n']})" if paired["n"] else "no shared queries",
                         _signed(m["unpaired"]), m["better"]])
    return rows


def version_summary_rows(health: dict[str, Any]) -> list[list[Any]]:
    return [[v, g["records"], _rate(g["retrieval_miss"]), _ci(g["retrieval_miss"]), _rate(g["answer_in_context"]),
             _rate(g["unsupported_answer"]), _mrr(g["mrr"])[0]] for v, g in health["by_retriever"].items()]


# --------------------------------------------------------------------------- report.md


def retrieval_markdown(m: dict[str, Any]) -> str:
    """The "Retrieval health" section appended to report.md."""
    h = m["retrieval"]
    t = h["threshold"]
    out = ["", "## Retrieval health (every valid record)", "",
           f"Retrieval measured apart from answers; definitions in pipelines/rag_health.py. Intervals: {h['intervals']}.",
           "", _table(["metric", "rate", f"{h['confidence']:.0%} CI", "k / n"], overall_rows(h["overall"])), "",
           "### Low-confidence threshold", "", t["recommendation"], ""]
    if t["buckets"]:
        out += [_table(BUCKET_HEADER, bucket_rows(t)), ""]
    out += ["### Per topic (most misses first)", "", _table(TOPIC_HEADER, topic_rows(h)), "",
            "### Per log date", "", _table(DATE_HEADER, date_rows(h)), ""]
    if h["by_retriever"]:
        out += ["### Per retriever version", "", _table(["version", *TOPIC_HEADER[1:]], version_summary_rows(h)), ""]
        if h["retriever_comparisons"]:
            out += [_table(VERSION_HEADER, version_rows(h)), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: render to memory
    import matplotlib.pyplot as plt

    return plt


def trend_plot(health: dict[str, Any]) -> str | None:
    """Each rate per log date, with its interval as a band."""
    dates = [d for d in health["by_date"] if d != "(no date)"]
    if not dates:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = list(range(len(dates)))
    for name, label in TRENDS.items():
        points = [health["by_date"][d][name] for d in dates]
        ys = [p["rate"] if p["rate"] is not None else float("nan") for p in points]
        line = ax.plot(x, ys, marker="o", label=label)[0]
        lows = [p["low"] if p["low"] is not None else float("nan") for p in points]
        highs = [p["high"] if p["high"] is not None else float("nan") for p in points]
        ax.fill_between(x, lows, highs, color=line.get_color(), alpha=0.12)
    step = max(1, len(dates) // 12)
    ax.set_xticks(x[::step], dates[::step], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate")
    ax.set_title("Retrieval and answer rates per log date (bands: 95% Wilson intervals)")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.3))
    ax.grid(alpha=0.3)
    return _png(fig)


def bucket_plot(threshold: dict[str, Any]) -> str | None:
    """Harmful-answer rate and traffic share per top-score bucket, with the threshold."""
    buckets = threshold["buckets"]
    if not buckets:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.6))
    mids = [(b["low"] + b["high"]) / 2 for b in buckets]
    width = (buckets[0]["high"] - buckets[0]["low"]) * 0.9
    ax.bar(mids, [b["traffic_share"] for b in buckets], width=width, color="#cbd5e1", label="share of traffic")
    harm = [b["harmful"] for b in buckets]
    ys = [h["rate"] if h["rate"] is not None else float("nan") for h in harm]
    err = [[y - (h["low"] if h["low"] is not None else y) for y, h in zip(ys, harm)],
           [(h["high"] if h["high"] is not None else y) - y for y, h in zip(ys, harm)]]
    ax.errorbar(mids, ys, yerr=err, marker="o", color="#b91c1c", capsize=3, label="harmful answers (of answered)")
    ax.plot(mids, [b["failure"]["rate"] for b in buckets], marker="^", color="#7c3aed", linestyle=":",
            label="failure rate (all)")
    ax.plot(mids, [b["refusal"]["rate"] for b in buckets], marker="s", color="#2563eb", label="refusals")
    if threshold.get("threshold") is not None:
        ax.axvline(threshold["threshold"], color="#111", linestyle="--",
                   label=f"threshold {threshold['threshold']:.3f}" + ("" if threshold["recommended"] else " (tentative)"))
    ax.axhline(0.5, color="#999", linewidth=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top retrieval score")
    ax.set_title("Answer outcomes by top retrieval score")
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    return _png(fig)


def topic_plot(health: dict[str, Any]) -> str | None:
    """Miss rate per topic (most misses first), with Wilson whiskers."""
    rows = sorted(health["by_topic"].items(), key=lambda kv: (-kv[1]["retrieval_miss"]["k"], kv[0]))[:TOPICS_SHOWN]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(rows) + 1.2))
    names = [name.replace("$", r"\$") for name, _ in rows][::-1]  # a "$" would start mathtext
    misses = [g["retrieval_miss"] for _, g in rows][::-1]
    rates = [m["rate"] or 0.0 for m in misses]
    err = [[r - (m["low"] or 0.0) for r, m in zip(rates, misses)], [(m["high"] or 0.0) - r for r, m in zip(rates, misses)]]
    ax.barh(names, rates, xerr=err, color="#f59e0b", capsize=2)
    for y, m in enumerate(misses):
        ax.text(1.01, y, f"{m['k']}/{m['n']}", va="center", fontsize=7, transform=ax.get_yaxis_transform())
    ax.set_xlim(0, 1)
    ax.set_xlabel("retrieval miss rate")
    ax.set_title("Retrieval miss rate per topic (most misses first; whiskers: 95% Wilson)")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# --------------------------------------------------------------------------- report.html


def _html_table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(uri: str | None, alt: str, figure_id: str) -> str:
    if uri is None:
        return f"<p class='muted'>No data for: {_e(alt)}.</p>"
    return f"<figure><img id='{figure_id}' alt='{_e(alt)}' src='{uri}'></figure>"


def _accounting(m: dict[str, Any]) -> list[str]:
    c = m["counts"]
    rows = [[c["read"], c["kept"], c["quarantined"], c["backlog"], sum(c["filtered"].values()),
             sum(c["added"].values()), c["examples"]]]
    labels = [[label, w.get("example", 0), w.get("backlog", 0), w.get("filtered", 0), sum(w.values())]
              for label, w in sorted(m["labels"].items(), key=lambda kv: -sum(kv[1].values()))]
    return ["<h2>Accounting</h2><p>Every input line is in exactly one column: read = kept + quarantined + backlog "
            "+ filtered.</p>",
            _html_table(["read", "kept", "quarantined", "backlog", "filtered", "added (derived)", "examples"], rows),
            "<h2>Where each label went</h2>", _html_table(["label", "example", "backlog", "filtered", "total"], labels)]


def _decision(m: dict[str, Any]) -> list[str]:
    d = m["decision"]
    rows = [[d["failures"], d["knowledge_failures"], d["behaviour_failures"], d["trainable_examples"],
             _rate({"rate": d["retrieval_miss"]}), _rate({"rate": d["ideal_in_context"]}),
             _rate({"rate": d["unsupported_answer"]})]]
    return ["<h2>Decision</h2>", f"<div class='verdict' id='verdict'>{_e(d['verdict'])}</div>",
            f"<p>{_e(d['why'])}.</p>",
            _html_table(["failures", "knowledge", "behaviour", "trainable examples", "retrieval miss",
                         "ideal in context", "unsupported answers"], rows)]


def _retrieval(h: dict[str, Any]) -> list[str]:
    t = h["threshold"]
    out = ["<h2>Retrieval health <span class='muted'>(every valid record)</span></h2>",
           f"<p class='muted'>Definitions: pipelines/rag_health.py. Intervals: {_e(h['intervals'])}.</p>",
           _html_table(["metric", "rate", f"{h['confidence']:.0%} CI", "k / n"], overall_rows(h["overall"])),
           "<h2>Trends per log date</h2>", _figure(trend_plot(h), "rates per log date", "plot-trends"),
           _html_table(DATE_HEADER, date_rows(h)),
           "<h2>Low-confidence threshold</h2>", f"<p id='threshold'>{_e(t['recommendation'])}</p>",
           _figure(bucket_plot(t), "answer outcomes by top retrieval score", "plot-buckets")]
    if t["buckets"]:
        out.append(_html_table(BUCKET_HEADER, bucket_rows(t)))
    out += ["<h2>Miss rate per topic</h2>", _figure(topic_plot(h), "retrieval miss rate per topic", "plot-topics"),
            _html_table(TOPIC_HEADER, topic_rows(h))]
    if h["by_retriever"]:
        out += ["<h2>Per retriever version</h2>",
                _html_table(["version", *TOPIC_HEADER[1:]], version_summary_rows(h))]
        if h["retriever_comparisons"]:
            out.append(_html_table(VERSION_HEADER, version_rows(h)))
    return out


def render_html(m: dict[str, Any], backlog_entries: list[dict[str, Any]]) -> str:
    head = (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">"
            f"<title>refit curate {_e(m['id'])}</title><style>{CSS}</style></head><body>")
    out = [head, f"<h1>Curation report: {_e(m['id'])}</h1>",
           f"<p class='muted'>{len(m['inputs'])} input file(s), {m['counts']['read']} lines read; created "
           f"{_e(m['created_at'])} by refit {_e(m['code_version'])}.</p>",
           *_decision(m), *_accounting(m), *_retrieval(m["retrieval"]), "<h2>RAG backlog (top topics)</h2>",
           _html_table(["label", "topic", "records", "keywords"],
                       [[e["label"], e["topic"], e["count"], ", ".join(e["keywords"][:5])] for e in backlog_entries[:15]])
           if backlog_entries else "<p>Empty.</p>", "</body></html>"]
    return "\n".join(out)
