"""split at any size: what the split decides with, as arrays, never the examples themselves.

One streaming pass over a curated `examples.jsonl` keeps, per example, its line's byte
offset and length, its label and kind, 64-bit hashes of its id, cluster and session, its
question's MinHash band keys and exact-duplicate fingerprint, and whether its ideal answer
refuses or cites (for the baseline's few shots): about 110 bytes per example with the default
dedup settings, where a parsed example is tens of kilobytes of Python objects. Grouping, the
regression draw, the train / validation fold and the leakage check run on these arrays; the
writer (pipelines/split_write.py) then copies each line's bytes to its set in a second pass.

The rules are the ones split always had (pipelines/split.py keeps its list-of-dicts entry
points as thin wrappers over these), so the same inputs give the same sets. Ids, clusters and
sessions are compared by 64-bit hash: two different values collide with probability about
n^2 / 2^65 (3e-8 at a million examples).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from pipelines.answers import is_cited_answer, parse_answer
from pipelines.config import OutputConfig
from pipelines.minhash import MinHasher, band_collisions, components, text_fingerprint

# Questions hashed per MinHash call: big enough for numpy, small enough to stay a few MB.
BATCH = 8192


class CuratedLineError(ValueError):
    """A curated line split cannot read; the message names the file, line and field."""


def value_hash(value: Any) -> int:
    """A 64-bit key for an id / cluster / session value; 0 stands for None (no value)."""
    if value is None:
        return 0
    data = value.encode() if isinstance(value, str) else b"\x00" + orjson.dumps(value)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") or 1


@dataclass
class Keys:
    """Per item: MinHash band keys, exact fingerprint, and the id / cluster / session hashes."""

    band_keys: np.ndarray  # (n, bands) uint64
    fingerprints: np.ndarray  # uint64
    ids: np.ndarray  # uint64
    clusters: np.ndarray  # uint64, 0: none
    sessions: np.ndarray  # uint64, 0: none

    @classmethod
    def of(cls, items: list[dict[str, Any]], hasher: MinHasher) -> Keys:
        """The keys of parsed items (the regression set, or a test's examples)."""
        return cls(hasher.keys([e["query"] for e in items]),
                   _u64(text_fingerprint(e["query"]) for e in items), _u64(value_hash(e["id"]) for e in items),
                   _u64(value_hash(e.get("cluster_id")) for e in items),
                   _u64(value_hash(e.get("session_id")) for e in items))

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> Keys:
        return Keys(self.band_keys[rows], self.fingerprints[rows], self.ids[rows], self.clusters[rows],
                    self.sessions[rows])

    @staticmethod
    def concat(parts: list[Keys]) -> Keys:
        return Keys(*(np.concatenate([getattr(p, f) for p in parts])
                      for f in ("band_keys", "fingerprints", "ids", "clusters", "sessions")))


def _u64(values: Any) -> np.ndarray:
    return np.fromiter(values, dtype=np.uint64)


@dataclass
class ExampleIndex:
    """The arrays of one curated examples file (row = non-blank line, in file order)."""

    path: Path
    offsets: np.ndarray  # int64 byte offset of the line
    lengths: np.ndarray  # int64 byte length of the line, newline included
    canonical: np.ndarray  # bool: the line is exactly orjson's compact form, so bytes can be copied
    keys: Keys
    labels: np.ndarray  # int32 code; codes follow the sorted label names
    label_names: list[str]
    rag: np.ndarray  # bool: kind is "rag"
    refusal: np.ndarray  # bool: a RAG example whose ideal answer says "I don't know"
    cited: np.ndarray  # bool: a RAG example whose ideal answer cites without refusing

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, rows: np.ndarray | list[int]) -> list[dict[str, Any]]:
        """The parsed examples at `rows` (in that order): for the few the split needs whole."""
        out = []
        with open(self.path, "rb") as handle:
            for row in rows:
                handle.seek(int(self.offsets[row]))
                out.append(orjson.loads(handle.read(int(self.lengths[row]))))
        return out

    def lines(self) -> Iterator[tuple[int, bytes]]:
        """(row, line) for every example, streaming, in file order."""
        row = 0
        with open(self.path, "rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                if row >= len(self) or len(line) != self.lengths[row]:
                    raise CuratedLineError(f"{self.path} changed while it was being split; run split again")
                yield row, line
                row += 1


class _Builder:
    """The growing columns of an ExampleIndex (array.array: 8 bytes an item, not a Python int)."""

    def __init__(self, hasher: MinHasher, output: OutputConfig):
        self.hasher, self.output = hasher, output
        self.cols = {name: array("q") for name in ("offsets", "lengths", "labels")}
        self.hashes = {name: array("Q") for name in ("fingerprints", "ids", "clusters", "sessions")}
        self.flags = {name: bytearray() for name in ("canonical", "rag", "refusal", "cited")}
        self.label_codes: dict[str, int] = {}
        self.queries: list[str] = []
        self.band_keys: list[np.ndarray] = []

    def add(self, offset: int, line: bytes, example: dict[str, Any], where: str) -> None:
        query, label = example.get("query"), example.get("label")
        if not isinstance(query, str) or not isinstance(label, str):
            field = "query" if not isinstance(query, str) else "label"
            raise CuratedLineError(f"{where}: `{field}` must be a string")
        if "id" not in example:
            raise CuratedLineError(f"{where}: `id` is missing")
        self.cols["offsets"].append(offset)
        self.cols["lengths"].append(len(line))
        self.cols["labels"].append(self.label_codes.setdefault(label, len(self.label_codes)))
        self.flags["canonical"].append(orjson.dumps(example) + b"\n" == line)
        rag = example.get("kind", "rag") == "rag"
        ideal = example.get("ideal_answer")
        answered = rag and isinstance(ideal, str)
        self.flags["rag"].append(rag)
        self.flags["refusal"].append(answered and parse_answer(ideal, self.output.format,
                                                               self.output.idk_answer).refusal)
        self.flags["cited"].append(answered and is_cited_answer(ideal, self.output))
        self.hashes["fingerprints"].append(text_fingerprint(query))
        for name, key in (("ids", "id"), ("clusters", "cluster_id"), ("sessions", "session_id")):
            self.hashes[name].append(value_hash(example.get(key)))
        self.queries.append(query)
        if len(self.queries) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.queries:
            self.band_keys.append(self.hasher.keys(self.queries))
            self.queries = []

    def finish(self, path: Path) -> ExampleIndex:
        self.flush()
        names = sorted(self.label_codes)
        # Codes in sorted-name order: what scikit-learn's np.unique would give the names.
        remap = np.zeros(len(names), dtype=np.int32)
        for rank, name in enumerate(names):
            remap[self.label_codes[name]] = rank
        band_keys = (np.concatenate(self.band_keys) if self.band_keys
                     else np.zeros((0, self.hasher.bands), dtype=np.uint64))
        keys = Keys(band_keys, *(np.frombuffer(self.hashes[n], dtype=np.uint64)
                                 for n in ("fingerprints", "ids", "clusters", "sessions")))
        flags = {n: np.frombuffer(bytes(v), dtype=np.bool_) for n, v in self.flags.items()}
        return ExampleIndex(path, np.frombuffer(self.cols["offsets"], dtype=np.int64),
                            np.frombuffer(self.cols["lengths"], dtype=np.int64), flags["canonical"], keys,
                            remap[np.frombuffer(self.cols["labels"], dtype=np.int64)], names,
                            flags["rag"], flags["refusal"], flags["cited"])


def build_index(path: Path, hasher: MinHasher, output: OutputConfig) -> ExampleIndex:
    """The first pass: one line at a time, nothing kept of a line but its keys."""
    builder = _Builder(hasher, output)
    offset = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                example = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise CuratedLineError(f"{path}:{number}: not valid JSON ({exc})") from None
            if not isinstance(example, dict):
                raise CuratedLineError(f"{path}:{number}: not a JSON object")
            builder.add(start, line, example, f"{path}:{number}")
    return builder.finish(path)


# --------------------------------------------------------------------------- the rules, on arrays


def same_value_edges(values: np.ndarray, skip_zero: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Edges (i, first index with the same value) for every i that is not that first index."""
    present = np.flatnonzero(values != 0) if skip_zero else np.arange(len(values))
    _, first, inverse = np.unique(values[present], return_index=True, return_inverse=True)
    first_index = present[first][inverse.reshape(-1)]
    repeat = first_index != present
    return present[repeat], first_index[repeat]


def group_labels(keys: Keys) -> np.ndarray:
    """One integer per item; items sharing a cluster, a session or a near-duplicate question
    (one MinHash band) share it."""
    rows, cols = band_collisions(keys.band_keys)
    all_rows, all_cols = [rows], [cols]
    for values in (keys.clusters, keys.sessions):
        r, c = same_value_edges(values)
        all_rows.append(r)
        all_cols.append(c)
    return components(len(keys), np.concatenate(all_rows), np.concatenate(all_cols))


def near_regression_mask(examples: Keys, regression: Keys) -> np.ndarray:
    """True for examples that are, or are near, a regression item: kept out forever. "Near":
    one MinHash group with it, or its id, cluster or session."""
    if len(regression) == 0:
        return np.zeros(len(examples), dtype=bool)
    combined = np.concatenate([regression.band_keys, examples.band_keys])
    groups = components(len(combined), *band_collisions(combined))
    near = np.isin(groups[len(regression):], groups[: len(regression)]) | np.isin(examples.ids, regression.ids)
    # New turns of a session already in the regression set stay out too.
    for mine, theirs in ((examples.clusters, regression.clusters), (examples.sessions, regression.sessions)):
        near |= np.isin(mine, theirs[theirs != 0])
    return near


def leak_candidates(keys: Keys, set_codes: np.ndarray) -> np.ndarray:
    """(k, 2) sorted unique pairs (i < j) in different sets that share a band, an exact
    fingerprint (with its first holder) or an id (with its first holder)."""
    edges = [band_collisions(keys.band_keys), same_value_edges(keys.fingerprints, skip_zero=False),
             same_value_edges(keys.ids, skip_zero=False)]
    rows = np.concatenate([e[0] for e in edges])
    cols = np.concatenate([e[1] for e in edges])
    across = set_codes[rows] != set_codes[cols]
    pairs = np.stack([np.minimum(rows, cols)[across], np.maximum(rows, cols)[across]], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def leaks(keys: Keys, set_codes: np.ndarray, set_names: list[str], hasher: MinHasher,
          fetch: Callable[[np.ndarray], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Pairs of items in different sets whose questions are the same (after normalisation)
    or near-duplicates (estimated Jaccard >= the threshold), or that share an id. `fetch(rows)`
    gives the items at sorted rows; only the candidates' questions and ids are read."""
    pairs = leak_candidates(keys, set_codes)
    same_print = keys.fingerprints[pairs[:, 0]] == keys.fingerprints[pairs[:, 1]]
    similarity = np.ones(len(pairs))
    step = 20_000  # pairs per chunk: their signatures stay a few MB
    for start in range(0, len(pairs), step):
        chunk = pairs[start : start + step]
        rows = np.unique(chunk)
        signatures = hasher.signatures([e["query"] for e in fetch(rows)])
        a, b = np.searchsorted(rows, chunk[:, 0]), np.searchsorted(rows, chunk[:, 1])
        similarity[start : start + step] = (signatures[a] == signatures[b]).mean(axis=1)
    maybe = same_print | (keys.ids[pairs[:, 0]] == keys.ids[pairs[:, 1]]) | (similarity >= hasher.threshold)
    pairs, same_print, similarity = pairs[maybe], same_print[maybe], similarity[maybe]
    rows = np.unique(pairs)
    ids = dict(zip(rows.tolist(), (e["id"] for e in fetch(rows))))
    found = []
    for (i, j), printed, sim in zip(pairs.tolist(), same_print.tolist(), similarity.tolist()):
        exact = printed or ids[i] == ids[j]
        if exact or sim >= hasher.threshold:
            a_, b_ = sorted([(set_names[set_codes[i]], ids[i]), (set_names[set_codes[j]], ids[j])])
            found.append({"a": f"{a_[0]}:{a_[1]}", "b": f"{b_[0]}:{b_[1]}", "similarity": 1.0 if exact else round(sim, 3)})
    return sorted(found, key=lambda x: (x["a"], x["b"]))
