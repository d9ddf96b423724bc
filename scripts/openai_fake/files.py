"""The files endpoints: uploads checked like the real API checks them (fine-tune files through
pipelines/openai_format.py, the same checks refit runs before it uploads), listing, retrieval
and result-file downloads."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipelines.openai_format import FormatReport, check_dpo_lines, check_lines

from .api import ApiError, page

if TYPE_CHECKING:
    from .state import FakeOpenAI

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


@dataclass
class StoredFile:
    obj: dict[str, Any]
    content: bytes
    report: FormatReport | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    dpo_report: FormatReport | None = None  # the same lines under the preference (DPO) checks

    def report_for(self, method: str) -> FormatReport | None:
        """The checks a job of this method applies when it validates the file."""
        return self.dpo_report if method == "dpo" else self.report


def _check_fine_tune(filename: str, content: bytes) -> tuple[FormatReport, list[dict[str, Any]]]:
    if not filename.endswith(".jsonl"):
        raise ApiError(400, "Invalid file format for Fine-Tuning API. Must be .jsonl", param="file")
    lines = content.splitlines()
    report = check_lines(lines)
    if report.errors.get("invalid_json"):
        line = report.first_error["invalid_json"]
        raise ApiError(400, f"Invalid file format. Line {line} is not valid JSON.", param="file",
                       code="invalid_file_format")
    return report, [json.loads(line) for line in lines if line.strip()]


def store(api: FakeOpenAI, purpose: str, filename: str, content: bytes, report: FormatReport | None = None,
          examples: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    with api.lock:
        file_id = api.new_id("file-", 22)
        obj = {"object": "file", "id": file_id, "purpose": purpose, "filename": filename, "bytes": len(content),
               "created_at": int(time.time()), "expires_at": None, "status": "processed", "status_details": None}
        api.files[file_id] = StoredFile(obj, content, report, examples or [])
        return obj


def upload(api: FakeOpenAI, fields: dict[str, Any]) -> dict[str, Any]:
    purpose = fields.get("purpose")
    upload = fields.get("file")
    if not isinstance(purpose, str) or not purpose:
        raise ApiError(400, "Missing required parameter: 'purpose'.", param="purpose")
    if purpose not in FILE_PURPOSES:
        raise ApiError(400, f"'{purpose}' is not one of {list(FILE_PURPOSES)} - 'purpose'", param="purpose")
    if not isinstance(upload, tuple):
        raise ApiError(400, "Missing required parameter: 'file'.", param="file")
    filename, content = upload
    report, examples = _check_fine_tune(filename, content) if purpose == "fine-tune" else (None, [])
    obj = store(api, purpose, filename, content, report, examples)
    if purpose == "fine-tune":
        api.files[obj["id"]].dpo_report = check_dpo_lines(content.splitlines())
    return obj


def get_file(api: FakeOpenAI, file_id: str, param: str = "file_id") -> StoredFile:
    stored = api.files.get(file_id)
    if stored is None:
        raise ApiError(404, f"No such File object: {file_id}", param=param)
    return stored


def file_content(api: FakeOpenAI, file_id: str) -> bytes:
    stored = get_file(api, file_id)
    if stored.obj["purpose"] == "fine-tune":
        raise ApiError(400, "Not allowed to download files of purpose: fine-tune")
    return stored.content


def list_files(api: FakeOpenAI, query: dict[str, str]) -> dict[str, Any]:
    with api.lock:
        items = [f.obj for f in api.files.values() if query.get("purpose") in (None, f.obj["purpose"])]
    if query.get("order", "desc") == "desc":
        items = items[::-1]
    return page(items, query, default_limit=10_000)
