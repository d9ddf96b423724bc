"""Injected faults: which configured fault, if any, hits the Nth request to a route, and the
error response it answers with (the API's shapes and messages, Retry-After headers included)."""

from __future__ import annotations

import math

from .api import ApiError
from .settings import Fault

ERROR_TYPES = {429: "requests", 500: "server_error", 502: "server_error", 503: "server_error"}
DEFAULT_MESSAGES = {429: "Rate limit reached for requests. Please try again later.",
                    500: "The server had an error while processing your request. Sorry about that!",
                    503: "The engine is currently overloaded, please try again later."}


def find_fault(faults: list[Fault], route: str, n: int) -> Fault | None:
    return next((f for f in faults if f.matches(route, n)), None)


def described(fault: Fault) -> dict:
    """The fault as the request log records it: only the fields that are set."""
    return {k: v for k, v in vars(fault).items() if v not in (None, 0.0)}


def fault_error(fault: Fault) -> tuple[ApiError, dict[str, str]]:
    """The error a status fault answers with, and its headers."""
    headers = {}
    if fault.retry_after is not None:
        headers["Retry-After"] = str(math.ceil(fault.retry_after))
    if fault.retry_after_ms is not None:
        headers["retry-after-ms"] = str(int(fault.retry_after_ms))
    kind = ERROR_TYPES.get(fault.status, "invalid_request_error")
    message = fault.message or DEFAULT_MESSAGES.get(fault.status, "Injected failure.")
    return ApiError(fault.status, message, type=kind, code=fault.code), headers
