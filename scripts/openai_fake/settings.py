"""The server's settings: job timings, job failures, chat behaviour and injected faults, from a
dict or a YAML/JSON file (the format is in scripts/openai_server.py's docstring)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .api import IDK, ROUTES


class ConfigError(ValueError):
    pass


@dataclass
class Fault:
    route: str                      # one of ROUTES, or "*"
    nth: list[int] | None = None    # 1-based requests to that route; None: every request
    status: int | None = None       # answer with this error status
    retry_after: float | None = None     # seconds, sent as Retry-After (whole seconds, rounded up)
    retry_after_ms: float | None = None  # sent as retry-after-ms
    code: str | None = None
    message: str | None = None
    delay_s: float = 0.0            # a slow response: wait, then answer (or fail)
    drop: str | None = None         # "before" / "after": close the socket without a response

    def matches(self, route: str, n: int) -> bool:
        return (self.route == "*" or self.route == route) and (self.nth is None or n in self.nth)


@dataclass
class JobFailure:
    nth: list[int] | None = None    # which jobs (1-based creation order) fail; None: every job
    at: float = 0.5                 # share of training steps done when it fails (0: while validating files)
    code: str = "server_error"
    message: str = "The fine-tuning job failed due to an internal error."
    param: str | None = None


@dataclass
class Settings:
    api_keys: list[str] | None = None      # accepted keys; None: any non-empty key
    organization: str = "refit-local"      # the org slug in fine-tuned model names
    base_models: list[str] | None = None   # models that can be fine-tuned; None: any
    speed: float = 1.0                     # job clock seconds per real second
    validating_s: float = 1.0
    queued_s: float = 1.0
    running_s: float = 6.0
    metrics_events: int = 40               # at most this many metrics events per job
    fail: JobFailure | None = None
    chat_latency_s: float = 0.0            # fixed latency per chat completion
    chat_fallback: str = IDK               # the answer to any prompt the model was not trained on
    faults: list[Fault] = field(default_factory=list)
    seed: int | None = None                # ids and job seeds; None: different on every start
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {shutdown_date, retired}
    blocked_organization: bool = False     # every job creation refused: the org may no longer fine-tune


def _take(section: dict[str, Any], where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping")
    unknown = set(section) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return section


def _nth(value: Any, where: str) -> list[int] | None:
    if value is None or value == "all":
        return None
    values = [value] if isinstance(value, int) else value
    if not isinstance(values, list) or not all(isinstance(v, int) and v >= 1 for v in values):
        raise ConfigError(f"{where}.nth: a positive integer, a list of them, or 'all'")
    return list(values)


def _read(config: str | Path) -> dict[str, Any]:
    text = Path(config).read_text(encoding="utf-8")
    if str(config).endswith(".json"):
        return json.loads(text)
    import yaml

    return yaml.safe_load(text) or {}


def _jobs(s: Settings, section: Any) -> None:
    jobs = _take(section or {}, "jobs", {"validating_s", "queued_s", "running_s", "metrics_events", "fail"})
    for key in ("validating_s", "queued_s", "running_s"):
        if key in jobs:
            setattr(s, key, float(jobs[key]))
    s.metrics_events = int(jobs.get("metrics_events", s.metrics_events))
    if jobs.get("fail"):
        fail = _take(jobs["fail"], "jobs.fail", {"nth", "at", "code", "message", "param"})
        s.fail = JobFailure(nth=_nth(fail.get("nth"), "jobs.fail"), at=float(fail.get("at", 0.5)),
                            code=fail.get("code", JobFailure.code), message=fail.get("message", JobFailure.message),
                            param=fail.get("param"))


def _fault(item: Any, where: str) -> Fault:
    item = _take(item, where, {"route", "nth", "status", "retry_after", "retry_after_ms", "code", "message",
                               "delay_s", "drop"})
    route = item.get("route")
    if route != "*" and route not in ROUTES:
        raise ConfigError(f"{where}.route: {route!r} is not one of {list(ROUTES)} or '*'")
    if item.get("drop") not in (None, "before", "after"):
        raise ConfigError(f"{where}.drop: 'before' or 'after'")
    if not any(item.get(k) for k in ("status", "delay_s", "drop")):
        raise ConfigError(f"{where}: needs status, delay_s or drop")
    return Fault(route=route, nth=_nth(item.get("nth", 1), where), status=item.get("status"),
                 retry_after=item.get("retry_after"), retry_after_ms=item.get("retry_after_ms"),
                 code=item.get("code"), message=item.get("message"),
                 delay_s=float(item.get("delay_s", 0.0)), drop=item.get("drop"))


def load_settings(config: dict[str, Any] | str | Path | None) -> Settings:
    """Settings from a dict, or a YAML/JSON file."""
    if config is None:
        return Settings()
    if isinstance(config, (str, Path)):
        config = _read(config)
    raw = _take(dict(config), "config", {"api_keys", "organization", "base_models", "speed", "jobs", "chat",
                                         "faults", "seed", "chat_latency_s", "chat_fallback", "models",
                                         "blocked_organization"})
    s = Settings(api_keys=raw.get("api_keys"), organization=raw.get("organization", "refit-local"),
                 base_models=raw.get("base_models"), speed=float(raw.get("speed", 1.0)), seed=raw.get("seed"))
    _jobs(s, raw.get("jobs"))
    s.models = {str(k): dict(_take(v or {}, f"models.{k}", {"shutdown_date", "retired"}))
                for k, v in _take(raw.get("models") or {}, "models", set(raw.get("models") or {})).items()}
    s.blocked_organization = bool(raw.get("blocked_organization", False))
    chat = _take(raw.get("chat") or {}, "chat", {"latency_s", "fallback"})
    s.chat_latency_s = float(chat.get("latency_s", raw.get("chat_latency_s", 0.0)))
    s.chat_fallback = chat.get("fallback", raw.get("chat_fallback", IDK))
    s.faults = [_fault(item, f"faults[{i}]") for i, item in enumerate(raw.get("faults") or [])]
    return s
