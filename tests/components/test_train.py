"""Training under a real local Ray cluster, tracked on a real MLflow server; then evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from components.config import EvaluateConfig, TrainConfig
from components.evaluate import evaluate
from components.model import WEIGHTS_FILE, load_model
from components.train import train
from components.train_loop import CHECKPOINT_FILE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(
    tiny_dataset,
    train_cfg: TrainConfig,
    ray_cluster,
    mlflow_uri: str,
    tmp_path_factory: pytest.TempPathFactory,
):
    mlflow.set_tracking_uri(mlflow_uri)
    out_dir = tmp_path_factory.mktemp("train") / "candidate"
    result = train(
        train_cfg,
        data_dir=tiny_dataset.out_dir,
        out_dir=out_dir,
        params_path=Path(__file__).parents[1] / "params.tiny.yaml",
    )
    yield result
    mlflow.set_tracking_uri(None)


def test_candidate_files_and_weights_only_load(trained, train_cfg: TrainConfig) -> None:
    folder = trained.model_dir
    assert {p.name for p in folder.iterdir()} >= {
        WEIGHTS_FILE,
        "spec.json",
        "metrics.json",
        "history.json",
        "lineage.json",
    }
    state = torch.load(
        folder / WEIGHTS_FILE, weights_only=True
    )  # plain tensors, no code
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    model, spec = load_model(folder)
    assert spec.classes == ["class_0", "class_1", "class_2"] and spec.in_channels == 1
    assert model(torch.zeros(2, 1, spec.image_size, spec.image_size)).shape == (2, 3)
    history = json.loads((folder / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(train_cfg.epochs))
    best = max(row["val_accuracy"] for row in history)
    assert trained.metrics["val_accuracy"] == pytest.approx(best)


def test_mlflow_run_has_params_metric_history_lineage_and_artifacts(
    trained, mlflow_uri
) -> None:
    client = mlflow.MlflowClient(mlflow_uri)
    run = client.get_run(trained.run_id)
    assert run.data.params["lr"] == "0.01" and run.data.params["num_workers"] == "1"
    assert len(client.get_metric_history(trained.run_id, "val_accuracy")) == 3
    lineage = json.loads((trained.model_dir / "lineage.json").read_text())
    assert (
        run.data.tags["lineage.dataset_content_hash"] == lineage["dataset_content_hash"]
    )
    assert len(run.data.tags["lineage.params_hash"]) == 64
    assert lineage["mlflow_run_id"] == trained.run_id
    artifacts = {a.path for a in client.list_artifacts(trained.run_id, "candidate")}
    assert "candidate/model.pt" in artifacts and "candidate/spec.json" in artifacts


def test_evaluate_writes_metrics_per_class_and_confusion(
    trained, tiny_dataset, tmp_path: Path
) -> None:
    result = evaluate(
        EvaluateConfig(batch_size=4),
        model_dir=trained.model_dir,
        data_dir=tiny_dataset.out_dir,
        report_dir=tmp_path / "evaluation",
    )
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert metrics == result.metrics and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert metrics["test_accuracy"] > 0.6  # three easy patterns; chance is 0.33
    per_class = json.loads((tmp_path / "evaluation" / "per_class.json").read_text())
    assert (
        metrics["variant"] == "fp32"
    )  # no shipped variant given: the candidate itself
    per_class = per_class["shipped"]
    assert set(per_class) == {"class_0", "class_1", "class_2"}
    assert sum(c["support"] for c in per_class.values()) == metrics["test_images"]
    assert (tmp_path / "evaluation" / "confusion_matrix.png").stat().st_size > 1000
    run = mlflow.MlflowClient().get_run(
        trained.run_id
    )  # evaluation joins the training run
    assert run.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_two_workers_match_one_worker_within_noise(
    tiny_dataset, train_cfg: TrainConfig, ray_cluster, mlflow_uri, tmp_path: Path
) -> None:
    """DDP over gloo: sharded data, reduced metrics, the same global batch."""
    mlflow.set_tracking_uri(mlflow_uri)
    params = Path(__file__).parents[1] / "params.tiny.yaml"
    results = [
        train(
            train_cfg.model_copy(update={"num_workers": workers}),
            data_dir=tiny_dataset.out_dir,
            out_dir=tmp_path / f"w{workers}",
            params_path=params,
        )
        for workers in (1, 2)
    ]
    one, two = (r.metrics["val_accuracy"] for r in results)
    assert one >= 0.6 and two >= 0.6
    assert abs(one - two) <= 0.25  # about two of the nine validation images


def test_rerun_with_same_params_reproduces_metrics(
    tiny_dataset, train_cfg: TrainConfig, ray_cluster, mlflow_uri, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    histories = []
    for attempt in ("a", "b"):
        result = train(
            train_cfg, data_dir=tiny_dataset.out_dir, out_dir=tmp_path / attempt
        )
        history = json.loads((result.model_dir / "history.json").read_text())
        # compute used (CPU/GPU seconds, for the card's energy) is measured, not replayed
        histories.append([{k: v for k, v in row.items()
                           if k not in ("cpu_seconds", "gpu_seconds")}
                          for row in history])  # fmt: skip
        assert all(row["cpu_seconds"] > 0 for row in history)
    assert histories[0] == histories[1]


def test_resnet_trains_and_round_trips(
    tiny_dataset, train_cfg: TrainConfig, ray_cluster, mlflow_uri, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(mlflow_uri)
    cfg = train_cfg.model_copy(
        update={"arch": "resnet", "epochs": 2, "channels": [8, 16]}
    )
    result = train(cfg, data_dir=tiny_dataset.out_dir, out_dir=tmp_path / "resnet")
    model, spec = load_model(result.model_dir)
    assert spec.arch == "resnet" and type(model).__name__ == "SmallResNet"
    assert model(torch.zeros(1, 1, spec.image_size, spec.image_size)).shape == (1, 3)


def test_checkpoint_holds_everything_needed_to_resume(
    tiny_dataset, train_cfg, ray_cluster, mlflow_uri, tmp_path: Path
) -> None:
    """Ray Train keeps model, optimizer, scheduler, epoch and RNG state in every checkpoint."""
    from components.ray_runtime import storage_path_for
    from components.train import build_trainer, model_spec

    cfg = train_cfg.model_copy(
        update={"epochs": 2, "storage_path": str(tmp_path / "ray")}
    )
    result = build_trainer(
        cfg,
        model_spec(cfg, tiny_dataset.out_dir.resolve()),
        data_dir=tiny_dataset.out_dir.resolve(),
        run_name="keep",
    ).fit()
    assert result.path.startswith(storage_path_for(cfg.storage_path))
    with result.checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, weights_only=True)
    assert set(state) == {
        "model", "optimizer", "scheduler", "epoch", "history", "resumes", "rng"
    }  # fmt: skip
    assert state["epoch"] == 1


def test_failed_training_leaves_no_partial_output(
    tiny_dataset, train_cfg, ray_cluster, tmp_path: Path
) -> None:
    bad = train_cfg.model_copy(  # 4px halved three times is less than a pixel
        update={"image_size": 4, "channels": [8, 8, 8], "max_failures": 0}
    )
    with pytest.raises(RuntimeError, match="training failed"):
        train(bad, data_dir=tiny_dataset.out_dir, out_dir=tmp_path / "candidate")
    assert not (tmp_path / "candidate").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine")
def test_gpu_asked_for_without_one_is_named(tiny_dataset, train_cfg, tmp_path) -> None:
    cfg = train_cfg.model_copy(update={"use_gpu": True})
    with pytest.raises(ValueError, match=r"train\.use_gpu is true .* 0 GPU"):
        train(cfg, data_dir=tiny_dataset.out_dir, out_dir=tmp_path / "candidate")
    assert not (tmp_path / "candidate").exists()
