"""split's second pass: stream the curated file once and write each example where it goes.

Train and validation lines are copied byte for byte (a line not in orjson's compact form is
re-serialised, as split always wrote them), rendered once for the OpenAI export and the
Hugging Face copy, and counted with the base model's tokenizer in batches. Memory holds one
batch of examples, the token counts (8 bytes an example) and the small regression set.

The Hugging Face copy is written the way `datasets.Dataset.save_to_disk` writes it, a chunk
of 1,000 rows at a time: the Arrow files, `dataset_info.json` and `state.json` are the ones
save_to_disk writes for a set of up to 1,000 rows; a bigger set's fingerprint is the hash of
its chunks' fingerprints (save_to_disk would hash the whole table in memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from pipelines.config import PipelineConfig
from pipelines.split_index import ExampleIndex
from pipelines.template import render_messages

TOKEN_BATCH = 256  # conversations per tokenizer call
HF_CHUNK = 1000  # rows per Arrow record batch: datasets' DEFAULT_MAX_BATCH_SIZE
HF_SHARD_BYTES = 500 * 10**6  # datasets' MAX_SHARD_SIZE
HF_COLUMNS = ("id", "kind", "source", "label", "query", "ideal_answer", "cluster_id", "session_id")
SETS = ("train", "validation")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Write `path` through a temporary sibling, fsynced and renamed into place when whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb", buffering=1 << 20) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def count_tokens(tokenizer: Any, conversations: list[list[dict[str, str]]],
                 add_generation_prompt: bool = False) -> list[int]:
    """Token counts of rendered conversations, one tokenizer call for the batch."""
    if not conversations:
        return []
    ids = tokenizer.apply_chat_template(conversations, tokenize=True, add_generation_prompt=add_generation_prompt)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [len(x) for x in ids]


def hf_row(example: dict[str, Any], messages: list[dict[str, str]]) -> dict[str, Any]:
    return {**{c: (None if example.get(c) is None else str(example.get(c))) for c in HF_COLUMNS},
            "contexts": [{"id": c["id"], "text": c["text"]} for c in example.get("contexts") or []],
            "messages": messages}


def hf_features() -> Any:
    import datasets

    return datasets.Features({
        **{c: datasets.Value("string") for c in HF_COLUMNS},
        "contexts": datasets.List({"id": datasets.Value("string"), "text": datasets.Value("string")}),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
    })


class HFSetWriter:
    """One set of the `datasets.DatasetDict` copy, written a chunk at a time."""

    def __init__(self, folder: Path):
        import datasets

        datasets.disable_progress_bars()
        self.folder, self.features = folder, hf_features()
        self.rows: list[dict[str, Any]] = []
        self.fingerprints: list[str] = []
        self.shards: list[Path] = []
        self.writer: Any = None
        self.shard_bytes = 0
        self.first: Any = None  # the first chunk's Dataset: its info and state are the set's
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= HF_CHUNK:
            self._flush()

    def _flush(self) -> None:
        from datasets.arrow_writer import ArrowWriter

        import datasets

        if not self.rows and self.first is not None:
            return
        # from_list of no rows cannot match the features' columns; empty columns can.
        chunk = (datasets.Dataset.from_list(self.rows, features=self.features) if self.rows
                 else datasets.Dataset.from_dict({c: [] for c in self.features}, features=self.features))
        self.rows = []
        if self.first is None:
            self.first = chunk
        if len(chunk) == 0:
            return
        self.fingerprints.append(chunk._fingerprint)
        if self.writer is None or self.shard_bytes >= HF_SHARD_BYTES:
            self._close_shard()
            self.shards.append(self.folder / f".shard-{len(self.shards)}.arrow")
            self.writer = ArrowWriter(features=self.features, path=str(self.shards[-1]), embed_local_files=True)
        self.writer.write_table(chunk.data.table)
        self.shard_bytes += chunk.data.nbytes

    def _close_shard(self) -> None:
        if self.writer is not None:
            self.writer.finalize()
            self.writer.close()
            self.writer, self.shard_bytes = None, 0

    def close(self) -> None:
        """The last chunk, the shards under save_to_disk's names, state.json and dataset_info.json."""
        from datasets.fingerprint import Hasher
        from datasets.utils.py_utils import asdict

        self._flush()
        self._close_shard()
        n = len(self.shards)
        names = [f"data-{i:05d}-of-{n:05d}.arrow" for i in range(n)]
        for shard, name in zip(self.shards, names):
            os.replace(shard, self.folder / name)
        first = self.first.__dict__
        state = {key: first[key] for key in ("_format_columns", "_format_kwargs", "_format_type",
                                             "_output_all_columns")}
        state["_fingerprint"] = (self.fingerprints[0] if len(self.fingerprints) == 1
                                 else first["_fingerprint"] if not self.fingerprints
                                 else Hasher.hash(self.fingerprints))
        state["_split"] = None
        state["_data_files"] = [{"filename": name} for name in names]
        with open(self.folder / "state.json", "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=True)
        info = asdict(self.first._info)  # datasets' asdict, as save_to_disk
        with open(self.folder / "dataset_info.json", "w", encoding="utf-8") as handle:
            json.dump({key: info[key] for key in sorted(info)}, handle, indent=2)


@dataclasses.dataclass
class Written:
    """What the second pass measured, for the manifest."""

    lengths: dict[str, np.ndarray]  # token counts per set, in file order
    prompt_tokens: dict[str, list[int]]  # [total, count] of validation prompt tokens, per prompt kind
    hf: dict[str, HFSetWriter]


class _Pass:
    """The batch in flight: rendered examples waiting for one tokenizer call."""

    def __init__(self, tmp: Path, config: PipelineConfig, tokenizer: Any, shots: list[dict[str, Any]]):
        self.config, self.tokenizer, self.shots = config, tokenizer, shots
        self.lengths = {name: array("q") for name in SETS}
        self.prompt_tokens = {"finetune": [0, 0], "baseline": [0, 0]}
        self.hf = {name: HFSetWriter(tmp / "hf" / name) for name in SETS}
        self.pending: list[tuple[str, dict[str, Any], list[dict[str, str]]]] = []

    def add(self, name: str, example: dict[str, Any], messages: list[dict[str, str]]) -> None:
        self.hf[name].add(hf_row(example, messages))
        self.pending.append((name, example, messages))
        if len(self.pending) >= TOKEN_BATCH:
            self.flush()

    def flush(self) -> None:
        for (name, _, _), n in zip(self.pending, count_tokens(self.tokenizer, [m for _, _, m in self.pending])):
            self.lengths[name].append(n)
        prompt, output = self.config.prompt, self.config.output
        queries = [e for name, e, _ in self.pending if name == "validation" and e.get("kind", "rag") == "rag"]
        for kind, shots in (("finetune", None), ("baseline", self.shots)):
            counts = count_tokens(self.tokenizer, [render_messages(e, prompt, output, with_answer=False,
                                                                   baseline_shots=shots) for e in queries], True)
            self.prompt_tokens[kind][0] += sum(counts)
            self.prompt_tokens[kind][1] += len(counts)
        self.pending = []


def write_examples(tmp: Path, index: ExampleIndex, where: np.ndarray, config: PipelineConfig, tokenizer: Any,
                   shots: list[dict[str, Any]]) -> Written:
    """`<set>.jsonl` and `<set>.openai.jsonl` of train and validation (`where`: 0 train,
    1 validation, -1 neither), their token counts and Hugging Face copies, in one pass."""
    state = _Pass(tmp, config, tokenizer, shots)
    with contextlib.ExitStack() as files:
        records = {name: files.enter_context(atomic_file(tmp / f"{name}.jsonl")) for name in SETS}
        exports = {name: files.enter_context(atomic_file(tmp / f"{name}.openai.jsonl")) for name in SETS}
        for row, line in index.lines():
            code = where[row]
            if code < 0:
                continue
            name = SETS[code]
            example = orjson.loads(line)
            records[name].write(line if index.canonical[row] else orjson.dumps(example) + b"\n")
            messages = render_messages(example, config.prompt, config.output)
            exports[name].write(orjson.dumps({"messages": messages}) + b"\n")
            state.add(name, example, messages)
        state.flush()
    return Written({name: np.frombuffer(state.lengths[name], dtype=np.int64) for name in SETS},
                   state.prompt_tokens, state.hf)
