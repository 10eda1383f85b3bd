"""evaluate: the shipped variant (ONNX, as it will run) and the fp32 candidate on the test
split: overall, per-class and per-slice metrics, calibration, latency, behavioural checks, and
per-item predictions (the promotion gate compares models on the same items)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.config import EvaluateConfig
from components.data import read_split
from components.drift_features import model_scorer, write_reference
from components.evaluate_plots import plot_confusion, plot_reliability
from components.ingest import DATASET_JSON
from components.io import atomic_dir, read_json, write_json
from components.model import ModelSpec, load_model
from components.onnx_model import OnnxModel, median_latency_ms
from components.quality import agreement, calibration, slice_labels, slice_scores
from components.tasks import Outputs, Task, get_task
from components.tracking import log_results, training_run

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
SLICES_FILE = "slices.json"
CONFUSION_CSV = "confusion.csv"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"

# A normalised batch -> logits
Run = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class EvaluateResult:
    report_dir: Path
    metrics: dict[str, float]


def evaluate(
    cfg: EvaluateConfig,
    *,
    model_dir: Path,
    data_dir: Path,
    report_dir: Path,
    shipped_dir: Path | None = None,
    reference_dir: Path | None = None,
) -> EvaluateResult:
    """Score the shipped variant in `shipped_dir` (its model.onnx; the candidate itself when
    None) and the fp32 candidate in `model_dir` on the test split; write under `report_dir`,
    and the drift monitor's reference (features of the test split) under `reference_dir`.

    The task (spec.task) supplies the targets and its metrics; what both tasks share is here:
    calibration and the confusion matrix over the labelled units (images, or pixels),
    slices and behavioural checks over the per-item quality, latency, the reference."""
    candidate, spec = load_model(model_dir)
    task = get_task(spec.task)
    rows = read_split(data_dir, "test")
    dataset = task.dataset(data_dir, rows, spec)
    images = np.stack([dataset[i][0].numpy() for i in range(len(dataset))])
    targets = task.targets(rows, data_dir, spec)
    fp32 = _score(lambda batch: _torch_logits(candidate, batch), images, cfg.batch_size)
    onnx = (
        OnnxModel(shipped_dir / "model.onnx", threads=cfg.threads)
        if shipped_dir
        else None
    )
    run: Run = onnx.logits if onnx else (lambda batch: _torch_logits(candidate, batch))
    shipped = _score(run, images, cfg.batch_size)
    variant = (
        read_json(shipped_dir / "variant.json")["variant"] if shipped_dir else "fp32"
    )

    probabilities, predicted, labels = task.flatten(shipped, targets, spec)
    ece, bins = calibration(probabilities, labels, cfg.calibration_bins)
    fp32_ece, _ = calibration(
        *_flat_scores(task, fp32, targets, spec), cfg.calibration_bins
    )
    report = task.report(shipped, fp32, targets, images, rows, spec, cfg, variant)
    predictions = _predictions(rows, report.per_item, cfg)
    slices = slice_scores(predictions)
    metrics: dict[str, Any] = {
        "task": task.name,
        "variant": variant,
        "test_images": len(rows),
        **report.metrics,
        "ece": ece,
        "fp32_ece": fp32_ece,
        **_invariance(run, images, shipped.predicted, spec, task, cfg),
        **{
            f"slice_{name.replace(':', '_')}_{task.metric}": value["score"]
            for name, value in slices.items()
        },
    }
    if onnx:
        metrics["latency_ms_b1"] = median_latency_ms(
            {"shipped": onnx}, images[:1], 20, cfg.latency_runs
        )["shipped"]
    names = list(spec.classes)
    unit = "images" if targets.ndim == 1 else "pixels"
    with atomic_dir(report_dir) as staging:
        write_json(staging / METRICS_FILE, metrics)
        write_json(staging / "per_class.json", report.per_class)
        write_json(staging / SLICES_FILE, slices)
        write_json(
            staging / "calibration.json",
            {"ece": ece, "unit": unit, "bins": bins.to_dict(orient="records")},
        )
        predictions.to_parquet(staging / PREDICTIONS_FILE, index=False)
        pd.DataFrame({"actual": [names[i] for i in labels],
                      "predicted": [names[i] for i in predicted]}).to_csv(
            staging / CONFUSION_CSV, index=False
        )  # fmt: skip
        plot_confusion(staging / CONFUSION_PNG, labels, predicted, names, unit)
        plot_reliability(staging / RELIABILITY_PNG, bins, ece, variant)
        for name, write in report.files.items():
            write(staging / name)
        if reference_dir is not None:
            watched = shipped_dir or model_dir
            scorer, _, digest = model_scorer(watched)
            with atomic_dir(reference_dir) as reference_staging:
                write_reference(
                    scorer, spec, images * spec.std + spec.mean, reference_staging,
                    dims=cfg.reference_dims,
                    description={"split": "test", "data_dir": str(data_dir),
                                 "dataset_content_hash": _content_hash(data_dir),
                                 "model_dir": str(watched), "model_sha256": digest},
                )  # fmt: skip
        run_id = training_run(model_dir)
        if run_id:
            numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            log_results(run_id, numeric, [staging], artifact_path="evaluation")
    return EvaluateResult(report_dir=report_dir, metrics=metrics)


def _flat_scores(
    task: Task, outputs: Outputs, targets: np.ndarray, spec: ModelSpec
) -> tuple[np.ndarray, np.ndarray]:
    probabilities, _, labels = task.flatten(outputs, targets, spec)
    return probabilities, labels


def _content_hash(data_dir: Path) -> str:
    return str(read_json(data_dir / DATASET_JSON)["content_hash"])


def _torch_logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits: np.ndarray = model(torch.from_numpy(batch)).numpy()
    return logits


def _score(run: Run, images: np.ndarray, batch_size: int) -> Outputs:
    logits = np.concatenate(
        [
            run(images[start : start + batch_size])
            for start in range(0, len(images), batch_size)
        ]
    )
    return Outputs.from_logits(logits)


def _invariance(
    run: Run,
    images: np.ndarray,
    predicted: np.ndarray,
    spec: ModelSpec,
    task: Task,
    cfg: EvaluateConfig,
) -> dict[str, float]:
    """Behavioural checks: the share of predictions (images, or pixels) that a change which
    should not matter leaves as they were: a shift of a pixel or so (a mask moves with
    it), a small brightness change."""
    shift = cfg.shift_pixels
    shifted = np.roll(images, shift=(shift, shift), axis=(2, 3))
    brighter = images + cfg.brightness_delta / spec.std  # in normalised units
    return {
        "invariance_shift": agreement(
            _score(run, shifted, cfg.batch_size).predicted,
            task.shifted(predicted, shift),
        ),
        "invariance_brightness": agreement(
            _score(run, brighter.astype(np.float32), cfg.batch_size).predicted,
            predicted,
        ),
    }


def _predictions(
    rows: pd.DataFrame, per_item: pd.DataFrame, cfg: EvaluateConfig
) -> pd.DataFrame:
    """One row per test item, keyed by content (sha256), with the task's columns (its
    `quality`, which the gate pairs) and its slices."""
    frame = pd.DataFrame({"path": rows["path"], "sha256": rows["sha256"]})
    return pd.concat(
        [frame, per_item.set_axis(rows.index),
         slice_labels(rows, cfg.slice_features, cfg.slice_quantiles)], axis=1,
    )  # fmt: skip
