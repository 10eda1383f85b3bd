"""MLflow records of training: params, per-epoch metrics in batches, artifacts, lineage tags.

The tracking URI is MLflow's own: MLFLOW_TRACKING_URI when set, else ./mlflow.db (SQLite).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.config import TrainConfig, read_params
from components.model import ModelSpec

_BATCH = 1000  # MLflow's limit of metrics per log_batch call


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


def log_training_run(
    cfg: TrainConfig,
    spec: ModelSpec,
    history: list[dict[str, float]],
    summary: dict[str, float],
    lineage: Lineage,
    *,
    artifacts_dir: Path,
) -> str:
    """Log one run and return its id."""
    import mlflow
    from mlflow.entities import Metric

    mlflow.set_experiment(cfg.experiment)
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params(
            {
                **_flat(cfg.model_dump()),
                "in_channels": spec.in_channels,
                "num_classes": spec.num_classes,
                "arch": spec.arch,
            }
        )
        mlflow.set_tags(lineage.tags())
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, int(row["epoch"]))
            for row in history
            for key, value in row.items()
            if key != "epoch"
        ]
        metrics += [
            Metric(f"final_{key}", value, now, 0) for key, value in summary.items()
        ]
        client = mlflow.MlflowClient()
        for start in range(0, len(metrics), _BATCH):
            client.log_batch(run.info.run_id, metrics=metrics[start : start + _BATCH])
        mlflow.log_artifacts(str(artifacts_dir), artifact_path="candidate")
        return str(run.info.run_id)


def log_evaluation(run_id: str, metrics: dict[str, float], report_dir: Path) -> None:
    """Attach the evaluation to the training run that produced the model."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))
    client.log_artifacts(run_id, str(report_dir), artifact_path="evaluation")


def _flat(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: json.dumps(v) if isinstance(v, list | dict) else v
        for key, v in values.items()
    }


def _git_state() -> tuple[str, bool]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return commit, dirty
