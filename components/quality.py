"""Model quality measures over per-item predictions: calibration, slices, invariance.

Pure functions over arrays and frames; evaluate writes what they return, promote reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# Slice features come from the manifest ingest wrote (pixel values scaled to [0, 1]).
SLICE_COLUMNS = {"brightness": "pixel_mean", "contrast": "pixel_std"}
SLICE_LEVELS = ("low", "mid", "high")


def calibration(
    probabilities: np.ndarray, labels: np.ndarray, bins: int
) -> tuple[float, pd.DataFrame]:
    """Expected calibration error (equal-width confidence bins, weighted by count) and the
    per-bin table the reliability diagram draws."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    table = pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "count": np.bincount(index, minlength=bins),
            "confidence": _bin_mean(confidence, index, bins),
            "accuracy": _bin_mean(correct.astype(float), index, bins),
        }
    )
    weights = table["count"] / max(1, len(labels))
    gaps = (table["confidence"] - table["accuracy"]).abs().fillna(0.0)
    return float((weights * gaps).sum()), table


def _bin_mean(values: np.ndarray, index: np.ndarray, bins: int) -> np.ndarray:
    sums = np.bincount(index, weights=values, minlength=bins)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def slice_labels(
    rows: pd.DataFrame, features: Sequence[str], quantiles: Sequence[float]
) -> pd.DataFrame:
    """Each item's slice per feature: low (<= the first quantile of the split), high (> the
    second) or mid. The cut points come from the items themselves, so every model compared
    on the same items is sliced alike."""
    low_q, high_q = quantiles
    out = pd.DataFrame(index=rows.index)
    for feature in features:
        values = rows[SLICE_COLUMNS[feature]].astype(float)
        low, high = values.quantile(low_q), values.quantile(high_q)
        out[f"slice_{feature}"] = np.select(
            [values <= low, values > high], ["low", "high"], default="mid"
        )
    return out


def slice_scores(
    predictions: pd.DataFrame, column: str = "quality"
) -> dict[str, dict[str, float]]:
    """The mean per-item quality (accuracy, or mean per-image IoU) and item count of every
    slice (`<feature>:<level>`)."""
    result: dict[str, dict[str, float]] = {}
    for slice_column in [c for c in predictions.columns if c.startswith("slice_")]:
        feature = slice_column.removeprefix("slice_")
        for level, group in predictions.groupby(slice_column):
            result[f"{feature}:{level}"] = {
                "score": float(group[column].mean()),
                "count": len(group),
            }
    return result


def agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Share of items on which two prediction vectors agree."""
    return float((np.asarray(first) == np.asarray(second)).mean())
