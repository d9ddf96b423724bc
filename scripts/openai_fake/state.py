"""The fake API's state: files, jobs and the requests it saw, behind one lock, with the job
clock (which tests can pause) and the seeded rng behind every id."""

from __future__ import annotations

import random
import string
import threading
import time
from collections import Counter
from typing import Any

from .files import StoredFile
from .jobs import Job, advance
from .settings import Settings


class FakeOpenAI:
    """All state, behind one lock; jobs advance lazily on the clock whenever they are read."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.RLock()
        self.rng = random.Random(settings.seed)
        self.files: dict[str, StoredFile] = {}
        self.jobs: dict[str, Job] = {}
        self.jobs_created = 0
        self.route_counts: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []   # route, method, path, status, t (monotonic), fault
        self.answer_index: dict[str, dict[str, str]] = {}  # ft: model -> prompt -> answer
        self._t0 = time.monotonic()
        self._paused_at: float | None = None
        self._paused_total = 0.0

    # ---- the clock
    def now(self) -> float:
        """Job-clock seconds since start: real time minus pauses, times `speed`."""
        with self.lock:
            real = (self._paused_at if self._paused_at is not None else time.monotonic())
            return (real - self._t0 - self._paused_total) * self.settings.speed

    def pause(self) -> None:
        """Freeze every job where it is (tests use it to catch a job mid-run)."""
        with self.lock:
            if self._paused_at is None:
                self._paused_at = time.monotonic()

    def resume(self) -> None:
        with self.lock:
            if self._paused_at is not None:
                self._paused_total += time.monotonic() - self._paused_at
                self._paused_at = None

    # ---- ids and bookkeeping
    def new_id(self, prefix: str, n: int = 24) -> str:
        alphabet = string.ascii_letters + string.digits
        return prefix + "".join(self.rng.choice(alphabet) for _ in range(n))

    def record(self, route: str, method: str, path: str) -> tuple[dict[str, Any], int]:
        """Log a request; return its record and its 1-based number on that route."""
        record = {"route": route, "method": method, "path": path, "t": time.monotonic(), "status": None,
                  "fault": None}
        with self.lock:
            self.requests.append(record)
            self.route_counts[route] += 1
            return record, self.route_counts[route]

    def requests_to(self, route: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.requests if r["route"] == route]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            for job in self.jobs.values():
                advance(self, job)
            return {
                "jobs_created": self.jobs_created,
                "files_uploaded": sum(1 for f in self.files.values() if f.obj["purpose"] != "fine-tune-results"),
                "jobs": [{k: j.obj[k] for k in ("id", "status", "model", "fine_tuned_model", "metadata")}
                         for j in self.jobs.values()],
                "requests": dict(self.route_counts),
                "paused": self._paused_at is not None,
            }
