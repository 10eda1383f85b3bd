"""The training flow on a real Prefect server, on an RGB folder of mixed-size photos."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from components.validate import DataValidationError
from flows.training import training
from tests.conftest import tiny_params
from tests.imagegen import make_image_folder

pytestmark = pytest.mark.slow


async def _runs(api: str) -> tuple[list, list]:
    async with get_client() as client:
        return await client.read_flow_runs(), await client.read_task_runs()


def test_flow_runs_every_stage_on_rgb_photos(
    tmp_path: Path, prefect_api: str, mlflow_uri: str, ray_cluster
) -> None:
    source = make_image_folder(
        tmp_path / "photos", rgb=True, vary_size=True, size=(24, 32)
    )
    params = tiny_params(tmp_path, ingest={"source": str(source)},
                         promote={"model_name": f"flow-{tmp_path.name}",
                                  "ledger": str(tmp_path / "ledger.jsonl")})  # fmt: skip
    mlflow.set_tracking_uri(mlflow_uri)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        state = training(params_path=params, root=tmp_path, return_state=True)
        flow_runs, task_runs = asyncio.run(_runs(prefect_api))
    assert state.is_completed(), state
    lineage = json.loads((tmp_path / "models/candidate/lineage.json").read_text())
    logged = mlflow.MlflowClient().get_run(lineage["mlflow_run_id"]).data.metrics
    mlflow.set_tracking_uri(None)
    assert {"test_accuracy", "compress_size_ratio", "compress_accuracy"} <= set(logged)
    metrics = state.result()
    promotion = json.loads((tmp_path / "reports/promotion.json").read_text())
    assert metrics.pop("promotion") == promotion["decision"]
    assert metrics == json.loads(
        (tmp_path / "reports/evaluation/metrics.json").read_text()
    )
    spec = json.loads((tmp_path / "models/candidate/spec.json").read_text())
    assert spec["in_channels"] == 3  # the RGB photos were kept in colour
    run = next(r for r in flow_runs if r.id == state.state_details.flow_run_id)
    assert run.state.is_completed()
    names = {t.name.rsplit("-", 1)[0] for t in task_runs if t.flow_run_id == run.id}
    assert names == {"ingest", "validate", "train", "compress", "evaluate", "card",
                     "promote"}  # fmt: skip
    assert (
        "## Quantitative analyses" in (tmp_path / "reports/model_card.md").read_text()
    )
    assert (tmp_path / "reports/reference/features.parquet").is_file()
    shipped = json.loads((tmp_path / "reports/compression.json").read_text())["shipped"]
    assert (tmp_path / "models/compressed/model.onnx").is_file()
    assert json.loads((tmp_path / "models/compressed/variant.json").read_text()) == {
        "variant": shipped
    }


def test_flow_stops_at_the_validation_gate(tmp_path: Path, prefect_api: str) -> None:
    source = make_image_folder(tmp_path / "photos")
    (source / "class_0" / "broken.png").write_bytes(b"\x89PNG not really")
    params = tiny_params(tmp_path, ingest={"source": str(source)})
    with (
        temporary_settings({PREFECT_API_URL: prefect_api}),
        pytest.raises(DataValidationError, match=r"images/class_0/broken\.png"),
    ):
        training(params_path=params, root=tmp_path)
    assert not (tmp_path / "models").exists()
