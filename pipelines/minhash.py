"""Vectorised MinHash + LSH banding, shared by curate (dedup) and split (leakage check).

datasketch's `MinHash.update` hashes one shingle per Python call; at millions of records that
dominates curation. Here a batch of texts becomes one array of shingle hashes, the
permutations are a single numpy broadcast (multiply-shift universal hashing), and
`minimum.reduceat` takes the per-text minimum. Band keys (one uint64 per band) are all that
is kept per example, so memory grows by `bands * 8` bytes per example, not by its text.

The banding parameters come from datasketch's own optimiser, so a threshold here means what
it means in `datasketch.MinHashLSH`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from datasketch.lsh import _optimal_param
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

_WORD = re.compile(r"\w+")
_MASK32 = np.uint64(0xFFFFFFFF)


def normalise(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class MinHasher:
    num_perm: int = 128
    ngram: int = 5
    threshold: float = 0.7
    seed: int = 1

    def __post_init__(self) -> None:
        bands, rows = _optimal_param(self.threshold, self.num_perm, 0.5, 0.5)
        rng = np.random.default_rng(self.seed)
        # Odd multipliers make x -> a*x + b (mod 2^64) a bijection; the high 32 bits are a
        # multiply-shift universal hash of the 32-bit shingle.
        a = rng.integers(1, 2**63, size=self.num_perm, dtype=np.uint64) | np.uint64(1)
        b = rng.integers(0, 2**63, size=self.num_perm, dtype=np.uint64)
        band_mix = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
        object.__setattr__(self, "bands", bands)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "_a", a)
        object.__setattr__(self, "_b", b)
        object.__setattr__(self, "_band_mix", band_mix)

    def _shingle_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All shingle hashes of a batch as one flat array, plus each text's start offset.

        Shingles are character n-grams of the normalised text (lowercase words joined by
        single spaces): robust to the typos, casing and small rewordings that make
        near-duplicate questions, where word n-grams of a short question share almost
        nothing. The n-gram hashes are computed for the whole batch at once over its bytes."""
        n = self.ngram
        encoded = []
        for text in texts:
            data = " ".join(normalise(text)).encode()
            if len(data) < n:  # short texts are padded so that each yields one shingle
                data = data.ljust(n)
            encoded.append(data)
        lengths = np.fromiter((len(d) for d in encoded), dtype=np.int64, count=len(encoded))
        flat = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
        combined = np.zeros(len(flat) - n + 1, dtype=np.uint64)
        for k in range(n):
            combined = combined * np.uint64(257) + flat[k : len(flat) - n + 1 + k]
        # Keep the n-grams that start and end inside one text.
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        counts = lengths - n + 1
        first = np.repeat(starts, counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        shingles = combined[first + within] * np.uint64(0x9E3779B97F4A7C15)
        shingles = (shingles >> np.uint64(32)) & _MASK32
        return shingles, np.cumsum(counts) - counts

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        a = self._a[:, None]
        b = self._b[:, None]
        # Chunks of 256 texts keep the (permutations x shingles) matrix near 15 MB: 1,024 made
        # 61 MB, freshly mapped and faulted in for every chunk (7x slower in curate's workers).
        # Permutations run along rows so reduceat walks contiguous memory (8x faster than
        # along columns).
        step = 256
        for start in range(0, len(texts), step):
            shingles, offsets = self._shingle_batch(texts[start : start + step])
            hashed = np.multiply(a, shingles[None, :])
            np.add(hashed, b, out=hashed)
            np.right_shift(hashed, np.uint64(32), out=hashed)
            out[start : start + len(offsets)] = np.minimum.reduceat(hashed, offsets, axis=1).T
        return out

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: one hash per band of `rows` signature values."""
        n = signatures.shape[0]
        sig = signatures[:, : self.bands * self.rows].astype(np.uint64).reshape(n, self.bands, self.rows)
        keys = (sig * self._band_mix[None, None, :]).sum(axis=2, dtype=np.uint64)
        # Salt each band so equal values in different bands never collide.
        return keys ^ (np.arange(self.bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))[None, :]

    def keys(self, texts: list[str]) -> np.ndarray:
        return self.band_keys(self.signatures(texts))


def equal_key_runs(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One band's keys in sorted order: the order, and whether each key in it equals the next."""
    order = np.argsort(column, kind="stable")
    sorted_keys = column[order]
    return order, sorted_keys[1:] == sorted_keys[:-1]


def band_collisions(band_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of rows sharing at least one band key (each pair may repeat)."""
    rows: list[np.ndarray] = [np.zeros(0, np.int64)]
    cols: list[np.ndarray] = [np.zeros(0, np.int64)]
    for band in range(band_keys.shape[1]):
        order, same = equal_key_runs(band_keys[:, band])
        if same.any():
            rows.append(order[1:][same])
            cols.append(order[:-1][same])
    return np.concatenate(rows), np.concatenate(cols)


def components(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph with edges (rows[k], cols[k])."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if len(rows) == 0:
        return np.arange(n, dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def clusters(n: int, columns: Iterable[np.ndarray]) -> np.ndarray:
    """Connected components of "shares at least one band key" over n rows, given their band
    keys band by band: an int cluster label per row. Near-duplicate chains end up in one
    cluster, as in union-find dedup pipelines.

    The components are merged band by band, so memory holds one band's column and its sort
    order, never all bands' pairs. The first band's clusters are its runs of equal keys; each
    later band joins the clusters so far wherever one of its runs spans two of them, and the
    pairs inside one cluster (most pairs, once a band has joined the copies of a question)
    are dropped before they are stored."""
    labels = None
    for column in columns:
        order, same = equal_key_runs(column)
        del column
        if labels is None:  # every row is its own cluster so far: the runs are the clusters
            runs = np.zeros(n, dtype=np.int64)
            np.cumsum(~same, out=runs[1:])
            labels = np.empty(n, dtype=np.int64)
            labels[order] = runs
            del runs
            continue
        sorted_labels = labels[order]
        del order
        joins = same & (sorted_labels[1:] != sorted_labels[:-1])
        if joins.any():
            rows, cols = sorted_labels[1:][joins], sorted_labels[:-1][joins]
            labels = components(n, rows, cols)[labels]
    return np.arange(n, dtype=np.int64) if labels is None else labels


def text_fingerprint(text: str) -> int:
    """An exact-duplicate key over the normalised words (case and punctuation ignored)."""
    digest = hashlib.blake2b(" ".join(normalise(text)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")
