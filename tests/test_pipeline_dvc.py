"""End to end: `dvc repro` in a temporary copy of the repository, with tiny params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.common import copy_repository, git_commit
from tests.conftest import TINY_PARAMS
from tests.imagegen import make_image_folder

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, env: dict[str, str], check: bool = True):
    completed = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if check and completed.returncode != 0:
        raise AssertionError(
            f"{command} failed:\n{completed.stdout[-3000:]}\n{completed.stderr[-5000:]}"
        )
    return completed


@pytest.fixture
def project(tmp_path: Path, mlflow_uri: str) -> tuple[Path, dict[str, str]]:
    project = copy_repository(tmp_path / "project")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": mlflow_uri,
    }
    env.pop("RAY_ADDRESS", None)
    return project, env


def test_dvc_repro_end_to_end_then_gate_and_recover(project, tmp_path: Path) -> None:
    project, env = project
    source = make_image_folder(
        tmp_path / "photos", rgb=True, vary_size=True, size=(16, 20)
    )
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["ingest"]["source"] = str(source)
    params["promote"]["model_name"] = f"e2e-{tmp_path.name}"  # its own registry entry
    # the tiny val split is below monitor.min_images
    params["monitor"]["current"] = "split:train"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    git_commit(project, "tiny")

    run(["dvc", "repro"], project, env)
    metrics = json.loads((project / "reports/evaluation/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    assert "up to date" in run(["dvc", "status"], project, env).stdout
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project, env).stdout)
    assert "test_accuracy" in json.dumps(shown)
    assert "size_ratio" in json.dumps(shown)  # compress's summary, beside evaluate's
    assert (project / "models/compressed/model.onnx").is_file()
    promotion = json.loads((project / "reports/promotion.json").read_text())
    assert promotion["decision"] == "promoted"  # the first model: floors alone
    assert promotion["champion_before"] is None and promotion["reasons"]
    ledger = (project / "ledger/promotions.jsonl").read_text().splitlines()
    assert [json.loads(line)["action"] for line in ledger] == ["promoted"]
    assert "## Quantitative analyses" in (project / "reports/model_card.md").read_text()
    drift = json.loads((project / "reports/drift/drift.json").read_text())
    assert drift["current"] == "split:train" and drift["scores"]
    assert "Stage 'train' didn't change" in run(["dvc", "repro"], project, env).stdout
    git_commit(project, "good run")
    good_hash = json.loads((project / "data/dataset/dataset.json").read_text())[
        "content_hash"
    ]
    model_bytes = (project / "models/candidate/model.pt").read_bytes()

    broken = source / "class_1" / "img_004.png"
    broken.write_bytes(broken.read_bytes()[:40])
    assert (
        "up to date" in run(["dvc", "status"], project, env).stdout
    )  # DVC cannot see it
    failed = run(["dvc", "repro", "--force", "--single-item", "ingest"], project, env)
    assert "Running stage 'validate'" not in failed.stdout
    failed = run(["dvc", "repro"], project, env, check=False)
    assert failed.returncode != 0
    assert "images/class_1/img_004.png" in failed.stderr + failed.stdout
    assert "Running stage 'train'" not in failed.stdout
    assert (project / "models/candidate/model.pt").read_bytes() == model_bytes

    run(["git", "checkout", "dvc.lock"], project, env)  # the last good state
    run(["dvc", "checkout", "--force"], project, env)
    restored = json.loads((project / "data/dataset/dataset.json").read_text())
    assert restored["content_hash"] == good_hash
