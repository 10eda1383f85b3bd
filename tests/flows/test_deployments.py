"""prefect.yaml on a real Prefect server: `prefect --no-prompt deploy --all`, a process worker
running training/local to completion, the Kubernetes job the k8s set would start, and the
drift event starting a training run through the automation."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import mlflow
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.events import emit_event
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.workers.process import ProcessWorker
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from benchmarks.common import copy_repository
from tests import servers
from tests.conftest import tiny_params
from tests.imagegen import make_image_folder
from tests.prefect_api import call_api, run_ok

pytestmark = pytest.mark.slow

IMAGE_TAG = "test-0123abc"
K8S_TEMPLATE = "k8s/base/prefect-worker/base-job-template.json"
POOLS = {"local-pool": "process", "k8s-pool": "kubernetes"}
DEPLOYMENTS = [f"{flow}/{variant}" for flow in ("training", "monitoring")
               for variant in ("k8s", "local")]  # fmt: skip
DRIFT = "mlops.drift.detected"


@dataclass(frozen=True)
class Deployed:
    api: str  # this module's own Prefect server: its events and automations stay here
    project: Path  # the clean copy `prefect deploy` ran in
    env: dict[str, str]  # for the CLI, the worker and the runs it starts
    ids: dict[str, UUID]  # "flow/deployment" -> id


@pytest.fixture(scope="module")
def deployed(
    mlflow_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployed]:
    """A Prefect server, a clean copy of the repository, both work pools, and every
    deployment of prefect.yaml."""
    scratch = tmp_path_factory.mktemp("deployments")
    project = copy_repository(scratch / "project")
    templates = {
        "process": ProcessWorker.get_default_base_job_template(),
        "kubernetes": json.loads((project / K8S_TEMPLATE).read_text()),
    }

    async def create_pools(client: PrefectClient) -> None:
        for name, kind in POOLS.items():
            await client.create_work_pool(
                WorkPoolCreate(name=name, type=kind, base_job_template=templates[kind])
            )

    async def read_ids(client: PrefectClient) -> dict[str, UUID]:
        return {n: (await client.read_deployment_by_name(n)).id for n in DEPLOYMENTS}

    with servers.prefect_server(scratch / "server") as api:
        call_api(api, create_pools)
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(scratch / "prefect-home"),
            "MLFLOW_TRACKING_URI": mlflow_uri,
            "IMAGE_TAG": IMAGE_TAG,
        }
        env.pop("RAY_ADDRESS", None)
        run_ok(["prefect", "--no-prompt", "deploy", "--all"], project, env, timeout=300)
        yield Deployed(api, project, env, call_api(api, read_ids))


def test_deploy_all_creates_both_sets(deployed: Deployed) -> None:
    async def read(client: PrefectClient) -> list[Any]:
        return [await client.read_deployment(i) for i in deployed.ids.values()]

    for name, deployment in zip(
        deployed.ids, call_api(deployed.api, read), strict=True
    ):
        variant = name.split("/")[1]
        assert deployment.work_pool_name == f"{variant}-pool"
        assert deployment.parameters == {"params_path": "params.yaml", "root": "."}
        (step,) = deployment.pull_steps
        directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
        assert directory == ("/app" if variant == "k8s" else str(deployed.project))
        # the cluster runs on schedules; a laptop on demand and on drift
        assert len(deployment.schedules) == (1 if variant == "k8s" else 0)


def test_k8s_deployments_render_into_the_pools_job(deployed: Deployed) -> None:
    """The Job the Kubernetes worker would create for each k8s deployment (the worker's own
    code on the pool's template), short of a cluster to send it to."""

    async def render(client: PrefectClient) -> list[tuple[dict[str, Any], Any]]:
        pool = await client.read_work_pool("k8s-pool")
        declared = set(pool.base_job_template["variables"]["properties"])
        rendered = []
        for name in ["training/k8s", "monitoring/k8s"]:
            variables = (await client.read_deployment(deployed.ids[name])).job_variables
            # a variable the template does not declare would be dropped without a word
            assert set(variables) <= declared, set(variables) - declared
            config = await KubernetesWorkerJobConfiguration.from_template_and_values(
                pool.base_job_template, variables
            )
            rendered.append((variables, config))
        return rendered

    for variables, config in call_api(deployed.api, render):
        pod = config.job_manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"] == f"ghcr.io/example/mlops-pipeline:{IMAGE_TAG}"
        assert container["resources"] == {
            "requests": {"cpu": variables["cpu_request"],
                         "memory": variables["memory_request"]},
            "limits": {"cpu": variables["cpu_limit"], "memory": variables["memory_limit"]},
        }  # fmt: skip
        assert container["envFrom"], "endpoints reach the pod from the cluster's config"
        assert pod["serviceAccountName"] and config.namespace


def test_process_worker_runs_training_deployment(
    deployed: Deployed, mlflow_uri: str, tmp_path: Path
) -> None:
    source = make_image_folder(tmp_path / "photos")
    params = tiny_params(tmp_path, ingest={"source": str(source)},
                         compress={"variants": ["fp32"]},  # the flow test covers the rest
                         promote={"model_name": f"deploy-{tmp_path.name}",
                                  "ledger": str(tmp_path / "ledger.jsonl")})  # fmt: skip
    root = tmp_path / "run"

    async def start(client: PrefectClient) -> FlowRun:
        return await client.create_flow_run_from_deployment(
            deployed.ids["training/local"],
            parameters={"params_path": str(params), "root": str(root)},
        )

    flow_run = call_api(deployed.api, start)
    worker = ["prefect", "worker", "start", "--pool", "local-pool", "--run-once"]
    # returns once the run has ended
    run_ok(worker, tmp_path, deployed.env, timeout=600)

    async def read(client: PrefectClient) -> FlowRun:
        return await client.read_flow_run(flow_run.id)

    finished = call_api(deployed.api, read)
    assert finished.state is not None and finished.state.is_completed(), finished.state
    promotion = json.loads((root / "reports/promotion.json").read_text())
    assert promotion["decision"] == "promoted"  # the first model: floors alone
    assert (root / "models/compressed/model.onnx").is_file()
    metrics = json.loads((root / "reports/evaluation/metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    lineage = json.loads((root / "models/candidate/lineage.json").read_text())
    run = mlflow.MlflowClient(mlflow_uri).get_run(lineage["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert not (deployed.project / "data/dataset").exists(), "wrote outside its root"


def test_drift_event_starts_training_through_the_automation(deployed: Deployed) -> None:
    resource = {"prefect.resource.id": "mlops.monitor.deploy-drift"}
    with temporary_settings({PREFECT_API_URL: deployed.api}):
        # Another event on the same resource first: it must start nothing.
        emit_event(event="mlops.monitor.completed", resource=resource)
        emit_event(event=DRIFT, resource=resource, payload={"drift_share": 0.6})
        EventsWorker.drain_all()

    async def automation_runs(client: PrefectClient) -> list[FlowRun]:
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=list(deployed.ids.values()))))  # fmt: skip
        return [r for r in runs if r.created_by and r.created_by.type == "AUTOMATION"]

    deadline = time.monotonic() + 60
    started = call_api(deployed.api, automation_runs)
    while len(started) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
        started = call_api(deployed.api, automation_runs)

    assert sorted(str(r.deployment_id) for r in started) == sorted(
        str(deployed.ids[name]) for name in ("training/k8s", "training/local")
    ), "one run per training deployment; none for monitoring, none for the other event"
    assert all(r.parameters == {"params_path": "params.yaml", "root": "."}
               for r in started)  # fmt: skip
