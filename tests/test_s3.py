"""S3 wherever a path can be remote, on moto's S3 server over HTTP: ingest from a prefix, the
DVC remote, Ray Train's checkpoints (and a resume from them) and MLflow's artifact store.

Nothing names the endpoint but the standard AWS environment (AWS_ENDPOINT_URL and the keys):
boto3, DVC (s3fs/aiobotocore), pyarrow (Ray) and the MLflow server all read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import psutil
import pytest

from benchmarks.common import ROOT, copy_repository, git_commit
from components.config import IngestConfig, load_params
from components.ingest import MANIFEST, ingest
from tests import servers
from tests.conftest import TINY_PARAMS, tiny_params
from tests.imagegen import make_image_folder

MLFLOW_BUCKET = "mlflow-artifacts"


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """This module's moto server and the standard AWS variables naming it, set in os.environ
    for the module (boto3 here) and handed to every process the tests start."""
    with servers.moto_server(tmp_path_factory.mktemp("moto-s3")) as endpoint:
        values = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "test-access-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret-key",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        with pytest.MonkeyPatch.context() as patch:
            for key, value in values.items():
                patch.setenv(key, value)
            patch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
            patch.delenv("AWS_PROFILE", raising=False)
            yield values


@pytest.fixture(scope="module")
def mlflow_s3(aws: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """An MLflow server whose artifact store is s3://mlflow-artifacts/mlflow."""
    boto3.client("s3").create_bucket(Bucket=MLFLOW_BUCKET)
    workdir = tmp_path_factory.mktemp("mlflow-s3")
    with servers.mlflow_server(workdir, f"s3://{MLFLOW_BUCKET}/mlflow", aws) as uri:
        yield uri


def _bucket(name: str) -> Any:
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    return client


