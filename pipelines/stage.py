"""The skeleton every stage shares: its id, "already done?", the base manifest and the atomic
commit.

A stage's id is a hash of everything its output depends on (inputs, the config sections it
reads, the code), so running it again on the same inputs is a no-op that prints the existing
id. Its output is a folder that appears only when whole: it is built in a hidden sibling and
renamed into place. A `--force` rebuild keeps the old folder until the new one is complete,
then swaps them, so a crash or a kill mid-rebuild leaves the old output as it was.

Usage, in every stage:

    stage = Stage.identify("split", "spl", Path(cfg.output_dir), key_payload)
    if not force and (done := stage.finished()) is not None:
        return done                            # the manifest of the finished output
    with stage.commit() as tmp:                # tmp: the folder to write into
        ...
        manifest = stage.base_manifest(config, ("split", "model")) | {...}
        (tmp / "manifest.json").write_bytes(dumps(manifest))
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from pipelines.console import warn
from pipelines.storage import code_version, set_latest

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig


def content_key(payload: Any) -> str:
    """The sha256 of a JSON value with sorted keys: the same inputs give the same key."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Stage:
    """One stage output: `<root>/<id>/`, with `manifest.json` written last."""

    name: str
    ident: str
    root: Path
    code_module: str | None = None  # whose code the output depends on (storage.code_version)

    @classmethod
    def identify(cls, name: str, prefix: str, root: Path, key_payload: Any, *, length: int = 12,
                 code_module: str | None = None) -> Stage:
        return cls(name, f"{prefix}-{content_key(key_payload)[:length]}", Path(root), code_module)

    @property
    def final(self) -> Path:
        return self.root / self.ident

    @property
    def manifest_path(self) -> Path:
        return self.final / "manifest.json"

    def finished(self, still_valid: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any] | None:
        """The manifest of a finished output with this id (and LATEST pointed at it), or None.
        `still_valid` can reject a finished output whose outside state moved on (split's
        regression set); LATEST is then left alone. Folders a killed run left are swept first."""
        sweep_stale(self.root)
        if not self.manifest_path.exists():
            return None
        manifest = orjson.loads(self.manifest_path.read_bytes())
        if still_valid is not None and not still_valid(manifest):
            return None
        self.mark_latest()
        return manifest

    def mark_latest(self) -> None:
        set_latest(self.root, self.ident)

    def base_manifest(self, config: PipelineConfig | None, sections: Sequence[str] = (),
                      **extra: Any) -> dict[str, Any]:
        """The keys every manifest opens with."""
        manifest: dict[str, Any] = {"stage": self.name, "id": self.ident, "created_at": utc_now(),
                                    "code_version": code_version(self.code_module)}
        if config is not None:
            if sections:
                manifest["config_hash"] = config.section_hash(*sections)
            manifest["pipeline"] = config.name
        return manifest | extra

    @contextlib.contextmanager
    def commit(self, *, latest: bool = True) -> Iterator[Path]:
        """Yield a temporary folder; when the block succeeds it replaces the output (keeping
        the old one until the swap), and LATEST points at it. On failure nothing changes."""
        sweep_stale(self.root)
        with atomic_replace(self.final) as tmp:
            yield tmp
        if latest:
            self.mark_latest()


@contextlib.contextmanager
def atomic_replace(final: Path) -> Iterator[Path]:
    """Like `storage.atomic_dir`, but an existing `final` is replaced, not kept: the new folder
    is built beside it and the two are swapped only once the new one is complete.

    On Linux the swap is one `renameat2(RENAME_EXCHANGE)`: at every instant `final` is either
    the whole old folder or the whole new one. Elsewhere it is two renames (old aside, new in);
    a kill between them leaves `.old-<name>-<pid>-...`, which `sweep_stale` renames back."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists() and exchange(tmp, final):
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
        return
    old = final.parent / f".old-{final.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(final, old)
    except FileNotFoundError:
        old = None
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system or
    the file system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


_STALE_RE = re.compile(r"\.(tmp|old)-(.+)-(\d+)-(\d+)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(root: Path, name: str | None = None) -> list[str]:
    """Remove the `.tmp-*` / `.old-*` folders that killed runs left in `root` (their process
    is dead); an `.old-<name>` whose `<name>` is missing is the output a kill caught between
    two renames: it is put back. Returns one line per folder, also printed as a warning."""
    if not root.is_dir():
        return []
    notes = []
    for path in sorted(root.iterdir()):
        match = _STALE_RE.fullmatch(path.name)
        if match is None or (name is not None and match.group(2) != name) or _alive(int(match.group(3))):
            continue
        kind, target = match.group(1), root / match.group(2)
        if kind == "old" and not target.exists() and (path / "manifest.json").exists():
            os.rename(path, target)
            notes.append(f"restored {target} from {path.name}, left by a killed run (pid {match.group(3)})")
            continue
        shutil.rmtree(path, ignore_errors=True)
        notes.append(f"removed {path}, left by a killed run (pid {match.group(3)})")
    for note in notes:
        warn(note)
    return notes
