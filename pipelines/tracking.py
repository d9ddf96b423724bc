"""MLflow, configured once for the whole project.

Every stage that tracks or registers goes through `setup`: the tracking URI comes from
`MLFLOW_TRACKING_URI` or the config (a SQLite file by default, an MLflow server when a team
shares one), and the experiment is created with an explicit artifact location, so MLflow never
drops an `mlruns/` folder into whatever directory refit happens to run in.

Both training backends open and end their MLflow run (`open_run`, `finish_run`) and draw their
loss curves (`plot_losses`) here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- a training run's MLflow run


def open_run(config: PipelineConfig, run_name: str, state: dict[str, Any], save_state: Callable[[], None],
             params: dict[str, Any], tags: dict[str, str] | None = None) -> str:
    """The MLflow run of a training run: created once, re-opened by a resumed or re-attached run.

    The new run's id goes into `state` and is saved before anything is logged to it, so a run
    killed right after never gets a second MLflow run. It is logged to by id afterwards (no
    active run in the process), and stays open until `finish_run`."""
    import mlflow

    setup(config)
    if state.get("mlflow_run_id"):
        return state["mlflow_run_id"]
    run = mlflow.start_run(run_name=run_name)
    mlflow_run = run.info.run_id
    mlflow.end_run()
    state["mlflow_run_id"] = mlflow_run
    save_state()
    mlflow.log_params(params, run_id=mlflow_run)
    if tags:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        for key, value in tags.items():
            client.set_tag(mlflow_run, key, value)
    return mlflow_run


def finish_run(mlflow_run: str | None, status: str, tags: dict[str, str], *, metrics: dict[str, Any] | None = None,
               step: int = 0, artifacts: Sequence[tuple[Path, str | None]] = ()) -> None:
    """Log the final metrics (the numeric ones) and the artifacts (file, folder in the run),
    tag the run and end it with `status` (FINISHED, FAILED, KILLED). No run: nothing to do."""
    if not mlflow_run:
        return
    import mlflow
    from mlflow.tracking import MlflowClient

    numeric = {k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    if numeric:
        mlflow.log_metrics(numeric, step=step, run_id=mlflow_run)
    for path, folder in artifacts:
        mlflow.log_artifact(str(path), artifact_path=folder, run_id=mlflow_run)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(mlflow_run, key, value)
    client.set_terminated(mlflow_run, status)


# --------------------------------------------------------------------------- the loss curves


Series = tuple[str, Sequence[tuple[float, float]], dict[str, Any]]  # label, (step, loss) points, line style


def plot_losses(target: Path, title: str, series: Sequence[Series], *, xlabel: str, ylabel: str,
                baseline: tuple[float, str] | None = None, note: str | None = None) -> None:
    """A run's curves.png: every series that has points, an optional horizontal baseline
    (value, label), and `note` written across the plot (to say why it is empty)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    drawn = False
    for label, points, style in series:
        if points:
            ax.plot(*zip(*points), label=label, **style)
            drawn = True
    if baseline is not None:
        value, label = baseline
        ax.axhline(value, color="#55a868", linestyle="--", label=label)
    if note:
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if drawn or baseline is not None:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