def _keys(bucket: str, prefix: str = "") -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2")
    return [
        item["Key"]
        for page in pages.paginate(Bucket=bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]


def _upload(folder: Path, bucket: str, prefix: str) -> dict[str, str]:
    """Upload every file under `folder` below `prefix`; returns relative path -> sha256."""
    client = _bucket(bucket)
    files = sorted(p for p in folder.rglob("*") if p.is_file())

    def put(path: Path) -> None:
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, files))
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
    }


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, (
        f"{command}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.mark.slow
def test_ingest_lists_every_object_of_a_large_prefix(aws, tmp_path: Path) -> None:
    """More objects than one ListObjectsV2 page (1,000) under a nested prefix."""
    source = make_image_folder(tmp_path / "photos", per_class=340, size=(8, 8))
    uploaded = _upload(source, "ingest-source", "camera/2026-11")
    cfg = load_params("ingest", IngestConfig, TINY_PARAMS)
    cfg = cfg.model_copy(update={"source": "s3://ingest-source/camera/2026-11/"})
    result = ingest(cfg, out_dir=tmp_path / "dataset")
    manifest = pd.read_parquet(result.out_dir / MANIFEST)
    assert len(uploaded) == result.num_images == 1020
    assert dict(zip(manifest["path"], manifest["sha256"], strict=True)) == {
        f"images/{path}": digest for path, digest in uploaded.items()
    }
    assert (manifest["label"] == manifest["path"].str.split("/").str[1]).all()


@pytest.mark.slow
def test_dvc_remote_on_s3_push_then_pull_in_a_clean_clone(aws, tmp_path: Path) -> None:
    """The dataset `dvc repro` ingests from S3, pushed to an S3 remote, pulled elsewhere."""
    project = copy_repository(tmp_path / "project")
    # as a fresh clone: no dvc.lock (a machine's run record, untracked here)
    (project / "dvc.lock").unlink(missing_ok=True)
    _upload(make_image_folder(tmp_path / "photos"), "dvc-data", "photos")
    tiny_params(project, ingest={"source": "s3://dvc-data/photos"})
    _bucket("dvc-remote")
    env = _env()
    _run(
        ["dvc", "remote", "add", "-d", "storage", "s3://dvc-remote/store"], project, env
    )
    _run(["dvc", "repro", "ingest"], project, env)
    git_commit(project, "dataset from s3, remote on s3")
    _run(["dvc", "push"], project, env)
    dataset = project / "data/dataset"
    files = {
        p.relative_to(dataset): p.read_bytes()
        for p in dataset.rglob("*")
        if p.is_file()
    }
    # content-addressed: one object per distinct file, plus the directory listing
    distinct = {hashlib.md5(data).hexdigest() for data in files.values()}
    stored = _keys("dvc-remote", "store/files/md5/")
    assert len(stored) == len(distinct) + 1, stored

    clone = tmp_path / "clone"
    _run(["git", "clone", "--quiet", str(project), str(clone)], tmp_path, env)
    assert not (clone / "data/dataset").exists()
    # only ingest has run: the other stages' outputs have no hash in dvc.lock to pull
    _run(["dvc", "pull", "ingest"], clone, env)
    pulled = clone / "data/dataset"
    assert {
        p.relative_to(pulled): p.read_bytes() for p in pulled.rglob("*") if p.is_file()
    } == files


@pytest.mark.slow
def test_mlflow_artifacts_go_to_s3_through_the_server(
    mlflow_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's tracking code uploads through the server: the client holds no S3
    endpoint or keys, the server writes the bucket."""
    import mlflow

    from components.tracking import log_results, mlflow_run

    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps({"test_accuracy": 0.5}))
    mlflow.set_tracking_uri(mlflow_s3)
    try:
        with mlflow_run("s3-artifacts", "train", {}, {"lr": 0.01}) as run_id:
            log_results(run_id, {"test_accuracy": 0.5}, [report], "evaluation")
        experiment = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    finally:
        mlflow.set_tracking_uri(None)
    key = f"mlflow/{experiment}/{run_id}/artifacts/evaluation/metrics.json"
    monkeypatch.undo()  # the test reads the bucket with the keys again
    stored = boto3.client("s3").get_object(Bucket=MLFLOW_BUCKET, Key=key)
    assert stored["Body"].read() == report.read_bytes()


def _kill_a_train_worker_after(
    driver: subprocess.Popen[str], prefix: str, checkpoints: int, killed: list[float]
) -> None:
    """Once `checkpoints` distinct checkpoints have reached s3://ray-checkpoints/`prefix`,
    SIGKILL the Ray Train worker among `driver`'s descendants (never another Ray's)."""
    seen: set[str] = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        seen |= {
            key.rsplit("/", 1)[0]  # the checkpoint_<time> folder
            for key in _keys("ray-checkpoints", prefix)
            if key.endswith("/checkpoint.pt")
        }
        if len(seen) >= checkpoints:
            for process in psutil.Process(driver.pid).children(recursive=True):
                try:
                    if "RayTrainWorker" in " ".join(process.cmdline()):
                        process.kill()
                        killed.append(time.time())
                        return
                except psutil.Error:
                    continue
        time.sleep(0.1)


@pytest.mark.slow
def test_ray_train_checkpoints_on_s3_and_resumes_from_them(
    aws, mlflow_s3: str, tiny_dataset, tmp_path: Path
) -> None:
    """`python -m components train` with train.storage_path s3://...: checkpoints land in the
    bucket, a killed worker's group resumes from the latest one there, and the run's files
    reach MLflow's S3 artifact store."""
    _bucket("ray-checkpoints")
    params = tiny_params(tmp_path, train={"storage_path": "s3://ray-checkpoints/runs",
                                          "epochs": 20, "max_failures": 1})  # fmt: skip
    out_dir = tmp_path / "candidate"
    command = [sys.executable, "-m", "components", "train", "--params", str(params),
               "--data-dir", str(tiny_dataset.out_dir), "--out-dir", str(out_dir)]  # fmt: skip
    log = tmp_path / "train.log"
    killed: list[float] = []
    with log.open("w") as stream:
        driver = subprocess.Popen(
            command, cwd=tmp_path, stdout=stream, stderr=subprocess.STDOUT, text=True,
            env=_env(MLFLOW_TRACKING_URI=mlflow_s3, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        killer = threading.Thread(
            target=_kill_a_train_worker_after, args=(driver, "runs/", 3, killed)
        )
        killer.start()
        returncode = driver.wait(timeout=600)
        killer.join()
    assert returncode == 0, log.read_text()[-5000:]
    assert killed, "no worker was killed: the run finished first"

    lineage = json.loads((out_dir / "lineage.json").read_text())
    (resumed_at,) = lineage["resumed_at_epochs"]
    assert 1 <= resumed_at < 20
    history = json.loads((out_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(20))
    run_id = lineage["mlflow_run_id"]
    stored = _keys("ray-checkpoints", f"runs/train-{run_id}/")
    kept = [key for key in stored if key.endswith("/checkpoint.pt")]
    assert kept, stored
    assert f"runs/train-{run_id}/checkpoint_manager_snapshot.json" in stored
    artifacts = _keys(MLFLOW_BUCKET, "mlflow/")
    assert any(
        key.endswith(f"/{run_id}/artifacts/candidate/model.pt") for key in artifacts
    )


def test_monitor_judges_a_batch_under_an_s3_prefix(
    aws, drift_reference: dict[str, Path], tmp_path: Path
) -> None:
    """The inference log at scale: images under a prefix, any depth, no class folders."""
    from components.config import MonitorConfig
    from components.data import read_split
    from components.monitor import monitor

    _bucket("inference-log")
    client = boto3.client("s3")
    data = drift_reference["data"]
    for index, path in enumerate(read_split(data, "val")["path"]):
        day = "2026-11-21" if index % 2 else "2026-11-22"
        client.upload_file(str(data / path), "inference-log",
                           f"batches/{day}/{index}.png")  # fmt: skip
    cfg = load_params("monitor", MonitorConfig, TINY_PARAMS).model_copy(
        update={"workspace": str(tmp_path / "ws")}
    )
    result = monitor(cfg, reference_dir=drift_reference["reference"],
                     model_dir=drift_reference["model"], report_dir=tmp_path / "drift",
                     current="s3://inference-log/batches")  # fmt: skip
    assert result.images == len(read_split(data, "val"))
    assert not result.drift_detected  # the same images as the clean split:val batch


def test_ledger_on_s3_is_one_object_per_entry_in_order(aws) -> None:
    from components.ledger import append_ledger, read_ledger

    _bucket("ledger-bucket")
    location = "s3://ledger-bucket/promotions/image-classifier"
    for action in ("promoted", "rejected", "rollback"):
        append_ledger(location, {"action": action, "model": "image-classifier"})
    entries = read_ledger(location)
    assert [entry["action"] for entry in entries] == [
        "promoted",
        "rejected",
        "rollback",
    ]
    assert all(entry["time"] and entry["actor"] for entry in entries)
    assert len(_keys("ledger-bucket", "promotions/")) == 3
