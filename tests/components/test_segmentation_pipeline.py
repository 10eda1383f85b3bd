"""The segmentation task through every stage on tiny generated shapes, with the real servers:
Ray Train (U-Net), compress (int8, ONNX parity), evaluate (the pinned metric names), the card,
the promotion gate on the MLflow server, the service answering masks, and the drift monitor."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from components.card import CardInputs, card
from components.compress import compress
from components.config import (
    CardConfig,
    CompressConfig,
    EvaluateConfig,
    IngestConfig,
    MonitorConfig,
    PromoteConfig,
    TrainConfig,
    ValidateConfig,
    load_params,
)
from components.evaluate import evaluate
from components.ingest import ingest
from components.monitor import monitor
from components.registry import promote
from components.shapes import write_shapes
from components.train import train
from components.validate import validate
from tests import servers

pytestmark = pytest.mark.slow
PARAMS = Path(__file__).resolve().parents[1] / "params.segmentation.tiny.yaml"
CLASSES = ("background", "circle", "square", "triangle")


@dataclass(frozen=True)
class Run:
    root: Path
    data: Path
    candidate: Path
    shipped: Path
    evaluation: Path
    reference: Path
    mlflow_uri: str


@pytest.fixture(scope="module")
def run(
    mlflow_uri: str, ray_cluster: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("segmentation")
    write_shapes(root / "source", count=60, size=32, seed=11)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
        mlflow.set_tracking_uri(mlflow_uri)
        cfg = load_params("ingest", IngestConfig, PARAMS)
        data = ingest(cfg.model_copy(update={"source": str(root / "source")}),
                      out_dir=root / "dataset", task="segmentation").out_dir  # fmt: skip
        checked = validate(load_params("validate", ValidateConfig, PARAMS),
                           data_dir=data, report_dir=root / "validation")  # fmt: skip
        assert checked.success, checked.failed
        train_cfg = load_params("train", TrainConfig, PARAMS)
        trained = train(train_cfg.model_copy(update={"epochs": 10}), data_dir=data,
                        out_dir=root / "candidate", params_path=PARAMS)  # fmt: skip
        shipped = compress(load_params("compress", CompressConfig, PARAMS),
                           model_dir=trained.model_dir, data_dir=data,
                           out_dir=root / "compressed",
                           report_path=root / "compression.json").model_dir  # fmt: skip
        evaluate(load_params("evaluate", EvaluateConfig, PARAMS),
                 model_dir=trained.model_dir, shipped_dir=shipped, data_dir=data,
                 report_dir=root / "evaluation", reference_dir=root / "reference")  # fmt: skip
        yield Run(root, data, trained.model_dir, shipped, root / "evaluation",
                  root / "reference", mlflow_uri)  # fmt: skip
        mlflow.set_tracking_uri(None)


def test_training_follows_val_miou_and_evaluate_writes_the_pinned_names(
    run: Run,
) -> None:
    history = json.loads((run.candidate / "history.json").read_text())
    trained = json.loads((run.candidate / "metrics.json").read_text())
    assert trained["val_miou"] == pytest.approx(max(row["val_miou"] for row in history))
    metrics = json.loads((run.evaluation / "metrics.json").read_text())
    assert metrics["task"] == "segmentation"
    for key in (
        "test_miou",
        "test_pixel_accuracy",
        "fp32_test_miou",
        "test_fwiou",
        "test_boundary_f1",
        "ece",
        *[f"iou_{name}" for name in CLASSES],
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["fp32_pixel_agreement"] > 0.9  # int8 against fp32, pixel by pixel
    predictions = pd.read_parquet(run.evaluation / "predictions.parquet")
    assert (
        len(predictions) == metrics["test_images"] and predictions["sha256"].is_unique
    )
    assert predictions["quality"].between(0, 1).all()
    per_class = json.loads((run.evaluation / "per_class.json").read_text())
    assert set(per_class["shipped"]) == set(CLASSES)
    # Better than background everywhere: that scores the background's share of the test
    # pixels as its IoU, 0 for every other class present.
    pixels = {name: row["pixels"] for name, row in per_class["fp32"].items()}
    present = sum(count > 0 for count in pixels.values())
    assert (
        metrics["fp32_test_miou"]
        > pixels["background"] / sum(pixels.values()) / present
    )
    assert (run.evaluation / "worst_images.png").stat().st_size > 1000
    compression = json.loads((run.root / "compression.json").read_text())
    assert compression["metric"] == "miou"
    assert {row["variant"] for row in compression["variants"]} == {"fp32", "int8_ptq"}


def test_the_card_shows_the_segmentation_figures(run: Run) -> None:
    inputs = CardInputs(model_dir=run.candidate, shipped_dir=run.shipped, data_dir=run.data,
                        validation_dir=run.root / "validation",
                        compression_report=run.root / "compression.json",
                        evaluation_dir=run.evaluation, reference_dir=run.reference,
                        params_path=PARAMS)  # fmt: skip
    result = card(load_params("card", CardConfig, PARAMS), inputs, run.root / "card.md")
    text = result.markdown_path.read_text()
    metrics = json.loads((run.evaluation / "metrics.json").read_text())
    assert f"| Test mIoU | {metrics['test_miou']:.4f} |" in text
    assert "Wilcoxon signed-rank" in text and "![Worst test images]" in text
    assert "per-class IoU, from the" in text  # the limitations name each class's IoU
    assert "data:image/png;base64," in result.html_path.read_text()


def test_promoted_segmenter_is_served_masks_at_the_upload_size(run: Run) -> None:
    gate = PromoteConfig.model_validate(
        {
            **load_params("promote", PromoteConfig, PARAMS).model_dump(),
            "ledger": str(run.root / "ledger.jsonl"),
        }
    )
    decision = promote(gate, evaluation_dir=run.evaluation, shipped_dir=run.shipped,
                       report_path=run.root / "promotion.json")  # fmt: skip
    assert decision.decision == "promoted", decision.reasons
    image = Image.open(run.data / "images/shapes_0000.png").resize((40, 48))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    env = {"MLFLOW_TRACKING_URI": run.mlflow_uri}
    with servers.model_service(run.root / "service", PARAMS, env) as url:
        _wait_ready(url)
        upload = [("files", ("a.png", buffer.getvalue(), "image/png"))]
        answer = httpx.post(f"{url}/predict", files=upload, timeout=30)
        assert answer.status_code == 200, answer.text
        prediction = answer.json()["predictions"][0]
        mask = Image.open(io.BytesIO(base64.b64decode(prediction["mask_png_base64"])))
        assert mask.mode == "L" and mask.size == (40, 48)
        assert set(np.unique(np.asarray(mask))) <= set(range(len(CLASSES)))
        assert sum(prediction["class_areas"].values()) == pytest.approx(1.0)
        assert prediction["label"] in CLASSES
        scraped = httpx.get(f"{url}/metrics", timeout=10).text
        assert "mlops_serve_predictions_total{" in scraped


def test_monitor_watches_the_masks_outputs(run: Run, tmp_path: Path) -> None:
    cfg = load_params("monitor", MonitorConfig, PARAMS).model_copy(
        update={"workspace": str(tmp_path / "workspace"), "min_images": 10}
    )
    result = monitor(cfg, reference_dir=run.reference, model_dir=run.shipped,
                     report_dir=tmp_path / "drift", data_dir=run.data,
                     current=str(run.data / "images"))  # fmt: skip
    scores = json.loads((tmp_path / "drift/drift.json").read_text())["scores"]
    assert {"area_circle", "pixel_entropy", "embedding_0", "predicted_class"} <= set(
        scores
    )
    assert result.images == 60


def _wait_ready(url: str, timeout: float = 90) -> None:
    import time

    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the service never became ready"
        time.sleep(0.2)
