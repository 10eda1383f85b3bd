"""The GitHub Actions workflows: actionlint clean, actions pinned, least privilege."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOWS = sorted((Path(__file__).parents[1] / ".github" / "workflows").glob("*.yml"))
ACTIONLINT = Path(sys.executable).parent / "actionlint"


def test_actionlint_passes() -> None:
    completed = subprocess.run([str(ACTIONLINT), *map(str, WORKFLOWS)],
                               capture_output=True, text=True, check=False)  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_and_permissions_least(path: Path) -> None:
    text = path.read_text()
    for action in re.findall(r"uses:\s*([^\s#]+)", text):
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", action), action
    workflow = yaml.safe_load(text)
    assert workflow["permissions"] == {"contents": "read"}
    for job in workflow["jobs"].values():
        granted = job.get("permissions", {})
        assert set(granted.values()) <= {"read", "write"}
        assert "write" not in granted.get("contents", "read")


def test_the_gate_fails_the_job_on_rejection_and_uses_secrets_only() -> None:
    gate = yaml.safe_load((WORKFLOWS[0].parent / "promotion.yml").read_text())
    job = gate["jobs"]["gate"]
    for name, value in job["env"].items():
        if name.startswith("MLFLOW_TRACKING_"):
            assert value.startswith("${{ secrets."), name
    step = next(s for s in job["steps"] if s.get("id") == "gate")
    assert "python -m components promote" in step["run"]
    assert not step.get("continue-on-error", False)
