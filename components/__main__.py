"""The one CLI: `python -m components <stage>`; dvc.yaml and k8s jobs run exactly this."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from components.config import (
    DEFAULT_PARAMS,
    EvaluateConfig,
    IngestConfig,
    ParamsError,
    TrainConfig,
    ValidateConfig,
    load_params,
)

app = typer.Typer(help="Stages of the image MLOps pipeline.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
PARAMS = typer.Option(DEFAULT_PARAMS, "--params", help="params.yaml to read the section from.")


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "alembic", "urllib3", "botocore", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def ingest(out_dir: Path = typer.Option(Path("data/dataset")), params: Path = PARAMS) -> None:
    """Copy ingest.source into OUT_DIR with manifest.parquet and dataset.json."""
    from components.ingest import ingest as run

    result = run(load_params("ingest", IngestConfig, params), out_dir=out_dir)
    typer.echo(f"ingested {result.num_images} images, {len(result.classes)} classes, "
               f"content_hash {result.content_hash}")


@app.command()
def validate(data_dir: Path = typer.Option(Path("data/dataset")),
             report_dir: Path = typer.Option(Path("reports/validation")),
             params: Path = PARAMS) -> None:
    """Run the Great Expectations suites; exit 1 naming every failed expectation."""
    from components.validate import validate as run

    result = run(load_params("validate", ValidateConfig, params), data_dir=data_dir,
                 report_dir=report_dir)
    if not result.success:
        typer.echo("data validation FAILED:\n  " + "\n  ".join(result.failed), err=True)
        typer.echo(f"Data Docs: {report_dir / 'data_docs' / 'index.html'}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"data validation passed; Data Docs: {report_dir / 'data_docs' / 'index.html'}")


@app.command()
def train(data_dir: Path = typer.Option(Path("data/dataset")),
          out_dir: Path = typer.Option(Path("models/candidate")), params: Path = PARAMS) -> None:
    """Train under Ray Train; write the best-by-validation candidate to OUT_DIR."""
    from components.train import train as run

    result = run(load_params("train", TrainConfig, params), data_dir=data_dir, out_dir=out_dir,
                 params_path=params)
    typer.echo(f"val_accuracy {result.metrics['val_accuracy']:.4f}; "
               f"MLflow run {result.run_id}")


@app.command()
def evaluate(model_dir: Path = typer.Option(Path("models/candidate")),
             data_dir: Path = typer.Option(Path("data/dataset")),
             report_dir: Path = typer.Option(Path("reports/evaluation")),
             params: Path = PARAMS) -> None:
    """Score the model on the test split; write metrics and a confusion matrix."""
    from components.evaluate import evaluate as run

    result = run(load_params("evaluate", EvaluateConfig, params), model_dir=model_dir,
                 data_dir=data_dir, report_dir=report_dir)
    typer.echo(f"test_accuracy {result.metrics['test_accuracy']:.4f}")


def main() -> None:
    try:
        app()
    except (ParamsError, FileNotFoundError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
