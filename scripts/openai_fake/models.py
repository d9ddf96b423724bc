"""The models API and the end of self-serve fine-tuning, simulated.

`GET /v1/models/{id}` answers with the API's model object, `shutdown_date` included: a model
listed under `models` with `retired: true` is gone (404, as a retired snapshot is); one with a
`shutdown_date` on or before today is refused when a job is created for it. With
`blocked_organization: true` every job creation is refused with a 403 saying the organisation
may no longer fine-tune (OpenAI's exact wording is not public; this is the server's)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from .api import ApiError

if TYPE_CHECKING:
    from .state import FakeOpenAI

BLOCKED_MESSAGE = ("This organization is no longer able to create fine-tuning jobs: self-serve fine-tuning has "
                   "ended for organizations without recent fine-tuned model usage.")


def _entry(api: FakeOpenAI, model: str) -> dict[str, Any] | None:
    """The model's settings; None when it is retired. Every other model exists (whether it
    can be fine-tuned is `base_models`' business, checked when a job is created)."""
    listed = api.settings.models.get(model, {})
    return None if listed.get("retired") else listed


def retrieve(api: FakeOpenAI, model: str) -> dict[str, Any]:
    entry = _entry(api, model)
    if entry is None:
        raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "system",
            "shutdown_date": entry.get("shutdown_date")}


def check_job_allowed(api: FakeOpenAI, model: str) -> None:
    """What job creation refuses before anything else: a blocked organisation, a model past
    its shutdown date."""
    if api.settings.blocked_organization:
        raise ApiError(403, BLOCKED_MESSAGE, type="invalid_request_error", code="fine_tuning_not_allowed")
    entry = _entry(api, model) or {}
    shutdown = entry.get("shutdown_date")
    if shutdown and dt.date.fromisoformat(str(shutdown)[:10]) <= dt.datetime.now(dt.UTC).date():
        raise ApiError(400, f"The model {model} was shut down on {shutdown} and can no longer be fine-tuned.",
                       param="model", code="model_not_available")
