"""The one CLI: `python -m components <stage>`; dvc.yaml and k8s jobs run exactly this."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from components.config import (
    DEFAULT_PARAMS,
    CardConfig,
    CompressConfig,
    EvaluateConfig,
    IngestConfig,
    MonitorConfig,
    ParamsError,
    PromoteConfig,
    ServeConfig,
    TrainConfig,
    TuneConfig,
    ValidateConfig,
    load_params,
    load_task_name,
)

app = typer.Typer(
    help="Stages of the image MLOps pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Params = Annotated[Path, typer.Option("--params", help="params.yaml to read from.")]
DataDir = Annotated[Path, typer.Option(help="The dataset written by ingest.")]
ModelDir = Annotated[Path, typer.Option(help="The candidate written by train.")]
OutDir = Annotated[Path, typer.Option(help="Folder to (re)write atomically.")]
ShippedDir = Annotated[Path, typer.Option(help="The shipped variant compress wrote.")]
EvaluationDir = Annotated[Path, typer.Option(help="evaluate's reports.")]
ReferenceDir = Annotated[Path, typer.Option(help="The drift reference evaluate wrote.")]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("great_expectations", "alembic", "urllib3", "botocore", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def ingest(
    out_dir: OutDir = Path("data/dataset"), params: Params = DEFAULT_PARAMS
) -> None:
    """Copy ingest.source into OUT_DIR (in the layout of params' `task`) with
    manifest.parquet and dataset.json."""
    from components.ingest import ingest as run

    result = run(load_params("ingest", IngestConfig, params), out_dir=out_dir,
                 task=load_task_name(params))  # fmt: skip
    typer.echo(
        f"ingested {result.num_images} images, {len(result.classes)} classes, "
        f"content_hash {result.content_hash}"
    )


@app.command()
def validate(
    data_dir: DataDir = Path("data/dataset"),
    report_dir: OutDir = Path("reports/validation"),
    params: Params = DEFAULT_PARAMS,
) -> None:
    """Run the Great Expectations suites; exit 1 naming every failed expectation."""
    from components.validate import validate as run

    cfg = load_params("validate", ValidateConfig, params)
    result = run(cfg, data_dir=data_dir, report_dir=report_dir)
    docs = report_dir / "data_docs" / "index.html"
    if not result.success:
        typer.echo("data validation FAILED:\n  " + "\n  ".join(result.failed), err=True)
        typer.echo(f"Data Docs: {docs}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"data validation passed; Data Docs: {docs}")


@app.command()
def train(
    data_dir: DataDir = Path("data/dataset"),
    out_dir: OutDir = Path("models/candidate"),
    params: Params = DEFAULT_PARAMS,
) -> None:
    """Train under Ray Train (a Ray Tune search when tune.num_samples > 1); write the
    best-by-validation candidate to OUT_DIR."""
    from components.tasks import dataset_task
    from components.tune import tune as run

    target = dataset_task(data_dir).target_metric
    result = run(load_params("tune", TuneConfig, params),
                 load_params("train", TrainConfig, params),
                 data_dir=data_dir, out_dir=out_dir, params_path=params)  # fmt: skip
    typer.echo(f"{target} {result.metrics[target]:.4f}; MLflow run {result.run_id}")


@app.command()
def compress(
    model_dir: ModelDir = Path("models/candidate"),
    data_dir: DataDir = Path("data/dataset"),
    out_dir: OutDir = Path("models/compressed"),
    report: Annotated[
        Path, typer.Option(help="The variant table (JSON; PNG beside it).")
    ] = Path("reports/compression.json"),
    params: Params = DEFAULT_PARAMS,
) -> None:
    """Prune and quantize the candidate, measure every variant, ship the smallest within
    params.compress.budget to OUT_DIR; exit 1 (the table printed) when none fits."""
    from components.compress import CompressionBudgetError, format_table
    from components.compress import compress as run

    cfg = load_params("compress", CompressConfig, params)
    try:
        result = run(cfg, model_dir=model_dir, data_dir=data_dir, out_dir=out_dir,
                     report_path=report)  # fmt: skip
    except CompressionBudgetError as error:
        typer.echo(f"compression FAILED: {error}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(format_table(result.table))
    typer.echo(f"shipped {result.shipped} -> {out_dir}")


@app.command()
def evaluate(
    model_dir: ModelDir = Path("models/candidate"),
    shipped_dir: ShippedDir = Path("models/compressed"),
    data_dir: DataDir = Path("data/dataset"),
    report_dir: OutDir = Path("reports/evaluation"),
    reference_dir: ReferenceDir = Path("reports/reference"),
    params: Params = DEFAULT_PARAMS,
) -> None:
    """Score the shipped variant and the fp32 candidate on the test split: per class and
    slice, calibration, latency, behavioural checks, per-item predictions; write the drift
    reference."""
    from components.evaluate import evaluate as run

    cfg = load_params("evaluate", EvaluateConfig, params)
    result = run(cfg, model_dir=model_dir, shipped_dir=shipped_dir, data_dir=data_dir,
                 report_dir=report_dir, reference_dir=reference_dir)  # fmt: skip
    from components.tasks import get_task

    metrics = result.metrics
    headline = get_task(str(metrics["task"])).headline
    typer.echo(
        f"{metrics['variant']}: {headline} {metrics[headline]:.4f} "
        f"(fp32 {metrics['fp32_' + headline]:.4f}), ECE {metrics['ece']:.4f}"
    )


@app.command()
def card(
    model_dir: ModelDir = Path("models/candidate"),
    shipped_dir: ShippedDir = Path("models/compressed"),
    data_dir: DataDir = Path("data/dataset"),
    validation_dir: Annotated[Path, typer.Option(help="validate's reports.")] = Path(
        "reports/validation"
    ),
    compression_report: Annotated[
        Path, typer.Option(help="compress's report (its .png beside it).")
    ] = Path("reports/compression.json"),
    evaluation_dir: EvaluationDir = Path("reports/evaluation"),
    reference_dir: ReferenceDir = Path("reports/reference"),
    out: Annotated[
        Path, typer.Option(help="The card (Markdown; .html beside it).")
    ] = Path("reports/model_card.md"),
    params: Params = DEFAULT_PARAMS,
) -> None:
    """The model card, from lineage and every earlier stage's reports."""
    from components.card import CardInputs
    from components.card import card as run

    cfg = load_params("card", CardConfig, params)
    inputs = CardInputs(model_dir=model_dir, shipped_dir=shipped_dir, data_dir=data_dir,
                        validation_dir=validation_dir, compression_report=compression_report,
                        evaluation_dir=evaluation_dir, reference_dir=reference_dir,
                        params_path=params)  # fmt: skip
    result = run(cfg, inputs, out)
    typer.echo(f"model card: {result.markdown_path}, {result.html_path}")


@app.command()
def monitor(
    reference_dir: ReferenceDir = Path("reports/reference"),
    model_dir: ShippedDir = Path("models/compressed"),
    data_dir: DataDir = Path("data/dataset"),
    report_dir: OutDir = Path("reports/drift"),
    current: Annotated[
        str | None,
        typer.Option(help="Overrides monitor.current (folder, s3://, split:)."),
    ] = None,
    fail_on_drift: Annotated[
        bool, typer.Option(help="Exit 1 when the batch drifted (a CI or cron gate).")
    ] = False,
    params: Params = DEFAULT_PARAMS,
) -> None:
    """Judge a batch of images for drift against the reference; alert on drift. Exit 2 when
    the batch cannot be judged, 4 when the alert could not be delivered."""
    from components.images import ImageReadError
    from components.monitor import AlertError, MonitorInputError
    from components.monitor import monitor as run

    cfg = load_params("monitor", MonitorConfig, params)
    try:
        result = run(cfg, reference_dir=reference_dir, model_dir=model_dir,
                     report_dir=report_dir, data_dir=data_dir, current=current)  # fmt: skip
    except (MonitorInputError, ImageReadError) as error:
        typer.echo(f"monitor: cannot judge the batch: {error}", err=True)
        raise typer.Exit(code=2) from None
    except AlertError as error:
        typer.echo(f"monitor: {error} (reports are written)", err=True)
        raise typer.Exit(code=4) from None
    verdict = "DRIFT" if result.drift_detected else "no drift"
    typer.echo(f"{verdict} on {result.images} images: share {result.drift_share:.3f}, "
               f"drifted {result.drifted}; {result.rule}")  # fmt: skip
    if result.drift_detected and fail_on_drift:
        raise typer.Exit(code=1)


@app.command()
def promote(
    evaluation_dir: EvaluationDir = Path("reports/evaluation"),
    shipped_dir: ShippedDir = Path("models/compressed"),
    report: Annotated[Path, typer.Option(help="Where the decision is written.")] = Path(
        "reports/promotion.json"
    ),
    dry_run: Annotated[
        bool, typer.Option(help="Decide and report; register and move nothing (PRs).")
    ] = False,
    params: Params = DEFAULT_PARAMS,
) -> None:
    """The promotion gate: register the version, move `champion` if it passes; exit 1 on
    rejection, 3 when the registry fails (nothing promoted)."""
    from components.registry import RegistryError
    from components.registry import promote as run

    cfg = load_params("promote", PromoteConfig, params)
    try:
        result = run(cfg, evaluation_dir=evaluation_dir, shipped_dir=shipped_dir,
                     report_path=report, dry_run=dry_run)  # fmt: skip
    except RegistryError as error:
        typer.echo(f"promotion FAILED CLOSED: {error}", err=True)
        raise typer.Exit(code=3) from None
    typer.echo(f"{result.decision}: version {result.candidate_version} "
               f"(champion {result.champion_before} -> {result.champion_after})")  # fmt: skip
    for reason in result.reasons:
        typer.echo(f"  - {reason}")
    if not result.decision.endswith("promoted"):  # "rejected", "would be rejected"
        raise typer.Exit(code=1)


@app.command()
def rollback(
    to_version: Annotated[
        str | None, typer.Option(help="Version to restore (default: `previous`).")
    ] = None,
    params: Params = DEFAULT_PARAMS,
) -> None:
    """Move `champion` back to `previous` (or TO_VERSION), recorded in the ledger."""
    from components.registry import RegistryError
    from components.registry import rollback as run

    try:
        result = run(
            load_params("promote", PromoteConfig, params), to_version=to_version
        )
    except RegistryError as error:
        typer.echo(f"rollback FAILED: {error}", err=True)
        raise typer.Exit(code=3) from None
    typer.echo(result.reasons[0])


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    log: Annotated[
        str | None,
        typer.Option(envvar="SERVE_LOG", help="Overrides serve.log (folder or s3://)."),
    ] = None,
    params: Params = DEFAULT_PARAMS,
) -> None:
    """Serve the registry's champion of promote.model_name over HTTP: POST /predict,
    GET /health /ready /model /metrics, OpenAPI at /docs. Runs until interrupted."""
    from components.registry_aliases import tracking_uri
    from components.serve import serve as run
    from components.serve.inputs import ImageLimits

    checks = load_params("validate", ValidateConfig, params)
    limits = ImageLimits(max_pixels=checks.max_pixels, min_side=checks.min_side,
                         max_side=checks.max_side)  # fmt: skip
    cfg = load_params("serve", ServeConfig, params)
    run(cfg.model_copy(update={"log": log}) if log else cfg,
        model_name=load_params("promote", PromoteConfig, params).model_name,
        tracking_uri=tracking_uri(), limits=limits, host=host, port=port)  # fmt: skip


def main() -> None:
    try:
        app()
    except (ParamsError, FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
