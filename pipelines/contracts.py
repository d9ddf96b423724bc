"""The files one stage hands the next, as pydantic models validated when read.

A downstream stage reads an upstream manifest (or the eval report) through `read_manifest`,
so a malformed, truncated or old-format file fails with one line naming the file and the
first field that is wrong, instead of a KeyError deep inside the stage. The models name the
fields other code reads; everything else a stage records is kept as written
(`extra="allow"`), and the reader gets the plain dict back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError


class ContractError(ValueError):
    """An upstream file that is missing, unreadable or not of the expected shape."""


class Manifest(BaseModel):
    """What every stage's manifest.json opens with (`stage.Stage.base_manifest`)."""

    model_config = ConfigDict(extra="allow")

    stage: str
    id: str
    created_at: str
    code_version: str


class IdRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str


class CurateCounts(BaseModel):
    """Where every input line went (read = kept + quarantined + backlog + sum(filtered)),
    and the derived examples added."""

    model_config = ConfigDict(extra="allow")

    read: int
    kept: int
    quarantined: int
    backlog: int
    filtered: dict[str, int]
    added: dict[str, int]
    examples: int


class CurateDecision(BaseModel):
    model_config = ConfigDict(extra="allow")

    verdict: str
    why: str


class CurateManifest(Manifest):
    counts: CurateCounts
    decision: CurateDecision
    inputs: list[dict[str, Any]]
    files: dict[str, str]  # examples.jsonl, rag_backlog.jsonl, quarantine.jsonl -> sha256


class SplitManifest(Manifest):
    dataset: IdRef
    counts: dict[str, Any]
    regression: dict[str, Any]
    files: dict[str, str]
    openai: dict[str, Any]


class RunManifest(Manifest):
    backend: str
    split: dict[str, Any]
    dataset: IdRef


class EvalManifest(Manifest):
    run: dict[str, Any]
    gate: dict[str, Any]


class EvalReport(BaseModel):
    """report.json of an eval: what promote, the model card and status read."""

    model_config = ConfigDict(extra="allow")

    id: str
    created_at: str
    run: dict[str, Any]
    contenders: dict[str, Any]
    suites: dict[str, Any]
    gate: dict[str, Any]


def read_manifest(path: Path, model: type[BaseModel] = Manifest) -> dict[str, Any]:
    """Read and validate a stage file; return it as a dict. Raises ContractError."""
    try:
        data = orjson.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise ContractError(f"{path}: not found") from None
    except orjson.JSONDecodeError as exc:
        raise ContractError(f"{path}: not valid JSON ({exc})") from None
    try:
        model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ContractError(f"{path}: {where}: {first['msg']} (not a {model.__name__} this version of refit "
                            f"reads; re-run the stage that wrote it)") from None
    return data
