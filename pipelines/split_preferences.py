"""split's share of the preference pairs: each pair goes to the set of its example (same
groups, so no leakage), then `<set>.preferences.jsonl` (our records) and
`<set>.dpo.openai.jsonl` (OpenAI's preference format: `input.messages`, `preferred_output`,
`non_preferred_output`), checked with the same rules the OpenAI backend applies before it
uploads and the local server applies when a DPO job validates its files.

A pair whose example is in the regression set, or was held out near it, is in no set.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from pipelines.config import PipelineConfig
from pipelines.openai_format import FormatError, billing_estimate, check_dpo_lines
from pipelines.storage import iter_jsonl, write_bytes_atomic
from pipelines.template import render_messages

SETS = ("train", "validation")


def read_pairs(curated: Path) -> list[dict[str, Any]]:
    """The curated dataset's pairs ([] for a dataset curated before pairs existed)."""
    path = curated / "preferences.jsonl"
    return list(iter_jsonl(path)) if path.exists() else []


def assign(pairs: list[dict[str, Any]], sets: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Each pair in the set of its example; pairs of regression or held-out examples in none."""
    where = {e["id"]: name for name, items in sets.items() for e in items}
    out: dict[str, list[dict[str, Any]]] = {name: [] for name in SETS}
    for pair in pairs:
        name = where.get(pair["example_id"])
        if name in out:
            out[name].append(pair)
    return out


def dpo_line(pair: dict[str, Any], config: PipelineConfig) -> dict[str, Any]:
    """One pair in OpenAI's preference format, its prompt rendered by the one template."""
    prompt = render_messages(pair, config.prompt, config.output, with_answer=False)
    return {"input": {"messages": prompt},
            "preferred_output": [{"role": "assistant", "content": pair["chosen"]}],
            "non_preferred_output": [{"role": "assistant", "content": pair["rejected"]}]}


def write_preferences(tmp: Path, pairs: list[dict[str, Any]], sets: dict[str, list[dict[str, Any]]],
                      config: PipelineConfig, count_tokens: Any) -> dict[str, Any]:
    """Write the pair files of train and validation; return the manifest's `preferences`.
    `count_tokens(messages)` counts a rendered conversation with the base model's tokenizer."""
    assigned = assign(pairs, sets)
    section: dict[str, Any] = {"curated": len(pairs), "counts": {n: len(assigned[n]) for n in SETS},
                               "held_out": len(pairs) - sum(len(v) for v in assigned.values()),
                               "by_label": {}, "format_checks": {}}
    train_tokens: list[int] = []
    for name in SETS:
        items = assigned[name]
        write_bytes_atomic(tmp / f"{name}.preferences.jsonl", b"".join(orjson.dumps(p) + b"\n" for p in items))
        lines = [orjson.dumps(dpo_line(p, config)) + b"\n" for p in items]
        write_bytes_atomic(tmp / f"{name}.dpo.openai.jsonl", b"".join(lines))
        report = check_dpo_lines(lines)
        section["format_checks"][name] = {"ok": report.ok, "examples": report.examples,
                                          "problems": report.problems()}
        if report.errors:  # a bad line is a bug here; too few pairs only stops train.method dpo
            raise FormatError(f"{name}.dpo.openai.jsonl fails OpenAI's preference format checks: "
                              + "; ".join(report.problems()))
        section["by_label"][name] = dict(sorted(Counter(p["label"] for p in items).items()))
        if name == "train":
            for pair in items:
                prompt = render_messages(pair, config.prompt, config.output, with_answer=False)
                train_tokens.append(count_tokens(prompt + [{"role": "assistant", "content": pair["chosen"]}])
                                    + count_tokens([{"role": "assistant", "content": pair["rejected"]}]))
    openai = config.split.openai
    epochs = None if openai.n_epochs == "auto" else openai.n_epochs
    section["billing"] = billing_estimate(train_tokens, openai.max_tokens_per_example,
                                          openai.price_per_million_tokens, epochs)
    return {"preferences": section}
