"""monitor: is the current batch of images still like the data the model was evaluated on?

Features of the batch (drift_features) against the reference evaluate wrote; the decision by
drift_rule.judge (Bonferroni over per-feature two-sample tests, so its false-alarm rate is at
most alpha); Evidently's report and workspace run for the same tests; Prometheus metrics;
on drift a webhook alert. The Prefect event that starts retraining is emitted by the flow
(flows/monitoring.py): components never import the orchestrator.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
from evidently.core.report import Snapshot

from components.alerts import AlertError, drift_metrics, post_alert, slack_payload
from components.config import MonitorConfig
from components.data import read_split
from components.drift_features import (
    FEATURES_FILE,
    PROJECTION_FILE,
    REFERENCE_JSON,
    Projection,
    features,
    load_pixels,
    model_scorer,
)
from components.drift_report import drift_report, drifted_count, publish
from components.drift_rule import Judgement, judge, test_of
from components.io import atomic_dir, read_json, write_json
from components.prediction_log import (
    fetch_images,
    is_prediction_log,
    read_predictions,
    served_over_time,
)
from components.sources import download_unlabelled

log = logging.getLogger(__name__)

DRIFT_JSON = "drift.json"
DRIFT_HTML = "drift.html"
EVIDENTLY_JSON = "evidently.json"
METRICS_PROM = "metrics.prom"
CURRENT_FEATURES = "current_features.parquet"

__all__ = ["AlertError", "DriftResult", "MonitorInputError", "monitor"]


class MonitorInputError(ValueError):
    """The batch cannot be judged (too small, missing, or no reference); never "no drift"."""


@dataclass(frozen=True)
class DriftResult:
    report_dir: Path
    drift_detected: bool
    drift_share: float
    drifted: list[str]
    images: int
    rule: str
    alerted: bool
    seconds: dict[str, float]


def monitor(
    cfg: MonitorConfig,
    *,
    reference_dir: Path,
    model_dir: Path,
    report_dir: Path,
    data_dir: Path | None = None,
    current: str | None = None,
) -> DriftResult:
    """Judge the batch named by `current` (default cfg.current) against `reference_dir` with
    the model in `model_dir` (the shipped variant: model.onnx and spec.json); write
    drift.json, the Evidently report and metrics.prom to `report_dir`."""
    source = current or cfg.current
    reference, projection, described = _reference(reference_dir)
    scorer, spec, digest = model_scorer(model_dir)
    if described.get("model_sha256") != digest:
        raise MonitorInputError(
            f"{reference_dir}: written for another model than {model_dir} "
            "(re-run evaluate, which writes the reference for the shipped model)"
        )
    clock = {"start": time.perf_counter()}
    with tempfile.TemporaryDirectory(prefix="monitor-") as scratch:
        paths, served = _current_images(source, data_dir, Path(scratch), cfg)
        if len(paths) < cfg.min_images:
            raise MonitorInputError(
                f"monitor.current {source!r}: {len(paths)} images, fewer than "
                f"monitor.min_images = {cfg.min_images}; too small to judge"
            )
        pixels = load_pixels(paths, spec)  # an unreadable file raises, naming it
    batch = features(scorer, spec, pixels, projection, cfg.batch_size)
    clock["features"] = time.perf_counter()
    verdict = judge(reference, batch, cfg.alpha)
    clock["judge"] = time.perf_counter()
    snapshot = drift_report(reference, batch, verdict.corrected_alpha)
    clock["report"] = time.perf_counter()
    seconds = {
        "features": clock["features"] - clock["start"],
        "judge": clock["judge"] - clock["features"],
        "evidently_report": clock["report"] - clock["judge"],
    }
    labels = {
        "model": cfg.model_name,
        "dataset": str(described.get("dataset_content_hash", ""))[:12],
    }
    summary = _summary(verdict, source, len(batch), snapshot, seconds)
    if served is not None:
        summary["served"] = served
    with atomic_dir(report_dir) as staging:
        write_json(staging / DRIFT_JSON, summary)
        snapshot.save_html(str(staging / DRIFT_HTML))
        snapshot.save_json(str(staging / EVIDENTLY_JSON))
        batch.to_parquet(staging / CURRENT_FEATURES, index=False)
        drift_metrics(
            staging / METRICS_PROM,
            labels=labels,
            detected=verdict.drift_detected,
            share=verdict.drift_share,
            p_values=verdict.p_values,
            drifted=verdict.drifted,
            images=len(batch),
            pushgateway=os.environ.get(cfg.pushgateway_env) or None,
        )
    publish(snapshot, cfg.workspace, cfg.project, list(verdict.p_values))
    alerted = False
    webhook = os.environ.get(cfg.webhook_env)
    if verdict.drift_detected and webhook:
        post_alert(webhook, slack_payload(cfg.model_name, verdict.drift_share,
                                          verdict.drifted, len(batch), verdict.rule))  # fmt: skip
        alerted = True
        log.info("drift alert sent to $%s", cfg.webhook_env)
    elif verdict.drift_detected:
        log.warning("drift detected; no alert sent ($%s is not set)", cfg.webhook_env)
    return DriftResult(
        report_dir=report_dir,
        drift_detected=verdict.drift_detected,
        drift_share=verdict.drift_share,
        drifted=verdict.drifted,
        images=len(batch),
        rule=verdict.rule,
        alerted=alerted,
        seconds=seconds,
    )


def _reference(
    reference_dir: Path,
) -> tuple[pd.DataFrame, Projection, dict[str, object]]:
    for name in (FEATURES_FILE, PROJECTION_FILE, REFERENCE_JSON):
        if not (reference_dir / name).is_file():
            raise MonitorInputError(
                f"{reference_dir / name}: missing; evaluate writes the reference"
            )
    return (
        pd.read_parquet(reference_dir / FEATURES_FILE),
        Projection.load(reference_dir / PROJECTION_FILE),
        read_json(reference_dir / REFERENCE_JSON),
    )


def _current_images(
    source: str, data_dir: Path | None, scratch: Path, cfg: MonitorConfig
) -> tuple[list[Path], dict[str, object] | None]:
    """split:<name> of the ingested dataset, the service's prediction log (its last
    cfg.window_hours), s3://bucket/prefix, or a folder (any depth). With a log, also what
    the service answered over time."""
    if source.startswith("split:"):
        if data_dir is None:
            raise MonitorInputError(f"monitor.current {source!r} needs --data-dir")
        rows = read_split(data_dir, source.removeprefix("split:"))
        return [data_dir / path for path in rows["path"]], None
    if not source.startswith("s3://") and not Path(source).is_dir():
        raise MonitorInputError(
            f"monitor.current {source!r}: not a folder, split:<name> or s3:// prefix"
        )
    if is_prediction_log(source):
        window = timedelta(hours=cfg.window_hours)
        records = read_predictions(source, window=window)
        return fetch_images(source, records, scratch), served_over_time(records, window)
    if source.startswith("s3://"):
        return download_unlabelled(source, scratch), None
    return sorted(
        path
        for path in Path(source).rglob("*")
        if path.is_file() and not path.name.startswith(".")
    ), None


def _summary(
    verdict: Judgement,
    source: str,
    images: int,
    snapshot: Snapshot,
    seconds: dict[str, float],
) -> dict[str, object]:
    evidently = drifted_count(snapshot)
    return {
        "drift_detected": verdict.drift_detected,
        "drift_share": verdict.drift_share,
        "drifted": verdict.drifted,
        "rule": verdict.rule,
        "alpha_per_feature": verdict.corrected_alpha,
        "scores": {
            name: {"p_value": p, "method": test_of(name)}
            for name, p in verdict.p_values.items()
        },
        "evidently_drifted_count": evidently,
        "current": source,
        "images": images,
        "seconds": seconds,
    }
