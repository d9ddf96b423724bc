"""Files shared by every stage: input discovery, streaming line reads, atomic output folders,
content hashes and manifests.

Every stage writes into a fresh folder that appears only when complete (write to a hidden
temporary sibling, then rename), so a crash never leaves a half-written dataset that a later
stage could mistake for a finished one.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import glob
import gzip
import hashlib
import os
import shutil
import time
import zlib
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


def skipped_inputs(patterns: list[str]) -> list[str]:
    """A note for each file inside folder inputs that is not a log by its name (not .jsonl, .ndjson or .gz of
    those): listed in the report, so a `.json` export dropped in the folder is not silently
    ignored. Hidden files are not listed."""
    skipped = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            skipped += sorted(f"skipped (not a log file by its name): {p}" for p in path.rglob("*")
                              if p.is_file() and not p.name.startswith(".") and not p.name.endswith(LOG_SUFFIXES))
    return skipped


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def open_log(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """Open a log for binary line reads. Returns (reader, raw file) so progress can follow
    the compressed position of a .gz file."""
    raw = open(path, "rb", buffering=1 << 20)  # readline with a limit: 3x slower on the default 8 KiB
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


class DamagedTail:
    """Stands in `iter_lines` for the rest of a compressed file that cannot be read (cut short,
    corrupt, or not compressed at all): every line before it was yielded as usual."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


# What a damaged .gz raises mid-read: cut short, a bad header, corrupt deflate data.
_DAMAGE_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _damage_reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the compressed file is cut short (truncated)"
    if isinstance(exc, gzip.BadGzipFile):
        return f"not a valid gzip file ({exc})"
    return f"corrupt compressed data ({exc})"


def iter_lines(reader: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | DamagedTail | None, int]]:
    """Yield (line number, line without its newline, length in bytes).

    A line longer than `max_bytes` is yielded as None with its full length, and is skipped
    in chunks so that a multi-gigabyte line without a newline never sits in memory. Where a
    compressed file turns out damaged, one last DamagedTail is yielded (the partial line
    before the damage is part of it) and the file ends there.
    """
    number = 0
    while True:
        try:
            line = reader.readline(max_bytes + 1)
            if len(line) > max_bytes and not line.endswith(b"\n"):
                length = len(line)
                while True:
                    chunk = reader.readline(1 << 20)
                    length += len(chunk)
                    if not chunk or chunk.endswith(b"\n"):
                        length -= 1 if chunk.endswith(b"\n") else 0
                        break
                number += 1
                yield number, None, length
                continue
        except _DAMAGE_ERRORS as exc:
            yield number + 1, DamagedTail(_damage_reason(exc)), 0
            return
        if not line:
            return
        number += 1
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
def code_version(module: str | None = None) -> str:
    """The release plus a hash of the code a stage's output depends on: `module` (the stage's
    own, e.g. "pipelines.curate") and every `pipelines` module it imports, directly or not,
    lazily or not; without `module`, the whole package. A stage's "nothing to do" must only
    ever mean "the same code already produced this", and an edit to a module the stage never
    runs (a message in cli.py, another stage) must not make it redo its work. The hash is over
    each module's syntax tree, so a comment or a blank line changes nothing.

    `evals/` modules are followed for their imports but not hashed: how eval scores is
    versioned by the suites and the gate (an edit there must not retrain)."""
    root = Path(pipelines.__file__).parent
    files = sorted(root.rglob("*.py")) if module is None else _import_closure(module)
    digest = hashlib.sha256()
    for path in files:
        if path.parent.is_relative_to(root):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(_syntax_digest(path))
    return f"{pipelines.__version__}+{digest.hexdigest()[:10]}"


@functools.cache
def _syntax_digest(path: Path) -> bytes:
    return hashlib.sha256(ast.dump(ast.parse(path.read_bytes(), str(path))).encode()).digest()


def _module_file(name: str) -> Path | None:
    """The source file of a `pipelines` or `evals` module (None for any other module)."""
    if name.split(".")[0] not in ("pipelines", "evals"):
        return None
    base = Path(pipelines.__file__).parent.parent.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _import_closure(module: str) -> list[Path]:
    """The source files of `module` and of every pipelines/evals module it imports."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                todo += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return sorted(seen)


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
