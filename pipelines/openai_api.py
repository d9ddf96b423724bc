"""The OpenAI API as the OpenAI training backend talks to it: where (the endpoint, recorded
without secrets), with which key (read from the environment, scrubbed from every message), and
one retry policy for every request.

`Api.call` retries transient failures (429 with Retry-After honoured, 408, 409, 5xx, timeouts,
dropped connections) with exponential backoff and jitter; permanent ones (400, 401, 403, 404,
an exhausted quota) raise ApiFailure with the API's own message. A create is not idempotent:
after a lost answer, `lookup` finds what it may have created before anything is sent again.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pipelines.config import OpenAITrainConfig
from pipelines.train import TrainError

if TYPE_CHECKING:
    from pipelines.train_openai import Progress

DEFAULT_BASE_URL = "https://api.openai.com/v1"


# --------------------------------------------------------------------------- the endpoint


@dataclass(frozen=True)
class Endpoint:
    base_url: str              # as recorded: no credentials, query or fragment
    organization: str | None
    project: str | None


def resolve_endpoint(cfg: OpenAITrainConfig) -> Endpoint:
    raw = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TrainError(f"train.openai.base_url: {_safe_url(raw)!r} is not an http(s) URL")
    return Endpoint(_safe_url(raw),
                    cfg.organization or os.environ.get("OPENAI_ORG_ID") or None,
                    cfg.project or os.environ.get("OPENAI_PROJECT_ID") or None)


def _safe_url(url: str) -> str:
    """The URL without user:password@, query or fragment (nothing secret gets recorded)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


# --------------------------------------------------------------------------- the key


class Redactor:
    """Scrubs the API key (and anything shaped like an OpenAI key, such as the masked echo
    in a 401) out of every message that might be shown or written."""

    KEY_SHAPE = re.compile(r"\bsk-[A-Za-z0-9*_\-]{6,}")

    def __init__(self, *secrets: str):
        self.secrets = [s for s in secrets if s]

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<redacted>")
        return self.KEY_SHAPE.sub("sk-<redacted>", text)

    def scrub(self, obj: Any) -> Any:
        """The same, through every string of an API object (events and errors echo text)."""
        if isinstance(obj, str):
            return self(obj)
        if isinstance(obj, dict):
            return {k: self.scrub(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.scrub(v) for v in obj]
        return obj


def read_api_key(cfg: OpenAITrainConfig) -> str:
    key = os.environ.get(cfg.api_key_env, "").strip()
    if not key:
        raise TrainError(f"no API key: set the environment variable {cfg.api_key_env} "
                         "(train.openai.api_key_env names it; the key never goes in a config file)")
    return key


# --------------------------------------------------------------------------- the API, with retries


class ApiFailure(TrainError):
    """A request that failed for good; `status` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


def retry_after_seconds(headers: Any) -> float | None:
    """Retry-After as the API sends it: retry-after-ms, or Retry-After in seconds or as a date."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(value) / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return max(0.0, email.utils.mktime_tz(parsed) - time.time()) if parsed else None


class Api:
    """The SDK client (its own retries off) behind one retry policy that we can see and test:
    transient failures wait (Retry-After when the server gives one, else exponential backoff
    with jitter) and try again; permanent ones raise ApiFailure with the API's message."""

    def __init__(self, cfg: OpenAITrainConfig, endpoint: Endpoint, api_key: str, progress: Progress,
                 sleep: Callable[[float], None] = time.sleep):
        import httpx2
        import openai

        self.cfg, self.endpoint, self.progress, self.sleep = cfg, endpoint, progress, sleep
        self.redact = Redactor(api_key)
        base_url = cfg.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        self.client = openai.OpenAI(
            api_key=api_key, base_url=base_url, organization=endpoint.organization, project=endpoint.project,
            max_retries=0, timeout=httpx2.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s))

    def transient(self, exc: Exception) -> tuple[bool, float | None, str]:
        """(retry?, the server's Retry-After, a short reason)."""
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return True, None, f"no answer within {self.cfg.request_timeout_s:g}s"
        if isinstance(exc, openai.APIConnectionError):
            return True, None, "connection failed or dropped"
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            if exc.status_code == 429 and body.get("code") == "insufficient_quota":
                return False, None, ""  # out of credit: waiting does not help
            if exc.status_code in (408, 409, 429) or exc.status_code >= 500:
                return True, retry_after_seconds(exc.response.headers), f"HTTP {exc.status_code}"
        return False, None, ""

    def describe(self, what: str, exc: Exception) -> ApiFailure:
        import openai

        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            message = str(body.get("message") or exc.message)
            if len(message) > 500:  # a proxy's HTML error page, say
                message = message[:500] + "..."
            label = body.get("code") or body.get("type")
            label = f" {label}" if label else ""
            param = f" (param: {body['param']})" if body.get("param") else ""
            hint = ""
            if exc.status_code == 401:
                hint = f"; check the key in {self.cfg.api_key_env}"
            elif exc.status_code == 403:
                hint = "; check the key's organization/project and its permissions"
            elif exc.status_code == 404:
                hint = f" on {self.endpoint.base_url}"
            text = f"{what}: HTTP {exc.status_code}{label}: {message}{param}{hint}"
            return ApiFailure(self.redact(text), exc.status_code, body.get("code"))
        return ApiFailure(self.redact(f"{what}: {type(exc).__name__}: {exc}"))

    def backoff(self, attempt: int) -> float:
        wait = min(self.cfg.retry_max_backoff_s, self.cfg.retry_backoff_s * 2 ** attempt)
        return wait * random.uniform(0.75, 1.0)

    def call(self, what: str, fn: Callable[..., Any], *args: Any, lookup: Callable[[], Any] | None = None,
             **kwargs: Any) -> Any:
        """fn(*args, **kwargs), retried. For a create (not idempotent), `lookup` finds the
        object a lost answer may have created; it runs after the wait, before any retry."""
        import openai

        attempt = 0
        while True:
            try:
                return fn(*args, **kwargs)
            except openai.OpenAIError as exc:
                wait, reason = self.retry_wait(what, exc, attempt)
            attempt += 1
            self.progress.retry(what, attempt, self.cfg.max_retries, wait, reason)
            self.sleep(wait)
            if lookup is not None:
                found = self.call(f"look up {what}", lookup)
                if found is not None:
                    self.progress.note(f"{what}: the lost answer had gone through; using {found.id}")
                    return found

    def retry_wait(self, what: str, exc: Exception, attempt: int) -> tuple[float, str]:
        """How long to wait before retry number `attempt + 1`, and why; raises ApiFailure
        when the failure is permanent, the retries are spent, or the server asks for too long."""
        retry, retry_after, reason = self.transient(exc)
        if not retry:
            raise self.describe(what, exc) from None
        if attempt >= self.cfg.max_retries:
            failure = self.describe(what, exc)
            raise ApiFailure(f"{failure} (gave up after {attempt} retries)", failure.status) from None
        if retry_after is None:
            return self.backoff(attempt), reason
        if retry_after > self.cfg.max_retry_after_s:
            raise ApiFailure(self.redact(
                f"{what}: HTTP {getattr(exc, 'status_code', '')} and the server asks to retry after "
                f"{retry_after:.0f}s, more than train.openai.max_retry_after_s "
                f"({self.cfg.max_retry_after_s:.0f}s); try again later"), getattr(exc, "status_code", None)) from None
        return retry_after, reason + " (Retry-After)"

