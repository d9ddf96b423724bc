"""The files one stage hands the next, as pydantic models validated when read.

A downstream stage reads an upstream manifest (or the eval report) through `read_manifest`,
so a malformed, truncated or old-format file fails with one line naming the file and the
first field that is wrong, instead of a KeyError deep inside the stage. The models name the
fields other code reads; everything else a stage records is kept as written
(`extra="allow"`), and the reader gets the plain dict back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


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


class SplitCounts(BaseModel):
    model_config = ConfigDict(extra="allow")

    train: int
    validation: int
    regression: int


class SplitOpenAI(BaseModel):
    """The OpenAI exports' format checks (train refuses to upload a failed one) and the bill."""

    model_config = ConfigDict(extra="allow")

    format_checks: dict[str, Any]
    billing: dict[str, Any]


class SplitManifest(Manifest):
    dataset: IdRef
    counts: SplitCounts
    regression: dict[str, Any]
    files: dict[str, str]  # file name -> sha256, so train uploads exactly what split checked
    openai: SplitOpenAI


class RunSplitRef(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    path: str


class AdapterRef(BaseModel):
    """A LoRA run's adapter folder (PEFT format), relative to the run folder."""

    model_config = ConfigDict(extra="allow")

    path: str
    trainable_parameters: int


class OpenAIJobRef(BaseModel):
    """An OpenAI run's job and the model it made: what eval calls and promote registers."""

    model_config = ConfigDict(extra="allow")

    fine_tuned_model: str
    model: str
    job_id: str
    base_url: str | None = None
    hyperparameters: dict[str, Any] = {}


class RunManifest(Manifest):
    """A train run: `adapter` for the lora backend, `openai` for the openai one."""

    backend: Literal["lora", "openai"]
    config_hash: str
    split: RunSplitRef
    dataset: IdRef
    base_model: dict[str, Any]
    config: dict[str, Any]
    losses: dict[str, Any]
    steps: dict[str, Any]
    mlflow: dict[str, Any]
    adapter: AdapterRef | None = None
    openai: OpenAIJobRef | None = None

    @model_validator(mode="after")
    def _backend_output(self) -> RunManifest:
        if self.backend == "lora" and self.adapter is None:
            raise ValueError("adapter is missing (a lora run has one)")
        if self.backend == "openai" and self.openai is None:
            raise ValueError("openai is missing (an openai run records its job there)")
        return self


class EvalManifest(Manifest):
    """manifest.json of an eval: what promote checks the eval against (the run it measured,
    the champion it measured against, the config it ran with)."""

    pipeline: str
    config_hash: str
    run: dict[str, Any]
    split: IdRef
    champion: dict[str, Any] | None
    suites: dict[str, Any]
    gate: dict[str, Any]


class GateVerdict(BaseModel):
    """The gate's verdict in report.json (evals/gate.py `decide`)."""

    model_config = ConfigDict(extra="allow")

    passed: bool
    rules: list[dict[str, Any]]
    failed: list[str]
    summary: str


class EvalReport(BaseModel):
    """report.json of an eval: what promote, the model card and status read."""

    model_config = ConfigDict(extra="allow")

    id: str
    created_at: str
    pipeline: str
    run: IdRef
    split: IdRef
    contenders: dict[str, Any]
    suites: dict[str, Any]
    gate: GateVerdict


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
