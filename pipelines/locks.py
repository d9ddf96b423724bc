"""File locks: one retrain per pipeline at a time (pipelines/retrain.py), and alias moves one
at a time (pipelines/registry.py, which waits up to `registry.lock_timeout_s`).

A lock is an `flock` on a file that also records its holder (pid, host, start time, command).
The kernel releases an flock when its holder exits, however it exits, so a lock left behind by
a killed run (its pid is dead) is simply taken over by the next one, which says so. The holder
record is what a refused run prints: who has the lock and since when.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson


class LockHeld(RuntimeError):
    """Another live process holds the lock."""

    def __init__(self, path: Path, holder: dict[str, Any] | None):
        self.path = path
        self.holder = holder or {}
        super().__init__(f"{path} is held by {describe(self.holder)}")


@dataclass
class Lock:
    path: Path
    holder: dict[str, Any]
    # The record a dead holder left behind, when this lock was taken over from it.
    took_over: dict[str, Any] | None = field(default=None)

    def took_over_note(self) -> str | None:
        """What to log when this lock was taken over from a holder that died without
        unlocking; None when it was not."""
        old = self.took_over
        if not old:
            return None
        dead = isinstance(old.get("pid"), int) and old.get("host") == socket.gethostname() and not pid_alive(old["pid"])
        return f"took over a stale lock left by {describe(old)}" + (" (no longer running)" if dead else "")


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (it has not written its record yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _read(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    try:
        record = orjson.loads(data) if data.strip() else None
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return _read(fd)
    finally:
        os.close(fd)


def _try_flock(path: Path) -> int | None:
    """An fd holding the flock on `path` (the file as it is now on disk), or None if held."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have unlinked the file between our open and our flock:
        # then we locked an orphan and must lock the file that is there now.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextlib.contextmanager
def hold(path: Path, *, wait_s: float = 0.0, what: str = "") -> Iterator[Lock]:
    """Hold the lock at `path`. Raises LockHeld when another live process holds it after
    waiting up to `wait_s` seconds. The file is removed on release."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while (fd := _try_flock(path)) is None:
        if time.monotonic() >= deadline:
            holder = None
            for _ in range(20):  # the holder writes its record right after locking
                holder = read_holder(path)
                if holder:
                    break
                time.sleep(0.01)
            raise LockHeld(path, holder)
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    try:
        previous = _read(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "command": what or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, orjson.dumps(holder) + b"\n")
        os.fsync(fd)
        yield Lock(path, holder, took_over=previous)
    finally:
        try:
            os.unlink(path)  # still ours: nobody else can lock it while we hold the flock
        except FileNotFoundError:
            pass
        os.close(fd)
