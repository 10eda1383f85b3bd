"""Candidates as evaluate and compress leave them on a real MLflow server: the evaluation
files and the shipped model logged on a finished run, lineage naming it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd

ITEMS = 60


def log_candidate(
    root: Path, name: str, errors: int, model_dir: Path | None = None
) -> tuple[Path, Path]:
    """(evaluation dir, shipped dir) of a candidate wrong on `errors` of ITEMS test items;
    `model_dir` (model.onnx + spec.json) is the model it ships, else placeholder bytes."""
    evaluation, shipped = root / name / "evaluation", root / name / "compressed"
    evaluation.mkdir(parents=True)
    shipped.mkdir(parents=True)
    wrong = set(range(0, ITEMS, ITEMS // errors)) if errors else set()
    correct = [i not in wrong for i in range(ITEMS)]
    pd.DataFrame({"sha256": [f"item-{i}" for i in range(ITEMS)], "correct": correct}
                 ).to_parquet(evaluation / "predictions.parquet")  # fmt: skip
    accuracy = sum(correct) / ITEMS
    (evaluation / "metrics.json").write_text(json.dumps({"test_accuracy": accuracy}))
    (evaluation / "slices.json").write_text(
        json.dumps({"brightness:low": {"accuracy": accuracy, "count": ITEMS}})
    )
    if model_dir is None:
        (shipped / "model.onnx").write_bytes(b"onnx bytes")
    else:
        for file in ("model.onnx", "spec.json"):
            shutil.copy(model_dir / file, shipped / file)
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_artifacts(str(evaluation), artifact_path="evaluation")
        mlflow.log_artifacts(str(shipped), artifact_path="compression")
    (shipped / "lineage.json").write_text(json.dumps({"mlflow_run_id": run.info.run_id,
                                                      "git_commit": "abc"}))  # fmt: skip
    return evaluation, shipped
