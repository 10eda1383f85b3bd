"""The service's Prometheus metrics, summed over every uvicorn worker of the pod.

prometheus_client's multiprocess mode: each worker writes its values to memory-mapped files
in $PROMETHEUS_MULTIPROC_DIR, and /metrics merges them, so one scrape sees the whole pod.
The variable must be set before prometheus_client is imported (the CLI sets it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from components.serve import MULTIPROC_ENV

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
)
_CONFIDENCE_BUCKETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class ServeMetrics:
    requests: Counter
    latency: Histogram
    batch_size: Histogram
    predictions: Counter
    confidence: Histogram
    errors: Counter
    model_version: Gauge
    ready: Gauge
    model_loads: Counter
    log_records: Counter
    log_flush_failures: Counter
    log_dropped: Counter


def create_metrics() -> ServeMetrics:
    """The metrics, registered in a private registry (values live in the multiprocess
    files, so nothing depends on the process-global one)."""
    registry = CollectorRegistry()
    version = ("model_version",)
    return ServeMetrics(
        requests=Counter("mlops_serve_requests", "Requests answered",
                         ("endpoint", "status", *version), registry=registry),
        latency=Histogram("mlops_serve_request_seconds", "Time to answer a request",
                          ("endpoint", *version), buckets=_LATENCY_BUCKETS,
                          registry=registry),
        batch_size=Histogram("mlops_serve_batch_size", "Images per /predict request",
                             version, buckets=_BATCH_BUCKETS, registry=registry),
        predictions=Counter("mlops_serve_predictions", "Predicted labels",
                            (*version, "alias", "label"), registry=registry),
        confidence=Histogram("mlops_serve_confidence", "Top-class probability",
                             (*version, "alias"), buckets=_CONFIDENCE_BUCKETS,
                             registry=registry),
        errors=Counter("mlops_serve_errors", "Refused or failed requests by kind",
                       ("kind", *version), registry=registry),
        model_version=Gauge("mlops_serve_model_version", "Registry version served",
                            ("alias",), multiprocess_mode="livemostrecent",
                            registry=registry),
        ready=Gauge("mlops_serve_ready", "1 when every worker has a warm champion",
                    multiprocess_mode="livemin", registry=registry),
        model_loads=Counter("mlops_serve_model_loads", "Model loads by outcome",
                            ("outcome",), registry=registry),
        log_records=Counter("mlops_serve_log_records", "Prediction records written",
                            registry=registry),
        log_flush_failures=Counter("mlops_serve_log_flush_failures",
                                   "Prediction log writes that failed (retried)",
                                   registry=registry),
        log_dropped=Counter("mlops_serve_log_dropped",
                            "Prediction records dropped (log unwritable too long)",
                            registry=registry),
    )  # fmt: skip


def exposition() -> tuple[bytes, str]:
    """Every worker's values merged, in the Prometheus text format."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST


def every_worker_ready() -> bool:
    """The pod-wide mlops_serve_ready (the minimum over live workers) is 1: a pod is ready
    only once every worker that takes connections has a warm champion."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    value = registry.get_sample_value("mlops_serve_ready")
    return value == 1


def mark_worker_exited() -> None:
    """Drop this worker's live gauges from the merge (its counters stay counted)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
