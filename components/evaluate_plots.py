"""evaluate's pictures that both tasks draw: the confusion matrix (of images, or of pixels)
and the reliability diagram."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def plot_confusion(
    path: Path, labels: np.ndarray, predicted: np.ndarray, names: list[str], unit: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix

    matrix = confusion_matrix(labels, predicted, labels=list(range(len(names))))
    size = max(4.0, 0.5 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(
        ax=axes, colorbar=False, cmap="Blues", values_format="d"
    )
    axes.set_title(f"Confusion matrix (test split, {unit})")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_reliability(path: Path, bins: pd.DataFrame, ece: float, variant: str) -> None:
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
