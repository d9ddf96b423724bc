"""Seconds per step of a stage, with time that is not the stage's own left out."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Clock:
    """Seconds per step; time excluded (loading the tokenizer) is reported but not counted
    in the total."""

    def __init__(self) -> None:
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
        return {name: round(s, 3) for name, s in self.laps.items()} | {"total_s": round(total, 3)}
