"""tune: search train.* with Ray Tune (Optuna proposes, ASHA stops weak trials early).

Each trial is a Tune function that builds the very same TorchTrainer as a plain run
(`build_trainer`) and runs it inside the trial: Ray Train V2 no longer takes a Trainer as a
Tune trainable. `tune.num_samples: 1` is no search: `train` runs with train.* as given.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import ray.train
from ray import tune as ray_tune

from components.config import TrainConfig, TuneConfig
from components.ingest import DATASET_JSON
from components.io import read_json
from components.ray_runtime import discard_local_run, ensure_ray, storage_path_for
from components.tasks import dataset_task
from components.tracking import (
    PARENT_TAG,
    EpochLogger,
    Lineage,
    mlflow_run,
    tracking_uri,
)
from components.train import (
    TrainResult,
    build_trainer,
    check_local_gpus,
    model_spec,
    run_params,
    train,
    write_candidate,
)
from components.train_loop import CHECKPOINT_FILE

CHECKPOINT_PATH = "checkpoint_path"  # the key TuneReportCallback adds to each report
SEARCHED = ("lr", "weight_decay", "dropout", "width", "batch_size")


def tune(
    tune_cfg: TuneConfig,
    train_cfg: TrainConfig,
    *,
    data_dir: Path,
    out_dir: Path,
    params_path: Path = Path("params.yaml"),
) -> TrainResult:
    """Search, then write the best trial's best checkpoint to `out_dir` as the candidate."""
    if tune_cfg.num_samples == 1:
        return train(
            train_cfg, data_dir=data_dir, out_dir=out_dir, params_path=params_path
        )
    data_dir = data_dir.resolve()
    check_local_gpus(train_cfg)
    ensure_ray(tune_cfg.max_concurrent * (train_cfg.num_workers + 1))
    lineage = Lineage.collect(
        params_path, read_json(data_dir / DATASET_JSON)["content_hash"]
    )
    search_params = {f"tune.{k}": v for k, v in tune_cfg.model_dump().items()}
    target = dataset_task(data_dir).target_metric  # val_accuracy, val_miou
    with mlflow_run(
        train_cfg.experiment, "search", lineage.tags(), search_params
    ) as parent:
        context = {"train": train_cfg.model_dump(), "data_dir": str(data_dir),
                   "uri": tracking_uri(), "parent": parent, "tags": lineage.tags(),
                   "target": target}  # fmt: skip
        grid = _tuner(tune_cfg, train_cfg, context).fit()
        best = grid.get_best_result(metric=target, mode="max", scope="all")
        best_cfg = trial_config(train_cfg.model_dump(), best.config)
        trial_run = _close_trial_runs(
            parent, grid, best.metrics["trial_id"], train_cfg.epochs, target
        )
        state, resumes = _best_checkpoint(
            best.metrics_dataframe, storage_path_for(train_cfg.storage_path), target
        )
        lineage_record = {**asdict(lineage), "mlflow_run_id": trial_run,
                          "mlflow_parent_run_id": parent, "best_config": best.config}  # fmt: skip
        metrics = write_candidate(model_spec(best_cfg, data_dir), state, resumes, out_dir,
                                  run_id=trial_run, lineage=lineage_record)  # fmt: skip
        _log_search(parent, grid, best.config, metrics, trial_run)
    _discard_local_runs(grid)
    return TrainResult(model_dir=out_dir, metrics=metrics, run_id=trial_run)


def trial_config(base: dict[str, Any], sampled: dict[str, Any]) -> TrainConfig:
    """train.* with the sampled values; `width` sets the first block, later blocks double."""
    depth = len(base["channels"])
    channels = [sampled["width"] * 2**i for i in range(depth)]
    chosen = {key: sampled[key] for key in SEARCHED if key != "width"}
    return TrainConfig(**{**base, **chosen, "channels": channels})


def search_space(cfg: TuneConfig) -> dict[str, Any]:
    return {
        "lr": ray_tune.loguniform(*cfg.lr),
        "weight_decay": ray_tune.loguniform(*cfg.weight_decay),
        "dropout": ray_tune.uniform(*cfg.dropout),
        "width": ray_tune.choice(cfg.width),
        "batch_size": ray_tune.choice(cfg.batch_size),
    }


