from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.__main__ import app
from tests.conftest import tiny_params

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "validate", "train", "evaluate"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage: str) -> None:
    result = CliRunner().invoke(app, [stage, "--help"])
    assert result.exit_code == 0
    assert "--params" in result.output


def test_bad_params_exit_non_zero_naming_the_key(tmp_path: Path) -> None:
    params = tiny_params(tmp_path, ingest={"sauce": "typo"})
    completed = subprocess.run(
        [sys.executable, "-m", "components", "ingest", "--params", str(params),
         "--out-dir", str(tmp_path / "dataset")],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "ingest.sauce: unknown key" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "dataset").exists()


def test_missing_input_is_named(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "components", "evaluate", "--model-dir",
         str(tmp_path / "none"), "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert "spec.json: expected file is missing" in completed.stderr
