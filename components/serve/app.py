"""The FastAPI app of one uvicorn worker: routes, the model follower and the prediction log.

Inference runs in the request's own coroutine, not in a thread pool: a digits request takes
well under a millisecond of CPU, less than a thread hand-off, and the service gets its
parallelism from one worker process per core (serve.workers), each with its own event loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from components.config import ServeConfig
from components.prediction_log import (
    LoggedPrediction,
    PredictionLogWriter,
    image_key,
    open_store,
)
from components.serve.inputs import (
    BadInput,
    ImageLimits,
    Upload,
    read_uploads,
    to_batch,
    upload_size,
)
from components.serve.metrics import (
    ServeMetrics,
    create_metrics,
    every_worker_ready,
    exposition,
    mark_worker_exited,
)
from components.serve.models import (
    LoadedModel,
    NotReadyError,
    RegistryFollower,
    Routing,
    request_key,
)
from components.tasks import get_task

SETTINGS_ENV = "COMPONENTS_SERVE_SETTINGS"  # how the CLI hands settings to each worker
NO_MODEL = "none"  # the model_version label while nothing is served


@dataclass(frozen=True)
class ServeSettings:
    """Everything a worker needs, resolved once by the CLI: params' serve section, and what
    comes from other sections and the environment."""

    serve: ServeConfig
    model_name: str
    tracking_uri: str
    limits: ImageLimits
    ort_threads: int

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "serve": self.serve.model_dump()})

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        values = json.loads(text)
        return cls(**{**values, "serve": ServeConfig(**values["serve"]),
                      "limits": ImageLimits(**values["limits"])})  # fmt: skip


def app_from_environment() -> FastAPI:
    """uvicorn's factory in each worker process."""
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))


