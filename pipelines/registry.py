"""The model registry (MLflow): one registered model per pipeline, aliases `candidate` and
`champion`."""

from __future__ import annotations

from typing import Any

from pipelines.config import PipelineConfig


def model_name(config: PipelineConfig) -> str:
    return f"refit-{config.name}"


def alias_version(config: PipelineConfig, alias: str) -> Any | None:
    """The model version an alias points at, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from pipelines import tracking

    tracking.setup(config)
    try:
        return MlflowClient().get_model_version_by_alias(model_name(config), alias)
    except MlflowException:
        return None
