"""MLflow records of training: params, per-epoch metrics in batches, artifacts, lineage tags.

The tracking URI is MLflow's own (MLFLOW_TRACKING_URI, else ./mlflow.db). It is resolved once
in the driver and handed to Ray's processes explicitly: the Train controller and Tune trials
run in other processes, where a relative SQLite path or an unset variable would point
elsewhere (the well-known Ray + MLflow pitfall).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from ray.train import UserCallback

from components.config import read_params
from components.io import read_json
from components.model import LINEAGE_FILE
from components.registry_aliases import tracking_uri
from components.train_loop import REPORTED_AT

__all__ = [
    "EpochLogger",
    "Lineage",
    "log_results",
    "log_summary",
    "mlflow_run",
    "tracking_uri",
    "training_run",
]

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests runs under it


@dataclass(frozen=True)
class Lineage:
    git_commit: str
    git_dirty: bool
    dataset_content_hash: str
    params_hash: str

    @classmethod
    def collect(cls, params_path: Path, content_hash: str) -> Lineage:
        canonical = json.dumps(read_params(params_path), sort_keys=True, default=str)
        commit, dirty = _git_state()
        return cls(
            git_commit=commit,
            git_dirty=dirty,
            dataset_content_hash=content_hash,
            params_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        )

    def tags(self) -> dict[str, str]:
        return {f"lineage.{key}": str(value) for key, value in asdict(self).items()}


@contextmanager
def mlflow_run(
    experiment: str,
    name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    uri: str | None = None,
) -> Iterator[str]:
    """A run that ends FINISHED, or FAILED when the block raises; yields its id.

    `uri` is given in Ray's processes, where MLflow's own default may not apply.
    """
    client = mlflow.MlflowClient(uri or tracking_uri())
    experiment_id = _experiment_id(client, experiment)
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[
        mlflow.entities.Param(key, _text(value)) for key, value in params.items()
    ])  # fmt: skip
    try:
        yield run.info.run_id
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")


class EpochLogger(UserCallback):
    """Logs each epoch's metrics to an MLflow run as one batch, from the Train controller,
    as they arrive: a trial stopped early by the scheduler keeps the curve it had."""

    def __init__(self, run_id: str, uri: str) -> None:
        self.run_id = run_id
        self.uri = uri

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:  # fmt: skip
        rank0 = metrics[0]
        step = int(rank0.get("epoch", 0))
        now = int(time.time() * 1000)
        skip = ("epoch", REPORTED_AT)
        batch = [Metric(key, float(value), now, step) for key, value in rank0.items()
                 if key not in skip and isinstance(value, int | float)]  # fmt: skip
        mlflow.MlflowClient(self.uri).log_batch(self.run_id, metrics=batch)


def log_summary(run_id: str, metrics: dict[str, float], artifacts_dir: Path) -> None:
    """The candidate's summary metrics (as final_*) and files, on the run."""
    client = mlflow.MlflowClient(tracking_uri())
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[
        Metric(f"final_{key}", float(value), now, 0) for key, value in metrics.items()
    ])  # fmt: skip
    client.log_artifacts(run_id, str(artifacts_dir), artifact_path="candidate")


def log_results(
    run_id: str, metrics: dict[str, float], paths: list[Path], artifact_path: str
) -> None:
    """Attach a later stage's metrics and files (folders or single files) to the training
    run that produced the model."""
    client = mlflow.MlflowClient(tracking_uri())
    now = int(time.time() * 1000)
    client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()]
    )
    for path in paths:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=artifact_path)
        else:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def training_run(model_dir: Path) -> str | None:
    """The MLflow run that trained the model in `model_dir` (from its lineage), if any."""
    lineage = model_dir / LINEAGE_FILE
    return read_json(lineage).get("mlflow_run_id") if lineage.is_file() else None


def _experiment_id(client: mlflow.MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name))


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)


def _git_state() -> tuple[str, bool]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, bool(dirty)
