"""The monitoring flow on a real Prefect server: a clean batch completes quietly, a drifted one
completes and emits the event the training deployment's trigger listens for (the trigger
itself is tested with the deployments, tests/flows/test_deployments.py)."""

from __future__ import annotations

import json
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.config import EvaluateConfig, IngestConfig, load_params
from components.data import read_split
from components.evaluate import evaluate
from components.ingest import ingest
from flows.monitoring import DRIFT_EVENT, monitoring
from tests.conftest import TINY_PARAMS, tiny_params
from tests.imagegen import make_image_folder

pytestmark = pytest.mark.slow


def _drift_events(api: str, timeout: float = 30) -> list[dict]:
    """Poll the server's event store for drift events (the client sends them in the
    background)."""
    body = json.dumps({"filter": {"event": {"name": [DRIFT_EVENT]}}, "limit": 50})
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(f"{api}/events/filter", data=body.encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            events: list[dict] = json.loads(response.read())["events"]
        if events or time.monotonic() > deadline:
            return events
        time.sleep(1)


def test_drift_emits_the_retraining_event(
    compressed_model: tuple[Path, Path], tmp_path: Path, prefect_api: str
) -> None:
    root = tmp_path / "project"
    candidate, shipped = compressed_model
    shutil.copytree(candidate, root / "models/candidate")
    shutil.copytree(shipped, root / "models/compressed")
    source = make_image_folder(tmp_path / "source", per_class=60, seed=11)
    ingest_cfg = load_params("ingest", IngestConfig, TINY_PARAMS).model_copy(
        update={"source": str(source), "val_fraction": 0.4, "test_fraction": 0.4}
    )
    data_dir = ingest(ingest_cfg, out_dir=root / "data/dataset").out_dir
    evaluate(load_params("evaluate", EvaluateConfig, TINY_PARAMS),
             model_dir=root / "models/candidate",
             shipped_dir=root / "models/compressed", data_dir=data_dir,
             report_dir=root / "reports/evaluation",
             reference_dir=root / "reports/reference")  # fmt: skip
    params = tiny_params(tmp_path, monitor={"workspace": str(tmp_path / "ws"),
                                            "model_name": "flow-monitor"})  # fmt: skip
    inverted = tmp_path / "inverted"
    inverted.mkdir()
    for index, path in enumerate(read_split(data_dir, "val")["path"]):
        pixels = 255 - np.asarray(Image.open(data_dir / path).convert("L"))
        Image.fromarray(pixels.astype(np.uint8)).save(inverted / f"{index}.png")

    with temporary_settings({PREFECT_API_URL: prefect_api}):
        clean = monitoring(params_path=params, root=root, return_state=True)
        assert clean.is_completed(), clean
        assert clean.result()["drift_detected"] is False
        assert _drift_events(prefect_api, timeout=3) == []
        drifted = monitoring(params_path=params, root=root, current=str(inverted),
                             return_state=True)  # fmt: skip
        assert drifted.is_completed(), drifted  # drift is an outcome, not a failure
        verdict = drifted.result()
    assert verdict["drift_detected"] and verdict["drifted"]
    (event,) = _drift_events(prefect_api)
    assert event["resource"]["prefect.resource.id"] == "mlops.monitor.flow-monitor"
    assert event["payload"]["drifted"] == verdict["drifted"]
    report = json.loads((root / "reports/drift/drift.json").read_text())
    assert report["current"] == str(inverted)
