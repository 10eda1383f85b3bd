"""Connecting to Ray: the cluster named by RAY_ADDRESS, or a local instance started here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import ray

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCAL_STORAGE = PROJECT_ROOT / ".cache" / "ray"


def ensure_ray(min_cpus: int) -> None:
    """Start (or join) Ray once per process.

    Locally, Ray is told of at least `min_cpus` CPUs (a Train worker each, plus one per
    trial driver), so a two-worker run fits a two-core laptop by sharing cores; on a
    cluster the cluster's resources decide.
    """
    if ray.is_initialized():
        return
    runtime_env = {"env_vars": {"PYTHONPATH": _pythonpath(), **_controller_env()}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=True)
    else:
        cpus = max(os.cpu_count() or 1, min_cpus)
        # address="local": always a private instance of this process, never one that
        # another pipeline on the machine started ("Found multiple active Ray instances").
        # The dashboard stays on: Ray Train's placement-group cleaner needs its State API.
        ray.init(address="local", num_cpus=cpus, runtime_env=runtime_env)


def storage_path_for(configured: str) -> str:
    """Where Ray Train keeps checkpoints: params' storage_path, or a local cache folder."""
    if configured:
        return configured if "://" in configured else str(Path(configured).resolve())
    LOCAL_STORAGE.mkdir(parents=True, exist_ok=True)
    return str(LOCAL_STORAGE)


def discard_local_run(run_path: str) -> None:
    """Delete a finished run's checkpoints when they live in the local cache (never remote)."""
    path = Path(run_path)
    if path.is_dir() and path.resolve().is_relative_to(LOCAL_STORAGE.resolve()):
        shutil.rmtree(path, ignore_errors=True)


def _controller_env() -> dict[str, str]:
    """Ray Train V2 workers hand each report through a queue of size one that the controller
    drains once per poll (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default): any epoch
    shorter than the poll is stretched to it. Polling every 0.2 s removes that stall
    (benchmarks/train_overhead.py); a value set in the environment wins."""
    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    return {name: os.environ.get(name, "0.2")}


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(p for p in (str(PROJECT_ROOT), existing) if p)
