"""A real worker kill (SIGKILL) mid-run: Ray Train restarts the worker group and the loop
resumes from the latest checkpoint, not from epoch 0."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import mlflow
import pytest

from benchmarks.common import kill_train_worker_after
from components.config import TrainConfig
from components.train import train

pytestmark = pytest.mark.slow


def test_worker_killed_mid_run_resumes_from_latest_checkpoint(
    tiny_dataset, train_cfg: TrainConfig, ray_cluster, mlflow_uri, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    storage = tmp_path / "ray"
    cfg = train_cfg.model_copy(
        update={"epochs": 25, "storage_path": str(storage), "max_failures": 1}
    )
    killed: list[float] = []
    killer = threading.Thread(target=kill_train_worker_after, args=(storage, 3, killed))
    killer.start()
    result = train(cfg, data_dir=tiny_dataset.out_dir, out_dir=tmp_path / "candidate")
    killer.join()
    assert killed, "no worker was killed: the run finished first"
    lineage = json.loads((result.model_dir / "lineage.json").read_text())
    (resumed_at,) = lineage["resumed_at_epochs"]
    # From the latest checkpoint the controller had registered when the worker died (files
    # reach the disk a moment before the controller records them), not from the start.
    assert 1 <= resumed_at < 25
    history = json.loads((result.model_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(25))
    assert result.metrics["resumes"] == 1


def test_no_restarts_left_fails_closed(
    tiny_dataset, train_cfg: TrainConfig, ray_cluster, mlflow_uri, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    storage = tmp_path / "ray"
    cfg = train_cfg.model_copy(
        update={"epochs": 25, "storage_path": str(storage), "max_failures": 0}
    )
    killed: list[float] = []
    killer = threading.Thread(target=kill_train_worker_after, args=(storage, 2, killed))
    killer.start()
    with pytest.raises(RuntimeError, match="training failed"):
        train(cfg, data_dir=tiny_dataset.out_dir, out_dir=tmp_path / "candidate")
    killer.join()
    assert killed and not (tmp_path / "candidate").exists()
