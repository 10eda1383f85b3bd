"""evaluate in depth: calibration, slices and behavioural checks, on the shipped ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import EvaluateConfig, load_params
from components.evaluate import evaluate
from components.quality import calibration, slice_labels, slice_scores
from tests.conftest import TINY_PARAMS


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 items at confidence 0.8, 8 of them right: perfectly calibrated
    probabilities = np.tile([0.8, 0.2], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    ece, bins = calibration(probabilities, labels, bins=10)
    assert ece == pytest.approx(0.0)
    assert bins["count"].sum() == 10


def test_ece_measures_overconfidence() -> None:
    probabilities = np.tile(
        [0.99, 0.01], (10, 1)
    )  # sure of class 0, right half the time
    labels = np.array([0, 1] * 5)
    ece, _ = calibration(probabilities, labels, bins=15)
    assert ece == pytest.approx(0.49)


def test_slices_cut_each_feature_at_the_quantiles() -> None:
    rows = pd.DataFrame({"pixel_mean": np.linspace(0, 1, 8), "pixel_std": [0.1] * 8})
    slices = slice_labels(rows, ["brightness"], [0.25, 0.75])
    assert list(slices["slice_brightness"]) == ["low"] * 2 + ["mid"] * 4 + ["high"] * 2
    frame = pd.concat([slices, pd.Series([1.0] * 6 + [0.0] * 2, name="quality")],
                      axis=1)  # fmt: skip
    result = slice_scores(frame)
    assert result["brightness:high"] == {"score": 0.0, "count": 2}
    assert result["brightness:low"]["score"] == 1.0


@pytest.mark.slow
def test_evaluate_scores_the_shipped_onnx_and_the_fp32_candidate(
    compressed_model, tiny_dataset, tmp_path: Path
) -> None:
    candidate, shipped_dir = compressed_model
    cfg = load_params("evaluate", EvaluateConfig, TINY_PARAMS)
    result = evaluate(cfg, model_dir=candidate, shipped_dir=shipped_dir,
                      data_dir=tiny_dataset.out_dir, report_dir=tmp_path / "ev")  # fmt: skip
    folder = tmp_path / "ev"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == result.metrics
    shipped = json.loads((shipped_dir / "variant.json").read_text())["variant"]
    assert metrics["variant"] == shipped
    assert metrics["latency_ms_b1"] > 0
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["invariance_shift"] <= 1
    assert metrics["fp32_test_accuracy"] > 0.6  # three easy patterns; chance is 0.33
    predictions = pd.read_parquet(folder / "predictions.parquet")
    assert len(predictions) == metrics["test_images"]
    assert predictions["sha256"].is_unique
    assert {"correct", "fp32_correct", "slice_brightness", "slice_contrast"} <= set(
        predictions.columns
    )
    assert predictions["correct"].mean() == pytest.approx(metrics["test_accuracy"])
    slices = json.loads((folder / "slices.json").read_text())
    assert sum(
        v["count"] for k, v in slices.items() if k.startswith("contrast:")
    ) == len(predictions)
    for key in ("brightness:low", "brightness:high"):
        assert (
            metrics[f"slice_{key.replace(':', '_')}_accuracy"] == slices[key]["score"]
        )
    assert (folder / "reliability.png").stat().st_size > 1000
    calibration_table = json.loads((folder / "calibration.json").read_text())
    assert sum(b["count"] for b in calibration_table["bins"]) == len(predictions)
