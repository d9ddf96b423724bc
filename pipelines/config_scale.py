"""How `curate` runs, as opposed to what it computes: worker processes, the engine (this
machine or a Ray cluster), shard size and object-storage options. The base of
`CurateConfig` in pipelines/config.py.

None of these keys changes a byte of the output (a test checks workers 1 against N and the
local engine against Ray), so none of them is part of the dataset id or the config hash:
`RUN_ONLY_KEYS` are left out of `PipelineConfig.section_hash`. Credentials are never
configuration: `storage_options` refuses them, the filesystems read them from the
environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_*, HF_TOKEN)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

RUN_ONLY_KEYS = {"curate": {"workers", "engine", "ray_address", "shard_bytes", "storage_options"}}

# Option names that carry a secret in fsspec filesystems (s3fs, gcsfs, adlfs, huggingface_hub).
SECRET_OPTIONS = frozenset({"key", "secret", "token", "password", "session_token", "aws_access_key_id",
                            "aws_secret_access_key", "aws_session_token", "account_key", "sas_token",
                            "client_secret", "connection_string", "credentials"})


def _secret_paths(value: Any, path: str) -> list[str]:
    if isinstance(value, dict):
        found = [f"{path}.{k}" for k in value if str(k).lower() in SECRET_OPTIONS]
        return found + [p for k, v in value.items() for p in _secret_paths(v, f"{path}.{k}")]
    return []


class CurateScale(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int | Literal["auto"] = Field("auto", description=(
        "processes that read, scrub and fingerprint shards: auto (the usable cores), or N; 1 = one process"))
    engine: Literal["local", "ray"] = Field("local", description=(
        "local (this machine's processes) or ray (a Ray cluster; pip install 'refit[ray]')"))
    ray_address: str | None = Field(None, description=(
        "engine ray: the cluster to join (ray.init address); null: $RAY_ADDRESS, else a local Ray"))
    shard_bytes: int = Field(16 << 20, ge=4096, description=(
        "inputs are cut into shards of about this many bytes, at line boundaries (.gz / remote: one per file)"))
    storage_options: dict[str, Any] = Field({}, description=(
        "fsspec options for URL inputs (s3://, gs://, ...), e.g. {client_kwargs: {endpoint_url: ...}}; "
        "no credentials: they come from the environment"))

    @field_validator("workers")
    @classmethod
    def _positive(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be auto or a positive number of processes")
        return value

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any]) -> dict[str, Any]:
        secrets = _secret_paths(value, "storage_options")
        if secrets:
            raise ValueError(f"{', '.join(secrets)}: credentials are never read from the config; set them in the "
                             "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, ...)")
        return value
