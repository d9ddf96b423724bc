"""The OpenAI backend's fine-tuning method (`train.method`) and the base model's availability.

- The method picks the files and the job's `method` body: `sft` uploads split's chat files
  and creates `{"type": "supervised", ...}`; `dpo` uploads split's preference files
  (`<set>.dpo.openai.jsonl`, checked with pipelines/openai_format.py's DPO checks) and creates
  `{"type": "dpo", "dpo": {"hyperparameters": {"beta": ..., ...}}}`.
- Before anything is uploaded, the base model is looked up with the models API. A model the
  endpoint does not know, or one past its `shutdown_date`, is refused with one line naming the
  date and what to do instead.
- A job refused because the organisation may no longer fine-tune ends with that explanation
  instead of the API's raw error.

OpenAI's deprecations page (announced 2026-05-07): organisations that had never fine-tuned
were blocked that day, those without fine-tuned-model inference in the previous 60 days from
2026-07-02, and nobody can create new jobs after 2027-01-06. A fine-tune answers only until
its base snapshot is retired.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.openai_api import ApiFailure
from pipelines.openai_format import FormatError, FormatReport, require_valid, require_valid_dpo
from pipelines.train import TrainError

SFT_FILES = {"train": "train.openai.jsonl", "validation": "validation.openai.jsonl"}
DPO_FILES = {"train": "train.dpo.openai.jsonl", "validation": "validation.dpo.openai.jsonl"}
SELF_SERVE_ENDS = "2027-01-06"  # no new fine-tuning jobs on OpenAI's API after this day
ALTERNATIVES = ("another base model (train.openai.model), Azure OpenAI (train.openai.base_url; README, "
                "\"Azure OpenAI\"), or the LoRA backend (train.backend: lora)")
# The organisation may not fine-tune any more. The API's exact wording is not documented, so
# its code and message are matched loosely.
_BLOCKED = re.compile(r"(organi[sz]ation|\borg\b).{0,80}(no longer|not (allowed|permitted|eligible|able)|blocked)"
                      r".{0,80}fine.?tun|fine.?tun.{0,80}(no longer|not) (available|allowed|permitted)"
                      r".{0,80}(organi[sz]ation|\borg\b)", re.IGNORECASE | re.DOTALL)
BLOCKED_CODES = ("fine_tuning_not_allowed", "fine_tuning_unavailable", "organization_not_allowed")


def files(method: str) -> dict[str, str]:
    return DPO_FILES if method == "dpo" else SFT_FILES


def check_method(config: PipelineConfig) -> str:
    method = config.train.method
    if method == "sft+dpo":
        raise TrainError("train.method: sft+dpo runs on the LoRA backend only; on OpenAI run method sft, then "
                         "method dpo with train.openai.model set to the fine-tuned model it made")
    return method


def recorded(split_manifest: dict[str, Any], method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(format checks, billing) that split recorded for this method's files."""
    section = split_manifest.get("preferences") if method == "dpo" else split_manifest.get("openai")
    if method == "dpo" and not section:
        raise TrainError(f"split {split_manifest['id']} has no preference pairs (split it again with this version "
                         "of refit); train.method dpo needs them")
    return section.get("format_checks", {}), section.get("billing", {})


def require_valid_file(path: Path, method: str) -> FormatReport:
    try:
        return require_valid_dpo(path) if method == "dpo" else require_valid(path)
    except FormatError as exc:
        raise TrainError(f"refusing to upload: {exc}") from None


def method_body(config: PipelineConfig) -> dict[str, Any]:
    """The job's `method`, with the hyperparameters of train.openai (and train.dpo.beta)."""
    cfg = config.train.openai
    hyper: dict[str, Any] = {"n_epochs": cfg.n_epochs, "batch_size": cfg.batch_size,
                             "learning_rate_multiplier": cfg.learning_rate_multiplier}
    if config.train.method == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": hyper | {"beta": config.train.dpo.beta}}}
    return {"type": "supervised", "supervised": {"hyperparameters": hyper}}


# --------------------------------------------------------------------------- the base model


def check_base_model(api: Any, model: str, today: dt.date | None = None) -> dict[str, Any]:
    """Retrieve the base model; refuse one the endpoint does not know or past its shutdown
    date. Returns {"id", "shutdown_date"} for the run's manifest (and the registry)."""
    today = today or dt.datetime.now(dt.UTC).date()
    try:
        found = api.call("look up the base model", api.client.models.retrieve, model)
    except ApiFailure as exc:
        if exc.status == 404:
            raise TrainError(f"refusing to upload: the base model {model} is not available on "
                             f"{api.endpoint.base_url} (retired, or never offered there); use {ALTERNATIVES}") from None
        raise
    shutdown = getattr(found, "shutdown_date", None)
    date = parse_date(shutdown)
    if date is not None and date <= today:
        raise TrainError(f"refusing to upload: the base model {model} was shut down on {date.isoformat()}; "
                         f"use {ALTERNATIVES}")
    return {"id": found.id, "shutdown_date": date.isoformat() if date else None}


def parse_date(value: Any) -> dt.date | None:
    """A shutdown date as the API gives it: an ISO date or time, or Unix seconds."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.UTC).date()
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def blocked_explanation(exc: ApiFailure) -> ApiFailure | None:
    """The explanation for a create refused because the organisation may no longer
    fine-tune; None for any other failure."""
    text = str(exc)
    if exc.status not in (400, 403) or not (exc.code in BLOCKED_CODES or _BLOCKED.search(text)):
        return None
    return ApiFailure(
        "the fine-tuning job was refused: this organisation may no longer fine-tune on OpenAI's API. OpenAI ended "
        "self-serve fine-tuning (announced 2026-05-07: organisations that never fine-tuned were blocked that day, "
        "those without fine-tuned-model inference in the last 60 days from 2026-07-02, and no new jobs after "
        f"{SELF_SERVE_ENDS}). Nothing was trained; the uploaded files stay in the account. Use Azure OpenAI "
        "(train.openai.base_url; README, \"Azure OpenAI\") or the LoRA backend (train.backend: lora). "
        f"The API said: {text}", exc.status, exc.code)
