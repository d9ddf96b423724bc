"""MLflow, configured once for the whole project.

Every stage that tracks or registers goes through `setup`: the tracking URI comes from
`MLFLOW_TRACKING_URI` or the config (a SQLite file by default, an MLflow server when a team
shares one), and the experiment is created with an explicit artifact location, so MLflow never
drops an `mlruns/` folder into whatever directory refit happens to run in.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config import PipelineConfig


def tracking_uri(config: PipelineConfig) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or config.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative SQLite path is relative to where refit runs; make it absolute so the
        # same URI means the same file from every process (and from `accelerate launch`).
        path = Path(uri.removeprefix("sqlite:///")).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{path}"
    return uri


def experiment_name(config: PipelineConfig) -> str:
    return config.tracking.experiment or f"refit-{config.name}"


def setup(config: PipelineConfig) -> str:
    """Point MLflow at the project's store; return the experiment id."""
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-creation chatter
    mlflow.set_tracking_uri(tracking_uri(config))
    client = MlflowClient()
    name = experiment_name(config)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = config.tracking.artifact_location
        if "://" not in location:
            folder = Path(location).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            location = folder.as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id
