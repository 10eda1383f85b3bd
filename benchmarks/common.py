"""Helpers shared by the benchmarks (and the end-to-end test): a clean copy of the
repository to run in, and a description of the machine for the result JSON."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

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
