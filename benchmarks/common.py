"""Helpers shared by the benchmarks (and the end-to-end test): a clean copy of the
repository to run in, and a description of the machine for the result JSON."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from ray.train import UserCallback

ROOT = Path(__file__).resolve().parents[1]
_GIT_IDENTITY = ["-c", "user.name=pipeline", "-c", "user.email=pipeline@localhost"]


def copy_repository(target: Path) -> Path:
    """Copy what git would commit here (tracked and new, not ignored) into a new repository
    at `target` with one commit, as a fresh clone would be."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in listed:
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    git_commit(target, "copy", init=True)
    return target


def git_commit(repository: Path, message: str, *, init: bool = False) -> None:
    commands = [["git", "init", "-q"]] if init else []
    commands += [
        ["git", "add", "-A"],
        ["git", *_GIT_IDENTITY, "commit", "-qm", message],
    ]
    for command in commands:
        subprocess.run(command, cwd=repository, check=True, capture_output=True)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": _gpu_name()}


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def digits_dataset(scratch: Path) -> Path:
    """The built-in digits, ingested into `scratch` (the same data the pipeline trains on)."""
    from components.config import IngestConfig, load_params
    from components.ingest import ingest

    cfg = load_params("ingest", IngestConfig, ROOT / "params.yaml")
    return ingest(cfg.model_copy(update={"source": "builtin:digits"}),
                  out_dir=scratch / "dataset").out_dir.resolve()  # fmt: skip


def scratch_tracking(scratch: Path) -> None:
    """Benchmarks log to a throwaway MLflow store, never to the project's."""
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{scratch / 'mlflow.db'}"


def emit(name: str, result: dict[str, Any]) -> None:
    """Write benchmarks/results/<name>.json and print the same JSON as the last line."""
    path = ROOT / "benchmarks" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


class ReportClock(UserCallback):
    """A Ray Train callback that appends the wall time of every report to a file (it runs in
    the Train controller, another process), so epoch times include Ray's report and
    checkpoint overhead, as a user would feel them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def after_report(self, run_context: Any, metrics: Any, checkpoint: Any) -> None:
        with self.path.open("a") as stream:
            stamp = metrics[0].get("reported_at", time.time())  # the worker's own clock
            stream.write(f"{stamp}\t{metrics[0].get('epoch', -1)}\n")


def read_clock(path: Path) -> list[tuple[float, int]]:
    rows = (
        [line.split("\t") for line in path.read_text().splitlines()]
        if path.exists()
        else []
    )
    return [(float(stamp), int(float(epoch))) for stamp, epoch in rows]


def kill_train_worker_after(
    storage: Path, checkpoints: int, killed: list[float]
) -> None:
    """Wait until `checkpoints` checkpoints are on disk under `storage`, then SIGKILL one
    Ray Train worker process for real; appends the kill's wall time to `killed`."""
    import signal

    from ray.util.state import list_actors

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if len(list(storage.glob("*/checkpoint_*"))) >= checkpoints:
            workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"),
                                           ("state", "=", "ALIVE")])  # fmt: skip
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(time.time())
                return
        time.sleep(0.05)
