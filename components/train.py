"""train: fit the model under Ray Train and keep the best-by-validation weights as the candidate."""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from ray.train.torch import TorchTrainer

from components.config import TrainConfig
from components.data import input_contract, read_split
from components.ingest import DATASET_JSON
from components.io import atomic_dir, read_json, write_json
from components.model import LINEAGE_FILE, ModelSpec, build_model, save_model
from components.ray_runtime import discard_local_run, ensure_ray, storage_path_for
from components.tracking import Lineage, log_training_run
from components.train_loop import CHECKPOINT_FILE, TARGET_METRIC, train_loop_per_worker

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    metrics: dict[str, float]
    run_id: str


def train(
    cfg: TrainConfig,
    *,
    data_dir: Path,
    out_dir: Path,
    params_path: Path = Path("params.yaml"),
) -> TrainResult:
    """Train on `data_dir` with Ray Train; write weights, spec, metrics and history to `out_dir`
    and record the run in MLflow (tracking URI from MLFLOW_TRACKING_URI, else local SQLite)."""
    # Ray workers do not share the driver's working directory.
    data_dir = data_dir.resolve()
    _check_local_gpus(cfg)
    spec = model_spec(cfg, data_dir)
    ensure_ray(cfg.num_workers)
    result = build_trainer(
        cfg, spec, data_dir=data_dir, run_name=f"train-{uuid.uuid4().hex[:8]}"
    ).fit()
    state, history = _best_state(result)
    metrics = _summary(state["history"][-1], epochs_trained=len(history))
    with atomic_dir(out_dir) as staging:
        model = build_model(spec)
        model.load_state_dict(state["model"])
        save_model(model, spec, staging)
        write_json(staging / METRICS_FILE, metrics)
        write_json(staging / HISTORY_FILE, history)
        lineage = Lineage.collect(
            params_path, read_json(data_dir / DATASET_JSON)["content_hash"]
        )
        run_id = log_training_run(
            cfg, spec, history, metrics, lineage, artifacts_dir=staging
        )
        write_json(staging / LINEAGE_FILE, {**asdict(lineage), "mlflow_run_id": run_id})
    discard_local_run(result.path)
    return TrainResult(model_dir=out_dir, metrics=metrics, run_id=run_id)


def _best_state(result: Any) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """The best-by-validation checkpoint's contents, and the history of every epoch."""
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    best = result.get_best_checkpoint(metric=TARGET_METRIC, mode="max")
    if best is None:
        raise RuntimeError("training reported no checkpoint")
    with best.as_directory() as folder:
        state = torch.load(
            Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True
        )
    # Rank 0's return value (Train V2's Result.return_value) holds every epoch; the
    # checkpoint's history stops at the best one.
    return state, result.return_value or state["history"]


def _summary(best_row: dict[str, float], *, epochs_trained: int) -> dict[str, float]:
    return {
        "epochs_trained": float(epochs_trained),
        "best_epoch": best_row["epoch"],
        **{key: float(value) for key, value in best_row.items() if key != "epoch"},
    }


def _check_local_gpus(cfg: TrainConfig) -> None:
    """Fail fast where Ray would wait forever: GPUs asked for on a local machine without them.

    A remote cluster (RAY_ADDRESS) may add GPU nodes on demand, so it is not checked.
    """
    if cfg.use_gpu and not os.environ.get("RAY_ADDRESS"):
        found = torch.cuda.device_count()
        if found < cfg.num_workers:
            raise ValueError(
                f"train.use_gpu is true with train.num_workers={cfg.num_workers}, but this "
                f"machine has {found} GPU(s); set use_gpu: false or point RAY_ADDRESS at a "
                "cluster with GPUs"
            )


def model_spec(cfg: TrainConfig, data_dir: Path) -> ModelSpec:
    """The architecture from params, the input contract and classes from the dataset."""
    train_rows = read_split(data_dir, "train")
    in_channels, mean, std = input_contract(train_rows)
    classes = sorted(read_json(data_dir / DATASET_JSON)["classes"])
    return ModelSpec(
        arch="cnn",
        classes=classes,
        in_channels=in_channels,
        image_size=cfg.image_size,
        channels=list(cfg.channels),
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        mean=mean,
        std=std,
    )


def build_trainer(
    cfg: TrainConfig,
    spec: ModelSpec,
    *,
    data_dir: Path,
    run_name: str,
    callbacks: list[Any] | None = None,
) -> TorchTrainer:
    """The one TorchTrainer set-up, shared by a plain run and every search trial."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig

    return TorchTrainer(
        # Ray's stub types the loop as returning None; V2 hands rank 0's return value back
        # as Result.return_value, which carries the per-epoch history.
        cast(Any, train_loop_per_worker),
        train_loop_config={
            "train": cfg.model_dump(),
            "spec": asdict(spec),
            "data_dir": str(data_dir),
        },
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path_for(cfg.storage_path),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=TARGET_METRIC,
                checkpoint_score_order="max",
            ),
            callbacks=callbacks or [],
        ),
    )
