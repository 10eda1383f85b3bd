"""card: the model card (reports/model_card.md and .html), generated from lineage and reports.

The wording lives in templates/model_card.md.j2, with each task's own sections in
templates/model_card_<task>.md.j2; every figure comes from a file an earlier
stage wrote, so the card cannot drift from what was measured. A file that is missing or lacks
a field stops the stage with the file and field named (jinja2's StrictUndefined): a card with
blanks is worse than none. The HTML is self-contained (pictures inlined), so it can travel
with the registered model.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import markdown

from components.config import CardConfig, read_params
from components.drift_features import REFERENCE_JSON
from components.ingest import DATASET_JSON
from components.io import read_json
from components.model import load_model
from components.tasks import get_task
from components.tracking import log_results, training_run

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md.j2"


class CardError(ValueError):
    """An input the card needs is missing or incomplete; the message names it."""


@dataclass(frozen=True)
class CardInputs:
    """Where the card reads from: the outputs of every earlier stage."""

    model_dir: Path
    shipped_dir: Path
    data_dir: Path
    validation_dir: Path
    compression_report: Path
    evaluation_dir: Path
    reference_dir: Path
    params_path: Path


@dataclass(frozen=True)
class CardResult:
    markdown_path: Path
    html_path: Path


def card(cfg: CardConfig, inputs: CardInputs, out_path: Path) -> CardResult:
    """Render the card to `out_path` (Markdown) and beside it as .html; attach both to the
    training run in MLflow when the model has one."""
    context = _context(cfg, inputs)
    task = get_task(context["spec"].task)
    pictures = {
        "reliability": inputs.evaluation_dir / "reliability.png",
        "confusion": inputs.evaluation_dir / "confusion_matrix.png",
        "compression": inputs.compression_report.with_suffix(".png"),
        **{
            name.removesuffix(".png"): inputs.evaluation_dir / name
            for name in task.report_pictures
        },
    }
    for name, path in pictures.items():
        if not path.is_file():
            raise CardError(f"{path}: the {name} picture is missing")
    base = out_path.parent.resolve()
    template = f"model_card_{task.name}.md.j2"
    text = _render(
        template,
        context,
        {k: os.path.relpath(p.resolve(), base) for k, p in pictures.items()},
    )
    inlined = _render(template, context, {k: _data_uri(p) for k, p in pictures.items()})
    html_path = out_path.with_suffix(".html")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    html_path.write_text(_html_page(cfg.title, inlined))
    run_id = training_run(inputs.model_dir)
    if run_id:
        log_results(run_id, {}, [out_path, html_path], artifact_path="card")
    return CardResult(markdown_path=out_path, html_path=html_path)


def energy(
    cfg: CardConfig, cpu_seconds: float, gpu_seconds: float
) -> dict[str, float | str]:
    """Training energy from measured compute and stated power: CPU seconds times watts per
    busy core, plus GPU seconds times watts per GPU; and its emissions."""
    wh = (cpu_seconds * cfg.cpu_watts_per_core + gpu_seconds * cfg.gpu_watts) / 3600
    return {
        "cpu_seconds": cpu_seconds,
        "gpu_seconds": gpu_seconds,
        "wh": wh,
        "gco2": wh / 1000 * cfg.grid_gco2_per_kwh,
        "text": (
            "Estimated, not metered: the CPU seconds of every training worker's process and "
            "the GPU seconds each worker held a GPU, both measured by train over every "
            f"epoch it ran, times the power stated in params.card ({cfg.cpu_watts_per_core}"
            f" W per busy core, {cfg.gpu_watts} W per GPU). Other trials of a search, "
            "compression and evaluation are not included."
        ),
    }


def _context(cfg: CardConfig, inputs: CardInputs) -> dict[str, Any]:
    model, spec = load_model(inputs.model_dir)
    train_metrics = _read(inputs.model_dir / "metrics.json")
    compression = _read(inputs.compression_report)
    shipped = next(
        (
            row
            for row in compression["variants"]
            if row["variant"] == compression["shipped"]
        ),
        None,
    )
    if shipped is None:
        raise CardError(
            f"{inputs.compression_report}: shipped variant {compression['shipped']!r} "
            "is not in its table"
        )
    reference = _read(inputs.reference_dir / REFERENCE_JSON)
    task = get_task(spec.task)
    return {
        "card": cfg,
        "params": read_params(inputs.params_path),
        "spec": spec,
        "target_metric": task.target_metric,
        "item_metric": task.metric,
        "parameters": sum(p.numel() for p in model.parameters()),
        "lineage": _read(inputs.model_dir / "lineage.json"),
        "train_metrics": train_metrics,
        "energy": energy(
            cfg,
            float(train_metrics.get("train_cpu_seconds", 0.0)),
            float(train_metrics.get("train_gpu_seconds", 0.0)),
        ),
        "shipped": shipped,
        "dataset": _read(inputs.data_dir / DATASET_JSON),
        "validation": _read(inputs.validation_dir / "summary.json"),
        "compression": compression,
        "evaluation": _read(inputs.evaluation_dir / "metrics.json"),
        "per_class": _read(inputs.evaluation_dir / "per_class.json"),
        "slices": _read(inputs.evaluation_dir / "slices.json"),
        "reference": {**reference, "path": str(inputs.reference_dir)},
    }


def _read(path: Path) -> Any:
    if not path.is_file():
        raise CardError(f"{path}: missing (run the stage that writes it first)")
    return read_json(path)


def _render(template: str, context: dict[str, Any], pictures: dict[str, str]) -> str:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown out; the HTML is made by the Markdown library
    )
    try:
        return environment.get_template(template).render(**context, pictures=pictures)
    except jinja2.UndefinedError as error:
        raise CardError(f"{template}: an input lacks a field ({error})") from None


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html_page(title: str, text: str) -> str:
    body = markdown.markdown(text, extensions=["tables", "sane_lists"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model card: {html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; color: #1b1f24; }}
table {{ border-collapse: collapse; margin: 0.8rem 0; }}
th, td {{ border: 1px solid #d0d7de; padding: 0.25rem 0.6rem; text-align: left; }}
th {{ background: #f6f8fa; }} code {{ background: #f6f8fa; padding: 0 0.2rem; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""
