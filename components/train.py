"""train: fit the model under Ray Train and keep the best-by-validation weights as the candidate."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from ray.train import TrainingFailedError
from ray.train.torch import TorchTrainer

from components.config import TrainConfig
from components.data import input_contract, read_split
from components.ingest import DATASET_JSON
from components.io import atomic_dir, read_json, write_json
from components.model import LINEAGE_FILE, ModelSpec, build_model, save_model
from components.ray_runtime import discard_local_run, ensure_ray, storage_path_for
from components.tasks import dataset_task, get_task
from components.tracking import (
    EpochLogger,
    Lineage,
    log_summary,
    mlflow_run,
    tracking_uri,
)
from components.train_loop import (
    CHECKPOINT_FILE,
    CPU_SECONDS,
    GPU_SECONDS,
    train_loop_per_worker,
)

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
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train on `data_dir` with Ray Train; write weights, spec, metrics and history to `out_dir`
    and record the run in MLflow (tracking URI from MLFLOW_TRACKING_URI, else local SQLite).

    `callbacks` are extra `ray.train.UserCallback`s (they run in the Train controller).
    """
    # Ray workers do not share the driver's working directory.
    data_dir = data_dir.resolve()
    check_local_gpus(cfg)
    spec = model_spec(cfg, data_dir)
    ensure_ray(cfg.num_workers + 1)
    lineage = Lineage.collect(
        params_path, read_json(data_dir / DATASET_JSON)["content_hash"]
    )
    with mlflow_run(
        cfg.experiment, "train", lineage.tags(), run_params(cfg, spec)
    ) as run_id:
        callbacks = [EpochLogger(run_id, tracking_uri()), *(callbacks or [])]
        trainer = build_trainer(cfg, spec, data_dir=data_dir, run_name=f"train-{run_id}",
                                callbacks=callbacks)  # fmt: skip
        try:
            result = trainer.fit()
        except TrainingFailedError as error:
            raise RuntimeError(
                f"training failed after train.max_failures={cfg.max_failures} "
                f"restart(s): {error}"
            ) from error
        state, resumes = best_state(result, get_task(spec.task).target_metric)
        metrics = write_candidate(spec, state, resumes, out_dir, run_id=run_id,
                                  lineage={**asdict(lineage), "mlflow_run_id": run_id})  # fmt: skip
    discard_local_run(result.path)
    return TrainResult(model_dir=out_dir, metrics=metrics, run_id=run_id)


def best_state(result: Any, target_metric: str) -> tuple[dict[str, Any], list[int]]:
    """The best-by-validation checkpoint's contents (its history completed with every epoch)
    and the epochs at which the run resumed after a failure."""
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    best = result.get_best_checkpoint(metric=target_metric, mode="max")
    if best is None:
        raise RuntimeError("training reported no checkpoint")
    with best.as_directory() as folder:
        state = torch.load(
            Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True
        )
    outcome = result.return_value  # rank 0's: every epoch, not only up to the best one
    return {**state, "full_history": outcome["history"]}, list(outcome["resumes"])


def write_candidate(
    spec: ModelSpec,
    state: dict[str, Any],
    resumes: list[int],
    out_dir: Path,
    *,
    run_id: str,
    lineage: dict[str, Any],
) -> dict[str, float]:
    """Weights, spec, metrics, history and lineage to `out_dir` (atomically), and the
    summary and files to the MLflow run."""
    best_row = state["history"][-1]  # the checkpoint's own epoch
    compute = (CPU_SECONDS, GPU_SECONDS)
    metrics = {
        "epochs_trained": float(len(state["full_history"])),
        "resumes": float(len(resumes)),
        "best_epoch": best_row["epoch"],
        **{key: float(value) for key, value in best_row.items()
           if key != "epoch" and key not in compute},
        # The whole run's compute (every epoch trained, not only up to the best one).
        **{f"train_{key}": float(sum(row.get(key, 0.0) for row in state["full_history"]))
           for key in compute},
    }  # fmt: skip
    with atomic_dir(out_dir) as staging:
        model = build_model(spec)
        model.load_state_dict(state["model"])
        save_model(model, spec, staging)
        write_json(staging / METRICS_FILE, metrics)
        write_json(staging / HISTORY_FILE, state["full_history"])
        write_json(staging / LINEAGE_FILE, {**lineage, "resumed_at_epochs": resumes})
        log_summary(run_id, metrics, staging)
    return metrics


def run_params(cfg: TrainConfig, spec: ModelSpec) -> dict[str, Any]:
    return {**cfg.model_dump(), "in_channels": spec.in_channels,
            "num_classes": spec.num_classes}  # fmt: skip


def check_local_gpus(cfg: TrainConfig) -> None:
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
    dataset = read_json(data_dir / DATASET_JSON)
    task = dataset_task(data_dir)
    task.check_arch(cfg.arch)
    return ModelSpec(
        task=task.name,
        ignore_index=int(dataset.get("ignore_index", 255)),
        output_stride=cfg.output_stride,
        arch=cfg.arch,
        classes=list(dataset["classes"]),  # in class-id (output channel) order
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
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

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
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.checkpoints_to_keep,
                checkpoint_score_attribute=get_task(spec.task).target_metric,
                checkpoint_score_order="max",
            ),
            callbacks=callbacks or [],
        ),
    )
