"""Pipeline benchmark: fresh and no-op `dvc repro`, and the Prefect flow against DVC.

Both orchestrators run the same stages from a clean copy of the repository, one after the
other in this run, so their ratio is taken under the same machine load.

    python benchmarks/pipeline.py [--quick]     # --quick: 3 training epochs instead of params'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import ROOT, copy_repository, git_commit, machine

RESULTS = ROOT / "benchmarks" / "results" / "pipeline.json"


def prepared_copy(target: Path, epochs: int | None) -> Path:
    copy_repository(target)
    if epochs is not None:
        params = yaml.safe_load((target / "params.yaml").read_text())
        params["train"]["epochs"] = epochs
        (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git_commit(target, f"{epochs} epochs")
    return target


def timed(command: list[str], cwd: Path) -> float:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "GX_ANALYTICS_ENABLED": "False",
    }
    for name in ("RAY_ADDRESS", "PREFECT_API_URL"):
        env.pop(name, None)
    start = time.perf_counter()
    completed = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        sys.exit(
            f"{command} failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 training epochs")
    args = parser.parse_args()
    epochs = 3 if args.quick else None
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        dvc_copy = prepared_copy(Path(scratch) / "dvc", epochs)
        flow_copy = prepared_copy(Path(scratch) / "flow", epochs)
        fresh = timed(["dvc", "repro"], dvc_copy)
        noop = timed(["dvc", "repro"], dvc_copy)
        flow = timed([sys.executable, "-m", "flows.training"], flow_copy)
        accuracy = json.loads(
            (dvc_copy / "reports/evaluation/metrics.json").read_text()
        )
        flow_accuracy = json.loads(
            (flow_copy / "reports/evaluation/metrics.json").read_text()
        )
    result = {
        "benchmark": "pipeline",
        "quick": args.quick,
        "machine": machine(),
        "fresh_repro_seconds": {
            "value": round(fresh, 2),
            "unit": "s",
            "goal": "<= 300",
        },
        "noop_repro_seconds": {"value": round(noop, 2), "unit": "s", "goal": "<= 3"},
        "prefect_seconds": {"value": round(flow, 2), "unit": "s"},
        "prefect_over_dvc": {
            "value": round(flow / fresh, 3),
            "unit": "ratio",
            "goal": "<= 1.10",
        },
        "test_accuracy": {
            "value": round(accuracy["test_accuracy"], 4),
            "unit": "fraction",
            "goal": ">= 0.97" if not args.quick else "reported (3 epochs)",
        },
        "flow_test_accuracy": {
            "value": round(flow_accuracy["test_accuracy"], 4),
            "unit": "fraction",
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
