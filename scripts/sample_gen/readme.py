"""What the sample holds, counted from the generated records: the README (filled into
``source/README.template.md``) and the summary the generator prints."""

from __future__ import annotations

from collections import Counter
from string import Template

from .plan import CASE_COUNTS, CASE_NOTES
from .source import KB, README_TEMPLATE
from .text import DETECT, IDK_JSON, SIMILAR


def summarize(records, file_lines, malformed, writer):
    cases = Counter(e["case"] for _, _, e, _ in records)
    corrected = Counter(e["case"] for _, _, e, f in records if f["correction"])
    unlabelled = Counter(e["case"] for _, _, e, _ in records if e["unlabelled"])
    labels = Counter()
    for *_, f in records:
        fb = f["feedback"]
        labels.update(fb["labels"] if fb else [])
    pii_records = sum(1 for _, _, _, f in records if f["pii"])
    pii_context_only = sum(1 for _, _, _, f in records if f["pii"] == ["contexts"])
    unit_sizes = Counter(u for _, u, _, _ in records)
    total_lines = sum(file_lines)
    s = writer.stats
    return {"cases": cases, "corrected": corrected, "unlabelled": unlabelled, "labels": labels,
            "records": len(records), "total_lines": total_lines, "malformed": malformed,
            "pii_records": pii_records, "pii_context_only": pii_context_only,
            "session_records": s["session_records"], "sessions": sum(1 for k in unit_sizes.values() if k > 1),
            "near_dups": {k: s[f"near_dup_{k}"] for k in ("paraphrase", "surface", "exact")},
            "multi_combos": Counter(" + ".join(e["labels"]) for _, _, e, _ in records if e["case"] == "multi_label"),
            "stats": s}


def pct(part, whole):
    return f"{100 * part / whole:.1f}"


def files_table(sizes, gen_count):
    n_stale = sum(1 for d in KB if d["stale_of"])
    n_pii = sum(1 for d in KB if d["pii"])
    desc = {"kb.jsonl": f"{len(KB)} knowledge-base docs `{{id, title, text}}` ({n_stale} stale variants, "
                        f"{n_pii} with planted PII)",
            "general.jsonl": f"{gen_count} general instruction items `{{id, query, answer}}` (replay data)"}
    rows = []
    for name, (nlines, nbytes) in sizes.items():
        d = desc.get(name, "assistant logs, one JSON object per line" + (" (gzip)" if name.endswith(".gz") else ""))
        rows.append(f"| `{name}` | {nlines} | {nbytes} | {d} |")
    return "\n".join(rows)


def case_table(summary):
    n = summary["records"]
    rows = []
    for case in CASE_COUNTS:
        c = summary["cases"][case]
        rows.append(f"| {case} | {c} | {pct(c, n)}% | {summary['corrected'][case]} | "
                    f"{summary['unlabelled'][case]} | {CASE_NOTES[case]} |")
    rows.append(f"| **total** | {n} | 100% | {sum(summary['corrected'].values())} | "
                f"{sum(summary['unlabelled'].values())} | |")
    return "\n".join(rows)


def bullets(counts):
    return "\n".join(f"- `{k}`: {v}" for k, v in counts)


def readme_text(summary, sizes, gen_count, unans_count):
    n, nd, st, m = summary["records"], summary["near_dups"], summary["stats"], summary["malformed"]
    stat_slots = ("pii_in_query", "pii_in_correction", "pii_in_comment", "pii_in_response", "cites_id_not_in_context",
                  "relevant_not_first")
    return Template(README_TEMPLATE).substitute(
        files_table=files_table(sizes, gen_count), idk_json=IDK_JSON, n=n, case_table=case_table(summary),
        multi_combos=bullets(sorted(summary["multi_combos"].items())),
        label_counts=bullets(sorted(summary["labels"].items())),
        sessions=summary["sessions"], session_records=summary["session_records"],
        session_share=pct(summary["session_records"], n),
        near_dups=sum(nd.values()), near_dup_share=pct(sum(nd.values()), n), paraphrases=nd["paraphrase"],
        surface=nd["surface"], exact=nd["exact"], detectable=st["detectable_near_dups"], detect=DETECT,
        similar=SIMILAR, pii_records=summary["pii_records"], pii_share=pct(summary["pii_records"], n),
        pii_context_only=summary["pii_context_only"], unanswerable=unans_count,
        malformed=len(m), total_lines=summary["total_lines"], malformed_share=pct(len(m), summary["total_lines"]),
        malformed_kinds=bullets(Counter(kind for kind, _ in m).items()),
        **{k: st[k] for k in stat_slots})


def print_summary(out, sizes, summary):
    print(f"wrote {out}")
    for name, (nlines, nbytes) in sizes.items():
        print(f"  {name:28s} {nlines:5d} lines {nbytes:9d} bytes")
    n = summary["records"]
    print(f"\n{n} well-formed records by case:")
    for case in CASE_COUNTS:
        c = summary["cases"][case]
        print(f"  {case:26s} {c:4d} {100 * c / n:5.1f}%  corrections {summary['corrected'][case]:3d}"
              f"  unlabelled {summary['unlabelled'][case]:3d}")
    nd = summary["near_dups"]
    print(f"\nsessions: {summary['sessions']} holding {summary['session_records']} records "
          f"({100 * summary['session_records'] / n:.1f}%)")
    print(f"near-duplicate queries: {sum(nd.values())} ({100 * sum(nd.values()) / n:.1f}%) {dict(nd)}; "
          f"{summary['stats']['detectable_near_dups']} at char-5-gram Jaccard >= {DETECT}, "
          f"{summary['stats']['framing_fallback']} framing fallbacks")
    print(f"records with PII/secrets: {summary['pii_records']} ({100 * summary['pii_records'] / n:.1f}%)")
    m = len(summary["malformed"])
    print(f"malformed lines: {m} of {summary['total_lines']} ({100 * m / summary['total_lines']:.1f}%), "
          f"plus a BOM and one valid ~300 KB line")
