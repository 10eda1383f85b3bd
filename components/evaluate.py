"""evaluate: the candidate on the test split: overall and per-class metrics, confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from torch.utils.data import DataLoader
from tqdm import tqdm

from components.config import EvaluateConfig
from components.data import ImageDataset, read_split
from components.io import atomic_dir, write_json
from components.model import ModelSpec, load_model
from components.tracking import log_results, training_run

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
CONFUSION_CSV = "confusion.csv"
CONFUSION_PNG = "confusion_matrix.png"


@dataclass(frozen=True)
class EvaluateResult:
    report_dir: Path
    metrics: dict[str, float]


def evaluate(
    cfg: EvaluateConfig, *, model_dir: Path, data_dir: Path, report_dir: Path
) -> EvaluateResult:
    """Score the model in `model_dir` on the test split; write reports under `report_dir`."""
    model, spec = load_model(model_dir)
    rows = read_split(data_dir, "test")
    probabilities = _predict(model, ImageDataset(data_dir, rows, spec), cfg.batch_size)
    predicted = probabilities.argmax(axis=1)
    labels = np.array([spec.classes.index(label) for label in rows["label"]])
    metrics = {
        "test_accuracy": float(accuracy_score(labels, predicted)),
        "test_macro_f1": float(
            f1_score(labels, predicted, average="macro", zero_division=0)
        ),
        "test_images": len(rows),
    }
    with atomic_dir(report_dir) as staging:
        write_json(staging / METRICS_FILE, metrics)
        write_json(staging / "per_class.json", _per_class(labels, predicted, spec))
        _write_predictions(staging, rows, spec, predicted, probabilities)
        _plot_confusion(staging / CONFUSION_PNG, labels, predicted, spec)
        run_id = training_run(model_dir)
        if run_id:
            log_results(run_id, metrics, [staging], artifact_path="evaluation")
    return EvaluateResult(report_dir=report_dir, metrics=metrics)


@torch.no_grad()
def _predict(
    model: torch.nn.Module, dataset: ImageDataset, batch_size: int
) -> np.ndarray:
    batches = [
        torch.softmax(model(images), dim=1).numpy()
        for images, _ in tqdm(
            DataLoader(dataset, batch_size=batch_size), desc="evaluate"
        )
    ]
    return np.concatenate(batches)


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


def _write_predictions(
    folder: Path,
    rows: pd.DataFrame,
    spec: ModelSpec,
    predicted: np.ndarray,
    probabilities: np.ndarray,
) -> None:
    """Per-item predictions (later gates compare models on the same items)."""
    frame = pd.DataFrame(
        {
            "path": rows["path"],
            "sha256": rows["sha256"],
            "actual": rows["label"],
            "predicted": [spec.classes[i] for i in predicted],
            "confidence": probabilities.max(axis=1),
        }
    )
    frame.to_parquet(folder / PREDICTIONS_FILE, index=False)
    frame[["actual", "predicted"]].to_csv(folder / CONFUSION_CSV, index=False)


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