def create_app(settings: ServeSettings) -> FastAPI:
    metrics = create_metrics()
    follower = RegistryFollower(
        model_name=settings.model_name, tracking_uri=settings.tracking_uri,
        reload_seconds=settings.serve.reload_seconds, threads=settings.ort_threads,
        canary_fraction=settings.serve.canary_fraction,
        on_loaded=lambda model: metrics.model_loads.labels("loaded").inc(),
        on_failed=lambda error: metrics.model_loads.labels("failed").inc(),
        on_routing=lambda routing: _publish_routing(metrics, routing),
    )  # fmt: skip
    writer = _log_writer(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.ready.set(0)
        # uvicorn lets a worker accept connections only after this startup: reading the
        # registry here means no worker takes a request before it has the champion.
        await run_in_threadpool(follower.refresh)
        follower.start()
        if writer:
            writer.start()
        yield
        follower.stop()
        if writer:
            writer.close()  # drain: nothing answered before shutdown is lost
        mark_worker_exited()

    app = FastAPI(title="Image model service", lifespan=lifespan,
                  description="The registry's champion, served with ONNX Runtime.")  # fmt: skip
    _add_routes(app, settings, follower, writer, metrics)
    return app


def _add_routes(app: FastAPI, settings: ServeSettings, follower: RegistryFollower,
                writer: PredictionLogWriter | None, metrics: ServeMetrics) -> None:  # fmt: skip
    def served() -> str:
        champion = follower.routing.champion
        return champion.version if champion else NO_MODEL

    def answer(endpoint: str, status: int, body: Any, version: str,
               started: float) -> Response:  # fmt: skip
        metrics.requests.labels(endpoint, str(status), version).inc()
        metrics.latency.labels(endpoint, version).observe(time.perf_counter() - started)
        return JSONResponse(body, status)

    @app.post("/predict", openapi_extra=_PREDICT_BODY)
    async def predict(request: Request) -> Response:
        """Classify one or more images (multipart field `files`, or JSON base64)."""
        started = time.perf_counter()
        try:
            uploads = await read_uploads(request, max_images=settings.serve.max_images,
                                         max_body_bytes=settings.serve.max_body_bytes)  # fmt: skip
            model, body = _predict(uploads, follower.routing, settings, writer, metrics)
            return answer("/predict", 200, body, model.version, started)
        except BadInput as error:
            metrics.errors.labels(error.kind, served()).inc()
            body = {"error": error.kind, "detail": str(error)}
            return answer("/predict", error.status, body, served(), started)
        except NotReadyError as error:
            metrics.errors.labels("no_model", NO_MODEL).inc()
            body = {"error": "no_model", "detail": str(error)}
            return answer("/predict", 503, body, NO_MODEL, started)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """The process is alive (the liveness probe)."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Response:
        """A champion is loaded and warm (the readiness probe); 503 says why not."""
        started, routing = time.perf_counter(), follower.routing
        if routing.champion is None:
            body = {"ready": False, "reason": routing.not_ready}
            return answer("/ready", 503, body, NO_MODEL, started)
        if not every_worker_ready():
            body = {
                "ready": False,
                "reason": "another worker is still loading the champion",
            }
            return answer("/ready", 503, body, routing.champion.version, started)
        body = {"ready": True, "model": _model_summary(routing.champion)}
        return answer("/ready", 200, body, routing.champion.version, started)

    @app.get("/model")
    async def model() -> Response:
        """The served versions, their registry tags (lineage) and the last registry error."""
        started, routing = time.perf_counter(), follower.routing
        body = {
            "champion": routing.champion.describe() if routing.champion else None,
            "challenger": routing.challenger.describe() if routing.challenger else None,
            "canary_fraction": routing.canary_fraction,
            "last_registry_error": follower.last_error,
            "not_ready": None if routing.champion else routing.not_ready,
        }
        return answer(
            "/model", 200 if routing.champion else 503, body, served(), started
        )

    @app.get("/metrics")
    async def prometheus() -> Response:
        """Prometheus text format, every worker of the pod summed."""
        payload, content_type = exposition()
        return Response(payload, media_type=content_type)


def _predict(uploads: list[Upload], routing: Routing, settings: ServeSettings,
             writer: PredictionLogWriter | None,
             metrics: ServeMetrics) -> tuple[LoadedModel, dict[str, Any]]:  # fmt: skip
    digests = [hashlib.sha256(upload.data).hexdigest() for upload in uploads]
    model = routing.route(request_key(digests))
    probabilities = model.probabilities(to_batch(uploads, model.spec, settings.limits))
    answers = get_task(model.spec.task).answer(
        probabilities, model.spec, [upload_size(upload) for upload in uploads]
    )
    request_id, now = uuid.uuid4().hex, datetime.now(UTC).isoformat()
    predictions = []
    for upload, digest, answer in zip(uploads, digests, answers, strict=True):
        predictions.append(
            {"file": upload.name, **answer.body, "request_id": request_id}
        )
        metrics.predictions.labels(model.version, model.alias, answer.label).inc()
        metrics.confidence.labels(model.version, model.alias).observe(answer.confidence)
        if writer and random.random() < settings.serve.log_sample_rate:
            writer.add(LoggedPrediction(
                time=now, request_id=request_id, sha256=digest,
                image=image_key(digest, _extension(upload.data)), model_name=model.name,
                model_version=model.version, alias=model.alias, label=answer.label,
                confidence=answer.confidence, probabilities=answer.scores),
                upload.data)  # fmt: skip
    metrics.batch_size.labels(model.version).observe(len(uploads))
    body = {"model": _model_summary(model), "request_id": request_id,
            "predictions": predictions}  # fmt: skip
    return model, body


def _model_summary(model: LoadedModel) -> dict[str, str]:
    return {"name": model.name, "version": model.version, "alias": model.alias}


def _publish_routing(metrics: ServeMetrics, routing: Routing) -> None:
    metrics.ready.set(1 if routing.champion else 0)
    for alias, model in (("champion", routing.champion),
                         ("challenger", routing.challenger)):  # fmt: skip
        metrics.model_version.labels(alias).set(int(model.version) if model else 0)


def _log_writer(settings: ServeSettings,
                metrics: ServeMetrics) -> PredictionLogWriter | None:  # fmt: skip
    if settings.serve.log_sample_rate <= 0:
        return None
    return PredictionLogWriter(
        open_store(settings.serve.log), flush_records=settings.serve.log_flush_records,
        flush_seconds=settings.serve.log_flush_seconds, retries=settings.serve.log_retries,
        max_pending=settings.serve.log_max_pending,
        max_pending_bytes=settings.serve.log_max_pending_mb << 20,
        on_failure=metrics.log_flush_failures.inc,
        on_written=metrics.log_records.inc, on_dropped=metrics.log_dropped.inc,
    )  # fmt: skip


def _extension(data: bytes) -> str:
    """The stored image's extension, from its magic number (the monitor decodes any)."""
    for magic, extension in ((b"\x89PNG", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"),
                             (b"BM", "bmp"), (b"RIFF", "webp")):  # fmt: skip
        if data.startswith(magic):
            return extension
    return "img"


_PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["files"],
                "properties": {"files": {"type": "array",
                                         "items": {"type": "string", "format": "binary"}}},
            }},
            "application/json": {"schema": {
                "type": "object", "required": ["images"],
                "properties": {"images": {"type": "array",
                                          "items": {"type": "string", "format": "byte"}}},
            }},
        },
    },
}  # fmt: skip
