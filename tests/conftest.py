"""Shared fixtures: tiny datasets, tiny params, and the real local servers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.config import IngestConfig, TrainConfig, ValidateConfig, load_params
from components.ingest import IngestResult, ingest
from tests import servers
from tests.imagegen import make_image_folder

TINY_PARAMS = Path(__file__).parent / "params.tiny.yaml"

# Nothing the tests start may phone home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def tiny_params(tmp_path: Path, **overrides: dict) -> Path:
    """tests/params.tiny.yaml with some sections' keys replaced, written under tmp_path."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    for section, values in overrides.items():
        params[section] = {**params.get(section, {}), **values}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "source")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> IngestResult:
    """An ingested, valid 3-class grey dataset shared by the read-only tests."""
    root = tmp_path_factory.mktemp("tiny")
    source = make_image_folder(root / "source", per_class=14)
    cfg = load_params("ingest", IngestConfig, TINY_PARAMS).model_copy(
        update={"source": str(source)}
    )
    return ingest(cfg, out_dir=root / "dataset")


@pytest.fixture(scope="session")
def validate_cfg() -> ValidateConfig:
    return load_params("validate", ValidateConfig, TINY_PARAMS)


@pytest.fixture(scope="session")
def train_cfg() -> TrainConfig:
    return load_params("train", TrainConfig, TINY_PARAMS)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with servers.mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with servers.prefect_server(tmp_path_factory.mktemp("prefect")) as api:
        yield api


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with servers.moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard AWS variables pointing boto3 at the moto server."""
    values = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test-access-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret-do-not-leak",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster for the session, big enough for two Train workers."""
    import ray

    from components.ray_runtime import ensure_ray

    ensure_ray(min_cpus=3)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def candidate(tiny_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained small CNN, written as train writes it (no Ray needed here); wide
    enough (~30k weights) that the weights, not the graph, dominate the file sizes."""
    import torch
    from torch.utils.data import DataLoader

    from components.data import ImageDataset, read_split
    from components.model import build_model, save_model
    from components.train import model_spec
    from components.train_loop import Precision, run_epoch, seed_everything

    cfg = load_params("train", TrainConfig, TINY_PARAMS).model_copy(
        update={"channels": [16, 32], "hidden": 64}
    )
    data_dir = tiny_dataset.out_dir
    spec = model_spec(cfg, data_dir)
    seed_everything(0)
    model = build_model(spec)
    loader = DataLoader(ImageDataset(data_dir, read_split(data_dir, "train"), spec),
                        batch_size=8, shuffle=True)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(15):
        run_epoch(model, loader, Precision(torch.device("cpu"), None, False, None),
                  optimizer)  # fmt: skip
    folder = tmp_path_factory.mktemp("candidate") / "candidate"
    save_model(model, spec, folder)
    (folder / "lineage.json").write_text(json.dumps({"mlflow_run_id": None}))
    return folder


@pytest.fixture(scope="session")
def compressed_model(
    candidate: Path,
    tiny_dataset: IngestResult,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    """The candidate compressed with the tiny params: (candidate dir, shipped dir)."""
    from components.compress import compress
    from components.config import CompressConfig

    out = tmp_path_factory.mktemp("shipped")
    cfg = load_params("compress", CompressConfig, TINY_PARAMS)
    result = compress(cfg, model_dir=candidate, data_dir=tiny_dataset.out_dir,
                      out_dir=out / "compressed", report_path=out / "compression.json")  # fmt: skip
    return candidate, result.model_dir


@pytest.fixture(scope="session")
def drift_reference(
    compressed_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A larger dataset of the candidate's kind, and the reference evaluate writes on its
    test split with the shipped ONNX variant; the val split is a clean current batch."""
    from components.config import EvaluateConfig
    from components.evaluate import evaluate

    candidate, shipped = compressed_model
    root = tmp_path_factory.mktemp("drift")
    source = make_image_folder(root / "source", per_class=90, seed=7)
    cfg = load_params("ingest", IngestConfig, TINY_PARAMS).model_copy(
        update={"source": str(source), "val_fraction": 0.4, "test_fraction": 0.4}
    )
    data_dir = ingest(cfg, out_dir=root / "dataset").out_dir
    evaluate(load_params("evaluate", EvaluateConfig, TINY_PARAMS), model_dir=candidate,
             shipped_dir=shipped, data_dir=data_dir, report_dir=root / "evaluation",
             reference_dir=root / "reference")  # fmt: skip
    return {"data": data_dir, "reference": root / "reference", "model": shipped,
            "candidate": candidate}  # fmt: skip