def _tuner(
    tune_cfg: TuneConfig, train_cfg: TrainConfig, context: dict[str, Any]
) -> Any:
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=train_cfg.epochs,
                              grace_period=min(tune_cfg.grace_period, train_cfg.epochs),
                              reduction_factor=tune_cfg.reduction_factor)  # fmt: skip
    return ray_tune.Tuner(
        ray_tune.with_parameters(_run_trial, context=context),
        param_space=search_space(tune_cfg),
        tune_config=ray_tune.TuneConfig(
            metric=context["target"],
            mode="max",
            num_samples=tune_cfg.num_samples,
            max_concurrent_trials=tune_cfg.max_concurrent,
            scheduler=scheduler,
            search_alg=OptunaSearch(seed=tune_cfg.seed),
        ),
        run_config=ray_tune.RunConfig(
            name=f"search-{context['parent']}",
            storage_path=storage_path_for(train_cfg.storage_path),
        ),
    )


def _run_trial(sampled: dict[str, Any], context: dict[str, Any]) -> None:
    """One trial: a nested MLflow run around the shared TorchTrainer set-up."""
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = trial_config(context["train"], sampled)
    data_dir = Path(context["data_dir"])
    spec = model_spec(cfg, data_dir)
    trial_id = ray_tune.get_context().get_trial_id()
    tags = {**context["tags"], PARENT_TAG: context["parent"], "trial_id": trial_id}
    with mlflow_run(cfg.experiment, f"trial-{trial_id}", tags, run_params(cfg, spec),
                    uri=context["uri"]) as run_id:  # fmt: skip
        report = TuneReportCallback()  # type: ignore[no-untyped-call]
        callbacks = [report, EpochLogger(run_id, context["uri"])]
        result = build_trainer(cfg, spec, data_dir=data_dir, run_name=f"trial-{trial_id}",
                               callbacks=callbacks).fit()  # fmt: skip
        if result.error is not None:
            raise result.error


def _best_checkpoint(
    reports: pd.DataFrame, storage: str, target: str
) -> tuple[dict[str, Any], list[int]]:
    """The best trial's best epoch among the checkpoints still stored (num_to_keep prunes the
    rest, and among tied scores it may keep a later one), with every epoch's history.
    `storage` is the run's storage path: Ray reports checkpoint paths without their scheme
    (`bucket/prefix/...` for s3://), so the filesystem comes from it, not from the paths."""
    import pyarrow.fs
    import torch

    filesystem = pyarrow.fs.FileSystem.from_uri(storage)[0]

    def stored(path: str) -> bool:
        info = filesystem.get_file_info(f"{path}/{CHECKPOINT_FILE}")
        return bool(info.type != pyarrow.fs.FileType.NotFound)

    kept = reports[reports[CHECKPOINT_PATH].map(stored)]
    best_row = kept.loc[kept[target].idxmax()]
    checkpoint = ray.train.Checkpoint(best_row[CHECKPOINT_PATH], filesystem=filesystem)
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu",
                           weights_only=True)  # fmt: skip
    columns = [c for c in state["history"][-1] if c in reports.columns]
    full_history = reports[columns].to_dict(orient="records")
    return {**state, "full_history": full_history}, list(state["resumes"])


def _close_trial_runs(
    parent: str, grid: Any, best_trial: str, epochs: int, target: str
) -> str:
    """Give each trial's run its real end, from Tune's results, and return the best's id.

    A trial the scheduler stopped ends inside its own code, so its run looks failed or
    still running: it becomes KILLED with stopped_early=true. Trials Tune saw fail stay FAILED.
    """
    client = mlflow.MlflowClient(tracking_uri())
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent}'",
    )
    errored = [Path(result.path).name for result in grid if result.error is not None]
    for run in runs:
        trial = run.data.tags.get("trial_id", "")
        if any(trial in name for name in errored):
            continue
        reported = len(client.get_metric_history(run.info.run_id, target))
        if reported < epochs:
            client.set_tag(run.info.run_id, "stopped_early", "true")
            client.set_terminated(run.info.run_id, "KILLED")
        elif run.info.status != "FINISHED":
            client.set_terminated(run.info.run_id, "FINISHED")
    best = next(r for r in runs if r.data.tags.get("trial_id") == best_trial)
    return str(best.info.run_id)


def _log_search(parent: str, grid: Any, best: dict[str, Any], metrics: dict[str, float],
                best_run: str) -> None:  # fmt: skip
    """On the parent run: the best config, its metrics, and the compute the search spent."""
    client = mlflow.MlflowClient(tracking_uri())
    epochs = sum(len(result.metrics_dataframe) for result in grid if result.metrics_dataframe
                 is not None)  # fmt: skip
    for key, value in best.items():
        client.log_param(parent, f"best.{key}", value)
    for key, value in {**metrics, "trials": len(grid), "trial_epochs": epochs}.items():
        client.log_metric(parent, key, float(value))
    client.set_tag(parent, "best_trial_run_id", best_run)


def _discard_local_runs(grid: Any) -> None:
    for result in grid:
        discard_local_run(str(Path(result.path).parent))
