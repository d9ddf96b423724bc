"""split's share of the preference pairs: each pair goes to the set of its example (same
groups, so no leakage), then `<set>.preferences.jsonl` (our records) and
`<set>.dpo.openai.jsonl` (OpenAI's preference format: `input.messages`, `preferred_output`,
`non_preferred_output`), checked with the same rules the OpenAI backend applies before it
uploads and the local server applies when a DPO job validates its files.

A pair whose example is in the regression set, or was held out near it, is in no set.
"""

from __future__ import annotations

import contextlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipelines.config import PipelineConfig
from pipelines.openai_format import FormatError, billing_estimate, check_dpo_lines
from pipelines.split_index import value_hash
from pipelines.split_write import atomic_file
from pipelines.storage import iter_jsonl
from pipelines.template import render_messages

SETS = ("train", "validation")


def iter_pairs(curated: Path) -> Iterator[dict[str, Any]]:
    """The curated dataset's pairs, one at a time (none before pairs existed)."""
    path = curated / "preferences.jsonl"
    if path.exists():
        yield from iter_jsonl(path)


class SetLookup:
    """Which set each example id is in, as sorted 64-bit id hashes (8 bytes an example, not a
    dict of strings); an id in several sets is in the last one named."""

    def __init__(self, ids_per_set: dict[str, np.ndarray]):
        self.names = list(ids_per_set)
        hashes = np.concatenate([np.asarray(v, dtype=np.uint64) for v in ids_per_set.values()])
        codes = np.concatenate([np.full(len(v), k, dtype=np.int8) for k, v in enumerate(ids_per_set.values())])
        # np.unique keeps the first of equal values: reversed, that is the last set's.
        self.hashes, first = np.unique(hashes[::-1], return_index=True)
        self.codes = codes[::-1][first]

    @classmethod
    def of(cls, sets: dict[str, list[dict[str, Any]]]) -> SetLookup:
        return cls({name: [value_hash(e["id"]) for e in items] for name, items in sets.items()})

    def __call__(self, example_id: Any) -> str | None:
        key = np.uint64(value_hash(example_id))
        at = int(np.searchsorted(self.hashes, key))
        return self.names[self.codes[at]] if at < len(self.hashes) and self.hashes[at] == key else None


def dpo_line(pair: dict[str, Any], config: PipelineConfig) -> dict[str, Any]:
    """One pair in OpenAI's preference format, its prompt rendered by the one template."""
    prompt = render_messages(pair, config.prompt, config.output, with_answer=False)
    return {"input": {"messages": prompt},
            "preferred_output": [{"role": "assistant", "content": pair["chosen"]}],
            "non_preferred_output": [{"role": "assistant", "content": pair["rejected"]}]}


def write_preferences(tmp: Path, pairs: Iterable[dict[str, Any]], sets: dict[str, list[dict[str, Any]]] | SetLookup,
                      config: PipelineConfig, count_tokens: Callable[[list[dict[str, str]]], int]) -> dict[str, Any]:
    """Write the pair files of train and validation, streaming `pairs`; return the manifest's
    `preferences`. `count_tokens(messages)` counts a rendered conversation with the base model's
    tokenizer."""
    where = sets if isinstance(sets, SetLookup) else SetLookup.of(sets)
    counts = {name: 0 for name in SETS}
    labels: dict[str, Counter] = {name: Counter() for name in SETS}
    curated, train_tokens = 0, array("q")
    with contextlib.ExitStack() as files:
        records = {n: files.enter_context(atomic_file(tmp / f"{n}.preferences.jsonl")) for n in SETS}
        exports = {n: files.enter_context(atomic_file(tmp / f"{n}.dpo.openai.jsonl")) for n in SETS}
        for pair in pairs:
            curated += 1
            name = where(pair["example_id"])
            if name not in records:
                continue
            counts[name] += 1
            labels[name][pair["label"]] += 1
            records[name].write(orjson.dumps(pair) + b"\n")
            exports[name].write(orjson.dumps(dpo_line(pair, config)) + b"\n")
            if name == "train":
                train_tokens.append(_pair_tokens(pair, config, count_tokens))
    section: dict[str, Any] = {"curated": curated, "counts": counts, "held_out": curated - sum(counts.values()),
                               "by_label": {n: dict(sorted(labels[n].items())) for n in SETS}, "format_checks": {}}
    for name in SETS:
        with open(tmp / f"{name}.dpo.openai.jsonl", "rb") as handle:
            report = check_dpo_lines(handle)
        section["format_checks"][name] = {"ok": report.ok, "examples": report.examples,
                                          "problems": report.problems()}
        if report.errors:  # a bad line is a bug here; too few pairs only stops train.method dpo
            raise FormatError(f"{name}.dpo.openai.jsonl fails OpenAI's preference format checks: "
                              + "; ".join(report.problems()))
    openai = config.split.openai
    epochs = None if openai.n_epochs == "auto" else openai.n_epochs
    section["billing"] = billing_estimate(train_tokens.tolist(), openai.max_tokens_per_example,
                                          openai.price_per_million_tokens, epochs)
    return {"preferences": section}


def _pair_tokens(pair: dict[str, Any], config: PipelineConfig, count_tokens: Callable[[list[dict[str, str]]], int]) -> int:
    """Tokens of a train pair: its prompt with the chosen answer, plus the rejected answer."""
    prompt = render_messages(pair, config.prompt, config.output, with_answer=False)
    return (count_tokens(prompt + [{"role": "assistant", "content": pair["chosen"]}])
            + count_tokens([{"role": "assistant", "content": pair["rejected"]}]))
