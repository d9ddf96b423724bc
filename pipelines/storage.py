"""Files shared by every stage: input discovery, streaming line reads, atomic output folders,
content hashes and manifests.

Every stage writes into a fresh folder that appears only when complete (write to a hidden
temporary sibling, then rename), so a crash never leaves a half-written dataset that a later
stage could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import gzip
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

import pipelines

LOG_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz")


class InputError(ValueError):
    """Inputs that cannot be read at all (as opposed to bad lines, which are quarantined)."""


def resolve_inputs(patterns: list[str]) -> list[Path]:
    """Expand files, folders (recursively, JSONL and .jsonl.gz) and globs into a sorted,
    de-duplicated list. A pattern that matches nothing is an error: a scheduled run reading
    an empty folder should say so instead of training on nothing."""
    found: dict[str, Path] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = [p for p in path.rglob("*") if p.is_file() and p.name.endswith(LOG_SUFFIXES)]
        elif path.is_file():
            matches = [path]
        else:
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
        if not matches:
            raise InputError(f"input {pattern!r} matches no log file")
        for match in matches:
            found[str(match.resolve())] = match
    return [found[key] for key in sorted(found)]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def open_log(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """Open a log for binary line reads. Returns (reader, raw file) so progress can follow
    the compressed position of a .gz file."""
    raw = open(path, "rb")
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def iter_lines(reader: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """Yield (line number, line without its newline, length in bytes).

    A line longer than `max_bytes` is yielded as None with its full length, and is skipped
    in chunks so that a multi-gigabyte line without a newline never sits in memory.
    """
    number = 0
    while True:
        line = reader.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            length = len(line)
            while True:
                chunk = reader.readline(1 << 20)
                length += len(chunk)
                if not chunk or chunk.endswith(b"\n"):
                    length -= 1 if chunk.endswith(b"\n") else 0
                    break
            yield number, None, length
            continue
        if line.endswith(b"\n"):
            line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
        yield number, line, len(line)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; rename it into place on success, delete it
    on failure. If another run finished `final` first, the new copy is discarded."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if (final / "manifest.json").exists():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)


@functools.cache
def code_version() -> str:
    """The release plus a hash of the package's source: a stage's "nothing to do" must
    only ever mean "the same code already produced this", including between releases."""
    digest = hashlib.sha256()
    root = Path(pipelines.__file__).parent
    for path in sorted(root.rglob("*.py")) + sorted(root.rglob("*.yaml")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return f"{pipelines.__version__}+{digest.hexdigest()[:10]}"



def set_latest(stage_dir: Path, ident: str) -> None:
    """Point `<stage_dir>/LATEST` at the newest output; later stages default to it."""
    write_bytes_atomic(stage_dir / "LATEST", ident.encode() + b"\n")


def resolve_stage_output(stage_dir: Path, ident: str | None, what: str, make_target: str,
                         error: type[Exception]) -> Path:
    """The folder of a finished stage output: `ident`, else the newest (`LATEST`)."""
    from pipelines.stage import sweep_stale  # stage.py builds on this module

    sweep_stale(stage_dir)  # a kill mid-swap on a system without an atomic exchange
    ident = ident or read_latest(stage_dir)
    if ident is None:
        raise error(f"no {what} in {stage_dir}: run `make {make_target}` first")
    path = stage_dir / ident
    if not (path / "manifest.json").exists():
        raise error(f"{what} {ident!r} not found in {stage_dir}")
    return path


def read_latest(stage_dir: Path) -> str | None:
    try:
        return (stage_dir / "LATEST").read_text().strip() or None
    except FileNotFoundError:
        return None
