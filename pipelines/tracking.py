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

# Every URI refit has handed to MLflow. MLflow 3 copies it into MLFLOW_TRACKING_URI, so
# without this a second pipeline in the same process would read the first one's store back
# as if the user had set it (also after something restores an older value of the variable).
_set_by_refit: set[str] = set()


def tracking_uri(config: PipelineConfig) -> str:
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    uri = from_env if from_env and from_env not in _set_by_refit else config.tracking.uri
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
    uri = tracking_uri(config)
    _set_by_refit.add(uri)
    mlflow.set_tracking_uri(uri)
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
