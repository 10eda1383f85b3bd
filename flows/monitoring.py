"""The monitoring pipeline as a Prefect flow: judge a batch for drift; on drift, emit the
Prefect event that the training deployment's trigger (prefect.yaml) turns into a retraining
run: drift -> retrain -> gate -> promote.

`python -m flows.monitoring` runs it on a temporary local Prefect server unless
PREFECT_API_URL names one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.events import emit_event

from components.config import MonitorConfig, load_params
from components.monitor import monitor

DRIFT_EVENT = "mlops.drift.detected"

# Reading the batch (S3) and delivering the alert are I/O: retry them; the verdict is pure.
monitor_task = task(name="monitor", retries=2, retry_delay_seconds=[5, 30])(monitor)


def drift_resource(model_name: str) -> dict[str, str]:
    return {"prefect.resource.id": f"mlops.monitor.{model_name}"}


@flow(name="monitoring")
def monitoring(
    params_path: Path = Path("params.yaml"),
    root: Path = Path("."),
    current: str | None = None,
) -> dict[str, Any]:
    """Judge `current` (default params.monitor.current) against reports/reference; returns
    the verdict. Drift is an outcome (the run completes), announced by the event."""
    cfg = load_params("monitor", MonitorConfig, params_path)
    result = monitor_task(
        cfg,
        reference_dir=root / "reports/reference",
        model_dir=root / "models/compressed",
        data_dir=root / "data/dataset",
        report_dir=root / "reports/drift",
        current=current,
    )
    verdict = {
        "drift_detected": result.drift_detected,
        "drift_share": result.drift_share,
        "drifted": result.drifted,
        "images": result.images,
        "alerted": result.alerted,
    }
    if result.drift_detected:
        emit_event(
            event=DRIFT_EVENT,
            resource=drift_resource(cfg.model_name),
            payload={**verdict, "current": current or cfg.current},
        )
    return verdict


if __name__ == "__main__":
    monitoring()
