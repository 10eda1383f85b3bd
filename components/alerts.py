"""Where a drift verdict goes besides the report: Prometheus metrics (a text file beside the
report, and a Pushgateway when one is configured: the monitor is a batch job, which Prometheus
cannot scrape) and a Slack-style webhook alert. URLs come from the environment, so they
(and any token in them) never reach params, logs or reports."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    push_to_gateway,
    write_to_textfile,
)

JOB = "drift-monitor"


class AlertError(RuntimeError):
    """The alert could not be delivered (the reports are written; the run must fail)."""


def drift_metrics(
    path: Path,
    *,
    labels: dict[str, str],
    detected: bool,
    share: float,
    p_values: dict[str, float],
    drifted: list[str],
    images: int,
    pushgateway: str | None,
) -> None:
    """Write the run's metrics in Prometheus text format to `path`, and push them to the
    Pushgateway at `pushgateway` (host:port or URL) when given."""
    registry = CollectorRegistry()
    names = list(labels)

    def gauge(name: str, text: str, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, text, [*names, *extra], registry=registry)

    gauge("mlops_drift_detected", "1 when the last batch drifted").labels(**labels).set(
        int(detected)
    )
    gauge("mlops_drift_share", "Share of features flagged").labels(**labels).set(share)
    gauge("mlops_drift_batch_images", "Images in the batch judged").labels(
        **labels
    ).set(images)
    gauge("mlops_drift_last_run_timestamp_seconds", "Unix time of the run").labels(
        **labels
    ).set(time.time())
    score = gauge(
        "mlops_drift_feature_score", "Two-sample test p-value", ("feature", "method")
    )
    flagged = gauge(
        "mlops_drift_feature_drifted", "1 when the feature drifted", ("feature",)
    )
    for feature, p_value in p_values.items():
        score.labels(**labels, feature=feature, method="p_value").set(p_value)
        flagged.labels(**labels, feature=feature).set(int(feature in drifted))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    if pushgateway:
        push_to_gateway(
            pushgateway, job=JOB, registry=registry, grouping_key=labels, timeout=10
        )


def post_alert(url: str, payload: dict[str, Any], timeout: float = 10) -> None:
    """POST the JSON payload; any failure raises AlertError (without the URL, a secret)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except OSError as error:  # URLError, HTTPError, timeouts
        raise AlertError(f"drift alert not delivered: {type(error).__name__}") from None
    if not 200 <= status < 300:
        raise AlertError(f"drift alert not delivered: HTTP {status}")


def slack_payload(
    model: str, share: float, drifted: list[str], images: int, rule: str
) -> dict[str, Any]:
    """A Slack incoming-webhook message (text plus blocks); other fields carry the data for
    receivers that are not Slack."""
    shown = ", ".join(drifted[:8]) + (" ..." if len(drifted) > 8 else "")
    text = (
        f":warning: Drift detected for {model}: {len(drifted)} features drifted "
        f"({share:.0%}) on {images} images: {shown}"
    )
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": rule}]},
        ],
        "model": model,
        "drift_share": share,
        "drifted": drifted,
        "images": images,
    }
