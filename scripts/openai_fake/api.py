"""What every part of the fake API shares: its routes, its error shape, cursor pagination and
the token count it reports."""

from __future__ import annotations

import json
import math
from typing import Any

ROUTES = (
    "POST /v1/files",
    "GET /v1/files",
    "GET /v1/files/{id}",
    "GET /v1/files/{id}/content",
    "POST /v1/fine_tuning/jobs",
    "GET /v1/fine_tuning/jobs",
    "GET /v1/fine_tuning/jobs/{id}",
    "GET /v1/fine_tuning/jobs/{id}/events",
    "GET /v1/fine_tuning/jobs/{id}/checkpoints",
    "POST /v1/fine_tuning/jobs/{id}/cancel",
    "POST /v1/chat/completions",
    "GET /v1/models/{id}",
)
IDK = "I don't know based on the provided documents."


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def approx_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's rule of thumb; deterministic."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def messages_tokens(messages: list[dict[str, Any]]) -> int:
    return 3 + sum(4 + approx_tokens(str(m.get("content") or "")) for m in messages)


def prompt_key(messages: list[dict[str, Any]]) -> str:
    return json.dumps([[m.get("role"), m.get("content")] for m in messages], ensure_ascii=False)


def page(items: list[dict[str, Any]], query: dict[str, str], default_limit: int) -> dict[str, Any]:
    """Cursor pagination as the API does it: `after` an id, `limit` items, `has_more`."""
    try:
        limit = int(query.get("limit", default_limit))
    except ValueError:
        raise ApiError(400, f"Invalid 'limit': {query.get('limit')!r}", param="limit") from None
    after = query.get("after")
    if after:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    data = items[:max(limit, 0)]
    return {"object": "list", "data": data, "has_more": len(items) > len(data),
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}
