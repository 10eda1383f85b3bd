"""The production loop on one machine, every part real: the training deployment promotes
version 1; the service serves it; shifted images arrive through /predict; the monitoring flow
judges the service's prediction log, finds drift and emits the event; the automation starts
the training deployment on a process worker; the gate promotes version 2; the running
service answers with version 2, and no request failed on the way."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.workers.process import ProcessWorker

from benchmarks.common import copy_repository
from tests import servers
from tests.conftest import TINY_PARAMS
from tests.imagegen import make_image_folder
from tests.prefect_api import call_api, run_ok

pytestmark = pytest.mark.slow


def _inverted(path: Path) -> bytes:
    """The shift the drift benchmark calls inversion (a scanner set to negative)."""
    pixels = 255 - np.asarray(Image.open(path).convert("L"), dtype=np.uint8)
    stream = io.BytesIO()
    Image.fromarray(pixels).save(stream, format="PNG")
    return stream.getvalue()


def _clean_traffic(url: str, images: list[bytes], stop: threading.Event,
                   versions: list[str], failures: list[str]) -> None:  # fmt: skip
    with httpx.Client(timeout=30) as client:
        index = 0
        while not stop.is_set():
            files = [("files", ("clean.png", images[index % len(images)], "image/png"))]
            index += 1
            try:
                answer = client.post(f"{url}/predict", files=files)
            except httpx.HTTPError as error:
                failures.append(repr(error))
                continue
            if answer.status_code == 200:
                versions.append(answer.json()["model"]["version"])
            else:
                failures.append(answer.text)
            time.sleep(0.05)


def _version(url: str) -> str | None:
    answer = httpx.get(f"{url}/ready", timeout=10)
    return answer.json()["model"]["version"] if answer.status_code == 200 else None


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_drift_retrain_gate_promote_serve(mlflow_uri: str, tmp_path: Path) -> None:
    project = copy_repository(tmp_path / "project")
    source = make_image_folder(tmp_path / "photos", per_class=30)
    log = tmp_path / "serving-log"
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["ingest"]["source"] = str(source)
    params["compress"]["variants"] = ["fp32"]
    params["promote"].update(model_name=f"loop-{tmp_path.name}"[:60],
                             ledger=str(tmp_path / "ledger.jsonl"))  # fmt: skip
    params["monitor"]["current"] = params["serve"]["log"] = str(log)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "MLFLOW_TRACKING_URI": mlflow_uri}  # fmt: skip
    env.pop("RAY_ADDRESS", None)

    with servers.prefect_server(tmp_path / "prefect") as api:
        env["PREFECT_API_URL"] = api
        template = ProcessWorker.get_default_base_job_template()
        pool = WorkPoolCreate(
            name="local-pool", type="process", base_job_template=template
        )
        call_api(api, lambda client: client.create_work_pool(pool))
        run_ok(
            ["prefect", "--no-prompt", "deploy", "--name", "local"], project, env, 300
        )
        worker = ["prefect", "worker", "start", "--pool", "local-pool", "--run-once"]

        async def train_now(client: PrefectClient) -> FlowRun:
            deployment = await client.read_deployment_by_name("training/local")
            return await client.create_flow_run_from_deployment(deployment.id)

        call_api(api, train_now)
        run_ok(worker, tmp_path, env, timeout=600)
        first = json.loads((project / "reports/promotion.json").read_text())
        assert first["decision"] == "promoted"

        clean = [p.read_bytes() for p in sorted(source.rglob("*.png"))]
        stop, versions, failures = threading.Event(), [], []
        with servers.model_service(tmp_path / "service", project / "params.yaml",
                                   env) as url:  # fmt: skip
            _wait(lambda: _version(url) == first["candidate_version"], timeout=60)
            for path in sorted(source.rglob("*.png")):
                files = [("files", (path.name, _inverted(path), "image/png"))]
                assert httpx.post(f"{url}/predict", files=files, timeout=10).is_success
            _wait(lambda: len(list(log.rglob("*.jsonl"))) > 0, timeout=30)
            time.sleep(1.5)  # a few more flushes (serve.log_flush_seconds)

            from flows.monitoring import monitoring

            with temporary_settings({PREFECT_API_URL: api}):
                verdict = monitoring(params_path=project / "params.yaml", root=project)
                # Deliver the event, and stop the process-wide events worker: it is keyed
                # by client type, not URL, and would send later tests' events here.
                EventsWorker.drain_all()
            assert verdict["drift_detected"], verdict

            async def automation_runs(client: PrefectClient) -> list[FlowRun]:
                runs = await client.read_flow_runs()
                return [r for r in runs
                        if r.created_by and r.created_by.type == "AUTOMATION"]  # fmt: skip

            _wait(lambda: len(call_api(api, automation_runs)) == 1, timeout=60)
            # Traffic from here on: every request through the retrain and the swap.
            traffic = threading.Thread(target=_clean_traffic, daemon=True,
                                       args=(url, clean, stop, versions, failures))  # fmt: skip
            traffic.start()
            try:
                run_ok(worker, tmp_path, env, timeout=600)  # the retraining run
                second = json.loads((project / "reports/promotion.json").read_text())
                assert second["decision"] == "promoted", second["reasons"]
                assert second["champion_before"] == first["candidate_version"]
                new = second["candidate_version"]
                _wait(lambda: versions[-10:] == [new] * 10, timeout=60)
            finally:
                stop.set()
                traffic.join()
    assert failures == []
    assert set(versions) == {first["candidate_version"], new}
