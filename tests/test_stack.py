"""The pinned stack installs and each real component starts (see README, Troubleshooting)."""

from __future__ import annotations

import json
import re
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_installed_versions_match_the_lock() -> None:
    drift = []
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(?:\[.*\])?==([^\s;]+)", line.strip())
        if not match:
            continue
        name, pinned = match.groups()
        try:
            installed = version(name)
        except PackageNotFoundError:
            drift.append(f"{name}: not installed")
            continue
        if installed.split("+")[0] != pinned.split("+")[0]:
            drift.append(f"{name}: {installed} installed, {pinned} pinned")
    assert not drift, "run `make clean-venv test`: " + "; ".join(drift)


def test_known_traps_are_avoided() -> None:
    assert version("prefect") == "3.9.1"  # 3.8.8 cannot start its server here
    assert int(version("pandas").split(".")[0]) < 3  # evidently 0.7.23 needs pandas 2
    assert version("torch").startswith("2.13.0")
    import dvc_s3  # noqa: F401  - dvc[s3]: the S3 remote
    import onnxscript  # noqa: F401  - torch.onnx.export's default (dynamo) path needs it


def test_evidently_runs_a_drift_report() -> None:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"brightness": rng.normal(0, 1, 300)})
    current = pd.DataFrame({"brightness": rng.normal(3, 1, 300)})
    snapshot = Report([DataDriftPreset()]).run(
        current_data=current, reference_data=reference
    )
    assert "DriftedColumnsCount" in snapshot.json()


def test_onnx_export_runs_in_onnxruntime(tmp_path: Path) -> None:
    import onnxruntime

    from components.model import ModelSpec, build_model

    spec = ModelSpec(
        arch="cnn",
        classes=["a", "b"],
        in_channels=1,
        image_size=8,
        channels=[4],
        hidden=8,
        dropout=0.0,
        mean=0.5,
        std=0.25,
    )
    model = build_model(spec).eval()
    example = torch.randn(2, 1, 8, 8)
    torch.onnx.export(
        model, (example,), tmp_path / "m.onnx"
    )  # dynamo=True is the default
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"))
    (output,) = session.run(None, {session.get_inputs()[0].name: example.numpy()})
    np.testing.assert_allclose(output, model(example).detach().numpy(), atol=1e-4)


@pytest.mark.slow
def test_ray_state_api_is_available(ray_cluster) -> None:
    # Without ray[default] (dashboard + State API) Tune-stopped Train trials leak workers.
    from ray.util.state import list_nodes

    assert len(list_nodes()) >= 1


@pytest.mark.slow
def test_servers_answer(mlflow_uri: str, prefect_api: str, s3_endpoint: str) -> None:
    with urllib.request.urlopen(f"{prefect_api}/health") as response:
        assert json.loads(response.read()) is True
    with urllib.request.urlopen(f"{mlflow_uri}/health") as response:
        assert response.read().strip() == b"OK"
    with urllib.request.urlopen(f"{s3_endpoint}/moto-api/") as response:
        assert response.status == 200
