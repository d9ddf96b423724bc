"""Seconds per step of a stage, with time that is not the stage's own left out, and its peak memory."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Clock:
    """Seconds per step; time excluded (loading the tokenizer) is reported but not counted
    in the total."""

    def __init__(self) -> None:
        restart_memory_peak()
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    @contextlib.contextmanager
    def excluded(self, name: str) -> Iterator[None]:
        begun = time.perf_counter()
        yield
        seconds = time.perf_counter() - begun
        self.laps[name] = seconds
        self.started += seconds
        self.last += seconds

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.last
        self.last = now

    def timings(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        return ({name: round(s, 3) for name, s in self.laps.items()}
                | {"total_s": round(total, 3), "peak_rss_mb": memory_peak_mb()})


def restart_memory_peak() -> None:
    """Start counting the process's peak memory afresh (Linux: /proc/self/clear_refs), so a
    stage run after another in one process (`refit retrain`) reports its own peak."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")


def memory_peak_mb() -> float | None:
    """The process's peak resident memory since `restart_memory_peak` (or its start), in MiB."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    try:
        import resource
        import sys
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)
