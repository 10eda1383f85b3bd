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
from components.train import TrainResult, train

pytestmark = pytest.mark.slow


def train_with_a_kill(
    data_dir: Path, cfg: TrainConfig, out_dir: Path, *, max_failures: int, after: int
) -> tuple[list[float], TrainResult | Exception]:
    """Train 25 epochs while another thread SIGKILLs a worker after `after` checkpoints."""
    storage = out_dir.parent / "ray"
    cfg = cfg.model_copy(update={"epochs": 25, "storage_path": str(storage),
                                 "max_failures": max_failures})  # fmt: skip
    killed: list[float] = []
    killer = threading.Thread(
        target=kill_train_worker_after, args=(storage, after, killed)
    )
    killer.start()
    try:
        outcome: TrainResult | Exception = train(
            cfg, data_dir=data_dir, out_dir=out_dir
        )
    except RuntimeError as error:
        outcome = error
    killer.join()
    return killed, outcome


def test_worker_killed_mid_run_resumes_from_latest_checkpoint(
    tiny_dataset, train_cfg: TrainConfig, ray_cluster, mlflow_uri, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    out_dir = tmp_path / "candidate"
    killed, result = train_with_a_kill(
        tiny_dataset.out_dir, train_cfg, out_dir, max_failures=1, after=3
    )
    assert killed, "no worker was killed: the run finished first"
    assert isinstance(result, TrainResult), result
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
    out_dir = tmp_path / "candidate"
    killed, outcome = train_with_a_kill(
        tiny_dataset.out_dir, train_cfg, out_dir, max_failures=0, after=2
    )
    assert killed
    assert isinstance(outcome, RuntimeError) and "training failed" in str(outcome)
    assert not (tmp_path / "candidate").exists()
