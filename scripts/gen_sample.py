#!/usr/bin/env python3
"""Generate the synthetic sample data shipped with refit in ``datasets/samples/``.

refit turns the failure logs of a RAG support assistant into fine-tuning data.
To develop and test that pipeline without real customer data, this script
writes a small, fully synthetic world around a fictional SaaS product,
"Tasklane" (a project-management / team task tracker), whose support
assistant answers questions from a knowledge base:

* ``kb.jsonl`` -- the knowledge base: short documents ``{"id", "title",
  "text"}``.  A few are stale variants of current docs (``pricing-2024`` vs
  ``pricing``) and two contain planted (fake) PII.
* ``logs/2026-10-01.jsonl``, ``logs/2026-10-08.jsonl`` and
  ``logs/2026-10-15.jsonl.gz`` -- three weeks of assistant logs, one JSON
  object per line (query, retrieved contexts, response, optional feedback and
  reviewer correction).  They mix correct answers, behaviour failures
  (bad_format, wrong_tone, policy_violation, missing_citation, hallucination,
  weak_reasoning, some of them unlabelled), knowledge failures
  (missing_knowledge, stale_knowledge, wrong_retrieval), multi-turn sessions,
  near-duplicate queries, planted fake PII and secrets, and a sprinkling of
  malformed lines (broken JSON, wrong types, invalid UTF-8, a BOM, an empty
  line, an oversized line) so every pipeline stage has something to do.
* ``general.jsonl`` -- general instruction-following items (arithmetic, unit
  conversion, rewriting, one-word answers, ...) used as a replay set against
  catastrophic forgetting.
* ``README.md`` -- what the files hold, with the counts printed below.

The assistant's ideal answer is a compact JSON object,
``{"answer": "... [doc-id].", "citations": ["doc-id"]}``, or exactly
``{"answer": "I don't know based on the provided documents.", "citations": []}``
when the contexts lack the answer.

Everything is derived from ``random.Random`` streams seeded from ``--seed``,
and gzip output uses ``mtime=0``, so two runs with the same seed write
byte-identical files.

The hand-written material (knowledge-base docs, unanswerable questions, how
users phrase things, reviewer comments, general items, the README's text) lives
in ``datasets/samples/source/`` (each file says what its keys mean); the code
that draws the sample from it is the ``sample_gen`` package beside this script:

* ``source``      loads ``datasets/samples/source/``
* ``plan``        how many records of each case, their flags, sessions, timestamps
* ``records``     each record's query, contexts, response, feedback, correction
* ``fake_pii``    the fake personal data and secrets it plants
* ``arithmetic``  the weak-reasoning (multi-step arithmetic) questions
* ``text``        answer format, framing, near-duplicate similarity
* ``log_files``   malformed lines, ids, the weekly files
* ``general``     general.jsonl
* ``readme``      the README and the printed summary

Usage::

    python scripts/gen_sample.py [--seed 7] [--out datasets/samples]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from sample_gen.general import general_items
from sample_gen.log_files import MALFORMED_PLAN, assemble_logs, gzip_bytes, malformed_lines
from sample_gen.plan import LOG_FILES, group_sessions, plan_entries, schedule
from sample_gen.readme import print_summary, readme_text, summarize
from sample_gen.records import LogWriter
from sample_gen.source import KB, build_unanswerable, check_kb

SAMPLES = Path(__file__).resolve().parent.parent / "datasets" / "samples"


def jsonl_bytes(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_sample(out, seed):
    """Write every file of the sample into ``out``; return the summary the README counts from."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rng_plan = random.Random(f"{seed}-plan")
    unanswerable = build_unanswerable()
    entries = plan_entries(rng_plan)
    units = group_sessions(rng_plan, entries)
    items = schedule(rng_plan, units)
    writer = LogWriter(random.Random(f"{seed}-records"), unanswerable)
    records = writer.generate(items, units)
    malformed = malformed_lines(random.Random(f"{seed}-malformed"))
    file_bytes, file_lines = assemble_logs(records, malformed)

    sizes = {}
    kb_data = jsonl_bytes({"id": d["id"], "title": d["title"], "text": d["text"]} for d in KB)
    (out / "kb.jsonl").write_bytes(kb_data)
    sizes["kb.jsonl"] = (len(KB), len(kb_data))
    for name, data, nlines in zip(LOG_FILES, file_bytes, file_lines):
        payload = gzip_bytes(data) if name.endswith(".gz") else data
        (out / "logs" / name).write_bytes(payload)
        sizes[f"logs/{name}"] = (nlines, len(payload))
    general = general_items(random.Random(f"{seed}-general"))
    gen_data = jsonl_bytes(general)
    (out / "general.jsonl").write_bytes(gen_data)
    sizes["general.jsonl"] = (len(general), len(gen_data))

    summary = summarize(records, file_lines, [(k, f) for k, f in MALFORMED_PLAN if k != "oversize"], writer)
    (out / "README.md").write_text(readme_text(summary, sizes, len(general), len(unanswerable)), encoding="utf-8")
    return sizes, summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--out", type=Path, default=SAMPLES, help="output folder (default datasets/samples)")
    args = parser.parse_args(argv)
    check_kb()
    sizes, summary = write_sample(args.out, args.seed)
    print_summary(args.out, sizes, summary)


if __name__ == "__main__":
    main()
