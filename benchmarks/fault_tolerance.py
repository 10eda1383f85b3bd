"""Fault tolerance: one training worker is killed for real (SIGKILL) mid-run; Ray Train
restarts the worker group and the loop resumes from the latest checkpoint. Compared with an
undisturbed run of the same seed, in one run.

    python benchmarks/fault_tolerance.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import (
    ROOT,
    ReportClock,
    digits_dataset,
    emit,
    kill_train_worker_after,
    machine,
    read_clock,
    scratch_tracking,
)
from components.config import EvaluateConfig, TrainConfig, load_params
from components.evaluate import evaluate
from components.train import train

KILL_AFTER_CHECKPOINTS = 3


def run(cfg: TrainConfig, data_dir: Path, scratch: Path, name: str, kill: bool) -> dict:
    storage = scratch / name / "ray"
    clock = scratch / name / "clock.tsv"
    clock.parent.mkdir(parents=True)
    killed: list[float] = []
    killer = threading.Thread(target=kill_train_worker_after,
                              args=(storage, KILL_AFTER_CHECKPOINTS, killed))  # fmt: skip
    if kill:
        killer.start()
    result = train(cfg.model_copy(update={"storage_path": str(storage)}), data_dir=data_dir,
                   out_dir=scratch / name / "candidate", params_path=ROOT / "params.yaml",
                   callbacks=[ReportClock(clock)])  # fmt: skip
    if kill:
        killer.join()
    test = evaluate(EvaluateConfig(), model_dir=result.model_dir, data_dir=data_dir,
                    report_dir=scratch / name / "evaluation").metrics["test_accuracy"]  # fmt: skip
    lineage = json.loads((result.model_dir / "lineage.json").read_text())
    resumed = lineage["resumed_at_epochs"]
    # The resumed epoch may also have been reported before the kill (its files land before
    # the controller records them), and reports queued before the kill can arrive after
    # it: the restore ends at the last report of the first epoch run after the restart.
    rerun = [
        stamp for stamp, epoch in read_clock(clock) if resumed and epoch == resumed[0]
    ]
    restore = (
        rerun[-1] - killed[0] if killed and rerun and rerun[-1] > killed[0] else None
    )
    return {"test_accuracy": test, "killed": bool(killed), "resumed_at": resumed,
            "restore_seconds": restore}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="8 epochs instead of 15")
    args = parser.parse_args()
    epochs = 8 if args.quick else 15
    with tempfile.TemporaryDirectory(prefix="bench-fault-") as folder:
        scratch = Path(folder)
        scratch_tracking(scratch)
        data_dir = digits_dataset(scratch)
        cfg = load_params("train", TrainConfig, ROOT / "params.yaml").model_copy(
            update={"epochs": epochs, "num_workers": 1, "max_failures": 2}
        )
        calm = run(cfg, data_dir, scratch, "undisturbed", kill=False)
        hit = run(cfg, data_dir, scratch, "killed", kill=True)
    recovered = (
        hit["killed"] and len(hit["resumed_at"]) == 1 and hit["resumed_at"][0] > 0
    )
    emit("fault_tolerance", {
        "benchmark": "fault_tolerance",
        "quick": args.quick,
        "machine": machine(),
        "setup": {"epochs": epochs, "workers": 1, "max_failures": 2,
                  "kill": f"SIGKILL of the RayTrainWorker after {KILL_AFTER_CHECKPOINTS} "
                          "checkpoints reached storage"},
        "recovered": recovered,
        "resumed_at_epoch": hit["resumed_at"][0] if hit["resumed_at"] else None,
        "restore_seconds": {"value": round(hit["restore_seconds"], 2)
                            if hit["restore_seconds"] else None,
                            "unit": "s, from the kill to the first epoch reported after it"},
        "undisturbed_test_accuracy": {"value": round(calm["test_accuracy"], 4)},
        "killed_test_accuracy": {"value": round(hit["test_accuracy"], 4)},
        "accuracy_gap_pts": {"value": round(100 * (calm["test_accuracy"] -
                                                   hit["test_accuracy"]), 2),
                             "unit": "points", "goal": "<= 1.0"},
    })  # fmt: skip


if __name__ == "__main__":
    main()
