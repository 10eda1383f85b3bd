"""The model card: generated from the files the stages wrote, every section present, the
figures the same as in those files, and a missing input named."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from components.card import CardError, CardInputs, card, energy
from components.config import (
    CardConfig,
    EvaluateConfig,
    ValidateConfig,
    load_params,
)
from components.evaluate import evaluate
from components.ingest import IngestResult
from components.tracking import Lineage
from components.validate import validate
from tests.conftest import TINY_PARAMS

SECTIONS = ["Model details", "Intended use", "Factors", "Metrics", "Evaluation data",
            "Training data", "Quantitative analyses", "Ethical considerations",
            "Caveats and recommendations"]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(
    compressed_model: tuple[Path, Path],
    tiny_dataset: IngestResult,
    tmp_path_factory: pytest.TempPathFactory,
) -> CardInputs:
    trained, shipped = compressed_model
    root = tmp_path_factory.mktemp("card")
    data_dir = tiny_dataset.out_dir
    # The fixture's candidate was trained without Ray: give it what train writes besides.
    candidate = shutil.copytree(trained, root / "candidate")
    lineage = Lineage.collect(TINY_PARAMS, tiny_dataset.content_hash)
    (candidate / "lineage.json").write_text(
        json.dumps({**asdict(lineage), "mlflow_run_id": None, "resumed_at_epochs": []})
    )
    (candidate / "metrics.json").write_text(json.dumps({
        "epochs_trained": 15.0, "best_epoch": 14.0, "val_accuracy": 0.9,
        "train_cpu_seconds": 36.0, "train_gpu_seconds": 0.0}))  # fmt: skip
    validate(load_params("validate", ValidateConfig, TINY_PARAMS), data_dir=data_dir,
             report_dir=root / "validation")  # fmt: skip
    evaluate(load_params("evaluate", EvaluateConfig, TINY_PARAMS), model_dir=candidate,
             shipped_dir=shipped, data_dir=data_dir, report_dir=root / "evaluation",
             reference_dir=root / "reference")  # fmt: skip
    return CardInputs(model_dir=candidate, shipped_dir=shipped, data_dir=data_dir,
                      validation_dir=root / "validation",
                      compression_report=shipped.parent / "compression.json",
                      evaluation_dir=root / "evaluation", reference_dir=root / "reference",
                      params_path=TINY_PARAMS)  # fmt: skip


def test_card_has_every_section_filled_from_the_reports(
    inputs: CardInputs, tmp_path: Path
) -> None:
    cfg = load_params("card", CardConfig, TINY_PARAMS)
    result = card(cfg, inputs, tmp_path / "reports/model_card.md")
    text = result.markdown_path.read_text()
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    assert headings == SECTIONS
    dataset = json.loads((inputs.data_dir / "dataset.json").read_text())
    metrics = json.loads((inputs.evaluation_dir / "metrics.json").read_text())
    compression = json.loads(inputs.compression_report.read_text())
    assert dataset["content_hash"] in text
    assert f"| Test accuracy | {metrics['test_accuracy']:.4f} |" in text
    assert f"**{compression['shipped']}**" in text  # the shipped row is marked
    for variant in compression["variants"]:
        assert (
            f"| {variant['variant']} |" in text or f"**{variant['variant']}**" in text
        )
    for name in dataset["classes"]:  # per-class rows
        assert re.search(
            rf"^\| {re.escape(name)} \| \d\.\d{{3}} \|", text, re.MULTILINE
        )
    assert cfg.intended_use in text and cfg.limitations[0] in text
    # Markdown links resolve from the card's folder; the HTML carries the pictures itself
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", text):
        assert (result.markdown_path.parent / link).is_file(), link
    page = result.html_path.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "<table>" in page and "<h2>Quantitative analyses</h2>" in page


def test_energy_is_compute_times_stated_power() -> None:
    cfg = CardConfig(cpu_watts_per_core=10.0, gpu_watts=360.0, grid_gco2_per_kwh=500.0)
    figures = energy(cfg, cpu_seconds=720.0, gpu_seconds=100.0)
    assert figures["wh"] == pytest.approx(2.0 + 10.0)
    assert figures["gco2"] == pytest.approx(12.0 / 1000 * 500)


def test_a_missing_input_is_named(inputs: CardInputs, tmp_path: Path) -> None:
    evaluation = shutil.copytree(inputs.evaluation_dir, tmp_path / "evaluation")
    (evaluation / "slices.json").unlink()
    broken = CardInputs(**{**inputs.__dict__, "evaluation_dir": evaluation})
    with pytest.raises(CardError, match=r"slices\.json: missing"):
        card(CardConfig(), broken, tmp_path / "card.md")
    assert not (tmp_path / "card.md").exists()


def test_a_missing_field_is_named(inputs: CardInputs, tmp_path: Path) -> None:
    evaluation = shutil.copytree(inputs.evaluation_dir, tmp_path / "evaluation")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    del metrics["ece"]
    (evaluation / "metrics.json").write_text(json.dumps(metrics))
    broken = CardInputs(**{**inputs.__dict__, "evaluation_dir": evaluation})
    with pytest.raises(CardError, match="ece"):
        card(CardConfig(), broken, tmp_path / "card.md")
