"""evaluate: the shipped variant (ONNX, as it will run) and the fp32 candidate on the test
split: overall, per-class and per-slice metrics, calibration, latency, behavioural checks, and
per-item predictions (the promotion gate compares models on the same items)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from components.config import EvaluateConfig
from components.data import ImageDataset, read_split
from components.drift_features import model_scorer, write_reference
from components.ingest import DATASET_JSON
from components.io import atomic_dir, read_json, write_json
from components.model import ModelSpec, load_model
from components.onnx_model import OnnxModel, median_latency_ms
from components.quality import agreement, calibration, slice_accuracy, slice_labels
from components.tracking import log_results, training_run

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
SLICES_FILE = "slices.json"
CONFUSION_CSV = "confusion.csv"
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_PNG = "reliability.png"


@dataclass(frozen=True)
class EvaluateResult:
    report_dir: Path
    metrics: dict[str, float]


@dataclass(frozen=True)
class _Scored:
    probabilities: np.ndarray
    predicted: np.ndarray


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
    and the drift monitor's reference (features of the test split) under `reference_dir`."""
    candidate, spec = load_model(model_dir)
    rows = read_split(data_dir, "test")
    dataset = ImageDataset(data_dir, rows, spec)
    images = np.stack([dataset[i][0].numpy() for i in range(len(dataset))])
    labels = np.array(dataset.targets)
    fp32 = _score(lambda batch: _torch_logits(candidate, batch), images, cfg.batch_size)
    onnx = (
        OnnxModel(shipped_dir / "model.onnx", threads=cfg.threads)
        if shipped_dir
        else None
    )
    run = onnx.logits if onnx else (lambda batch: _torch_logits(candidate, batch))
    shipped = _score(run, images, cfg.batch_size)
    variant = (
        read_json(shipped_dir / "variant.json")["variant"] if shipped_dir else "fp32"
    )

    ece, bins = calibration(shipped.probabilities, labels, cfg.calibration_bins)
    fp32_ece, _ = calibration(fp32.probabilities, labels, cfg.calibration_bins)
    predictions = _predictions(rows, spec, labels, shipped, fp32, cfg)
    slices = slice_accuracy(predictions)
    metrics: dict[str, Any] = {
        "variant": variant,
        "test_images": len(rows),
        "test_accuracy": float(accuracy_score(labels, shipped.predicted)),
        "test_macro_f1": float(
            f1_score(labels, shipped.predicted, average="macro", zero_division=0)
        ),
        "ece": ece,
        "fp32_test_accuracy": float(accuracy_score(labels, fp32.predicted)),
        "fp32_ece": fp32_ece,
        **_invariance(run, images, shipped.predicted, spec, cfg),
        **{
            f"slice_{name.replace(':', '_')}_accuracy": value["accuracy"]
            for name, value in slices.items()
        },
    }
    if onnx:
        metrics["latency_ms_b1"] = median_latency_ms(
            {"shipped": onnx}, images[:1], 20, cfg.latency_runs
        )["shipped"]
    with atomic_dir(report_dir) as staging:
        write_json(staging / METRICS_FILE, metrics)
        write_json(
            staging / "per_class.json",
            {
                "shipped": _per_class(labels, shipped.predicted, spec),
                "fp32": _per_class(labels, fp32.predicted, spec),
            },
        )
        write_json(staging / SLICES_FILE, slices)
        write_json(
            staging / "calibration.json",
            {"ece": ece, "bins": bins.to_dict(orient="records")},
        )
        predictions.to_parquet(staging / PREDICTIONS_FILE, index=False)
        predictions[["actual", "predicted"]].to_csv(
            staging / CONFUSION_CSV, index=False
        )
        _plot_confusion(staging / CONFUSION_PNG, labels, shipped.predicted, spec)
        _plot_reliability(staging / RELIABILITY_PNG, bins, ece, variant)
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


def _content_hash(data_dir: Path) -> str:
    return str(read_json(data_dir / DATASET_JSON)["content_hash"])


def _torch_logits(model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        logits: np.ndarray = model(torch.from_numpy(batch)).numpy()
    return logits


def _score(run: Any, images: np.ndarray, batch_size: int) -> _Scored:
    logits = np.concatenate(
        [
            run(images[start : start + batch_size])
            for start in range(0, len(images), batch_size)
        ]
    )
    probabilities = torch.softmax(torch.from_numpy(logits).float(), dim=1).numpy()
    return _Scored(probabilities, probabilities.argmax(axis=1))


def _invariance(
    run: Any,
    images: np.ndarray,
    predicted: np.ndarray,
    spec: ModelSpec,
    cfg: EvaluateConfig,
) -> dict[str, float]:
    """Behavioural checks: the share of predictions unchanged by changes that should not
    matter (a shift of a pixel or so; a small brightness change)."""
    shift = cfg.shift_pixels
    shifted = np.roll(images, shift=(shift, shift), axis=(2, 3))
    brighter = images + cfg.brightness_delta / spec.std  # in normalised units
    return {
        "invariance_shift": agreement(
            _score(run, shifted, cfg.batch_size).predicted, predicted
        ),
        "invariance_brightness": agreement(
            _score(run, brighter.astype(np.float32), cfg.batch_size).predicted,
            predicted,
        ),
    }


def _predictions(
    rows: pd.DataFrame,
    spec: ModelSpec,
    labels: np.ndarray,
    shipped: _Scored,
    fp32: _Scored,
    cfg: EvaluateConfig,
) -> pd.DataFrame:
    """One row per test item, keyed by content (sha256), with its slices."""
    frame = pd.DataFrame(
        {
            "path": rows["path"],
            "sha256": rows["sha256"],
            "actual": rows["label"],
            "predicted": [spec.classes[i] for i in shipped.predicted],
            "confidence": shipped.probabilities.max(axis=1),
            "correct": shipped.predicted == labels,
            "fp32_predicted": [spec.classes[i] for i in fp32.predicted],
            "fp32_correct": fp32.predicted == labels,
        }
    )
    return pd.concat(
        [frame, slice_labels(rows, cfg.slice_features, cfg.slice_quantiles)], axis=1
    )


def _per_class(
    labels: np.ndarray, predicted: np.ndarray, spec: ModelSpec
) -> dict[str, dict[str, float | int]]:
    indices = list(range(spec.num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(spec.classes)
    }


def _plot_confusion(
    path: Path, labels: np.ndarray, predicted: np.ndarray, spec: ModelSpec
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = confusion_matrix(labels, predicted, labels=list(range(spec.num_classes)))
    size = max(4.0, 0.5 * spec.num_classes + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=spec.classes).plot(
        ax=axes, colorbar=False, cmap="Blues"
    )
    axes.set_title("Confusion matrix (test split)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_reliability(path: Path, bins: pd.DataFrame, ece: float, variant: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    filled = bins[bins["count"] > 0]
    width = float(bins["bin_high"].iloc[0] - bins["bin_low"].iloc[0])
    axes.bar(
        filled["bin_low"],
        filled["accuracy"],
        width=width,
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_title(f"Reliability ({variant}), ECE {ece:.3f}")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
