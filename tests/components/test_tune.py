"""A search of three tiny trials: Optuna + ASHA, nested MLflow runs, the best kept."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from components.config import TrainConfig, TuneConfig
from components.tracking import PARENT_TAG
from components.tune import search_space, trial_config, tune

pytestmark = pytest.mark.slow
TINY = Path(__file__).parents[1] / "params.tiny.yaml"


def test_trial_config_applies_the_sample() -> None:
    base = TrainConfig(channels=[8, 8, 8]).model_dump()
    sampled = {"lr": 0.002, "weight_decay": 1e-5, "dropout": 0.1, "width": 16,
               "batch_size": 32}  # fmt: skip
    cfg = trial_config(base, sampled)
    assert cfg.channels == [16, 32, 64] and cfg.lr == 0.002 and cfg.batch_size == 32
    assert set(search_space(TuneConfig())) == set(sampled)


def test_search_keeps_the_best_trial_with_nested_runs(
    tiny_dataset, train_cfg: TrainConfig, ray_cluster, mlflow_uri, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    tune_cfg = TuneConfig(num_samples=3, max_concurrent=1, grace_period=1,
                          reduction_factor=2, width=[4, 8], batch_size=[8, 16])  # fmt: skip
    train_cfg = train_cfg.model_copy(update={"epochs": 3, "experiment": "tests-tune"})
    result = tune(tune_cfg, train_cfg, data_dir=tiny_dataset.out_dir,
                  out_dir=tmp_path / "candidate", params_path=TINY)  # fmt: skip
    lineage = json.loads((result.model_dir / "lineage.json").read_text())
    client = mlflow.MlflowClient(mlflow_uri)
    parent = lineage["mlflow_parent_run_id"]
    children = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
    )
    assert len(children) == 3
    statuses = [
        (run.info.status, run.data.tags.get("stopped_early")) for run in children
    ]
    assert all(status in ("FINISHED", "KILLED") for status, _ in statuses), statuses
    best_reported = max(
        m.value for run in children
        for m in client.get_metric_history(run.info.run_id, "val_accuracy")
    )  # fmt: skip
    assert result.metrics["val_accuracy"] == pytest.approx(best_reported)
    assert (
        result.run_id == lineage["mlflow_run_id"] in {r.info.run_id for r in children}
    )
    assert set(lineage["best_config"]) == {"lr", "weight_decay", "dropout", "width",
                                           "batch_size"}  # fmt: skip
    spec = json.loads((result.model_dir / "spec.json").read_text())
    assert spec["channels"] == [lineage["best_config"]["width"]]
    parent_run = client.get_run(parent)
    assert parent_run.data.metrics["trials"] == 3
    assert parent_run.data.tags["best_trial_run_id"] == result.run_id
