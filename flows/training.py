"""The training pipeline as a Prefect flow: the same component functions, in dvc.yaml's order.

`python -m flows.training` runs it on a temporary local Prefect server unless PREFECT_API_URL
names one. Retries go on I/O stages only (ingest reads remote storage); training gets none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task

from components.card import CardInputs, card
from components.compress import compress
from components.config import (
    CardConfig,
    CompressConfig,
    EvaluateConfig,
    IngestConfig,
    PromoteConfig,
    TrainConfig,
    TuneConfig,
    ValidateConfig,
    load_params,
    load_task_name,
)
from components.evaluate import evaluate
from components.ingest import ingest
from components.registry import promote
from components.tune import tune
from components.validate import DataValidationError, validate

ingest_task = task(name="ingest", retries=3, retry_delay_seconds=[2, 5, 15])(ingest)
validate_task = task(name="validate")(validate)
train_task = task(name="train")(tune)  # a plain run when tune.num_samples is 1
compress_task = task(name="compress")(compress)
evaluate_task = task(name="evaluate")(evaluate)
card_task = task(name="card")(card)
promote_task = task(name="promote")(promote)


@flow(name="training")
def training(
    params_path: Path = Path("params.yaml"), root: Path = Path(".")
) -> dict[str, Any]:
    """ingest -> validate (gate) -> train -> compress (budget gate) -> evaluate -> card ->
    promote (gate); returns the test metrics with the promotion decision. A rejection is an
    outcome, not a failure; a registry error fails the run (nothing promoted)."""
    data_dir = root / "data/dataset"
    dataset = ingest_task(
        load_params("ingest", IngestConfig, params_path),
        out_dir=data_dir,
        task=load_task_name(params_path),
    )
    report = validate_task(
        load_params("validate", ValidateConfig, params_path),
        data_dir=dataset.out_dir,
        report_dir=root / "reports/validation",
    )
    if not report.success:
        raise DataValidationError(report.failed)
    candidate = train_task(
        load_params("tune", TuneConfig, params_path),
        load_params("train", TrainConfig, params_path),
        data_dir=dataset.out_dir,
        out_dir=root / "models/candidate",
        params_path=params_path,
    )
    compressed = compress_task(
        load_params("compress", CompressConfig, params_path),
        model_dir=candidate.model_dir,
        data_dir=dataset.out_dir,
        out_dir=root / "models/compressed",
        report_path=root / "reports/compression.json",
    )
    evaluation = evaluate_task(
        load_params("evaluate", EvaluateConfig, params_path),
        model_dir=candidate.model_dir,
        shipped_dir=compressed.model_dir,
        data_dir=dataset.out_dir,
        report_dir=root / "reports/evaluation",
        reference_dir=root / "reports/reference",
    )
    card_task(
        load_params("card", CardConfig, params_path),
        CardInputs(model_dir=candidate.model_dir, shipped_dir=compressed.model_dir,
                   data_dir=dataset.out_dir, validation_dir=root / "reports/validation",
                   compression_report=root / "reports/compression.json",
                   evaluation_dir=evaluation.report_dir,
                   reference_dir=root / "reports/reference", params_path=params_path),
        out_path=root / "reports/model_card.md",
    )  # fmt: skip
    promotion = promote_task(
        load_params("promote", PromoteConfig, params_path),
        evaluation_dir=evaluation.report_dir,
        shipped_dir=compressed.model_dir,
        report_path=root / "reports/promotion.json",
    )
    return {**evaluation.metrics, "promotion": promotion.decision}


if __name__ == "__main__":
    training()
