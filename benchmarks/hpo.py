"""Search against an exhaustive grid over the same small space, in one run.

The grid trains every (lr, width) point with the project's `train` for the full epochs; the
search is the project's `tune` (Optuna proposes within the same bounds, ASHA stops weak
trials). Both run on the digits split, with the same seed and epochs.

    python benchmarks/hpo.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import mlflow

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import ROOT, digits_dataset, emit, machine, scratch_tracking
from components.config import TrainConfig, TuneConfig, load_params
from components.train import train
from components.tune import trial_config, tune

LR = [1e-3, 3e-3, 1e-2]  # the grid's points span the search's log-uniform [1e-3, 1e-2]
WIDTHS = [8, 16, 32]
FIXED = {"weight_decay": 1e-5, "dropout": 0.1, "batch_size": 64}


def run_grid(base: TrainConfig, data_dir: Path, scratch: Path) -> tuple[float, int]:
    """Best validation accuracy over the grid, and the epochs it trained."""
    best = 0.0
    for lr, width in itertools.product(LR, WIDTHS):
        cfg = trial_config(base.model_dump(), {**FIXED, "lr": lr, "width": width})
        result = train(cfg, data_dir=data_dir, out_dir=scratch / f"grid-{lr}-{width}",
                       params_path=ROOT / "params.yaml")  # fmt: skip
        best = max(best, result.metrics["val_accuracy"])
    return best, len(LR) * len(WIDTHS) * base.epochs


def run_search(base: TrainConfig, data_dir: Path, scratch: Path, samples: int) -> tuple:
    space = TuneConfig(num_samples=samples, max_concurrent=1, grace_period=1,
                       reduction_factor=3, seed=0, lr=[LR[0], LR[-1]],
                       weight_decay=[FIXED["weight_decay"], FIXED["weight_decay"] * 1.0001],
                       dropout=[FIXED["dropout"], FIXED["dropout"] + 1e-4],
                       width=WIDTHS, batch_size=[FIXED["batch_size"]])  # fmt: skip
    result = tune(space, base, data_dir=data_dir, out_dir=scratch / "search",
                  params_path=ROOT / "params.yaml")  # fmt: skip
    lineage = json.loads((result.model_dir / "lineage.json").read_text())
    parent = mlflow.MlflowClient().get_run(lineage["mlflow_parent_run_id"])
    return result.metrics["val_accuracy"], int(parent.data.metrics["trial_epochs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smaller images, fewer epochs"
    )
    args = parser.parse_args()
    epochs, image_size, samples = (4, 8, 7) if args.quick else (9, 16, 8)
    with tempfile.TemporaryDirectory(prefix="bench-hpo-") as folder:
        scratch = Path(folder)
        scratch_tracking(scratch)
        data_dir = digits_dataset(scratch)
        base = load_params("train", TrainConfig, ROOT / "params.yaml").model_copy(
            update={
                "epochs": epochs,
                "image_size": image_size,
                "num_workers": 1,
                "channels": [16, 32],
                "storage_path": str(scratch / "ray"),
                "experiment": "bench-hpo",
            }
        )
        start = time.perf_counter()
        grid_best, grid_epochs = run_grid(base, data_dir, scratch)
        grid_seconds = time.perf_counter() - start
        search_best, search_epochs = run_search(base, data_dir, scratch, samples)
        search_seconds = time.perf_counter() - start - grid_seconds
    emit("hpo", {
        "benchmark": "hpo",
        "quick": args.quick,
        "machine": machine(),
        "space": {"lr": LR, "width": WIDTHS, **FIXED, "epochs": epochs,
                  "grid_points": len(LR) * len(WIDTHS), "search_samples": samples},
        "grid_best_val_accuracy": {"value": round(grid_best, 4), "unit": "fraction"},
        "search_best_val_accuracy": {"value": round(search_best, 4), "unit": "fraction"},
        "best_gap_pts": {"value": round(100 * (grid_best - search_best), 2), "unit": "points",
                         "goal": "<= 0.5"},
        "compute_fraction": {"value": round(search_epochs / grid_epochs, 3),
                             "unit": "search epochs / grid epochs", "goal": "<= 0.35",
                             "search_epochs": search_epochs, "grid_epochs": grid_epochs},
        "grid_seconds": {"value": round(grid_seconds, 1), "unit": "s"},
        "search_seconds": {"value": round(search_seconds, 1), "unit": "s"},
    })  # fmt: skip


if __name__ == "__main__":
    main()
