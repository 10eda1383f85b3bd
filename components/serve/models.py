"""The models the service answers with, following the registry's aliases.

A thread reads `champion` (and, with a canary, `challenger`) every serve.reload_seconds.
When an alias moves, the new version is downloaded beside the one in use, checked against
the sha256 recorded when it was registered, loaded into ONNX Runtime and warmed; only then
is the routing table replaced, in one assignment. A request takes the table once when it
starts, so requests in flight finish on the model they began with, and none is refused.
A version that fails to load is never served: the old one stays, and the error is shown.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnxruntime as ort
from mlflow import MlflowClient

from components.io import sha256_file
from components.onnx_model import cpu_session
from components.registry_aliases import (
    CHALLENGER,
    CHAMPION,
    ONNX_SHA256_TAG,
    alias_version,
)
from components.spec import ONNX_FILE, ModelSpec

log = logging.getLogger(__name__)

_WARMUP_CALLS = 3


class ModelLoadError(RuntimeError):
    """A registry version could not be served (missing file, checksum mismatch, ...)."""


class NotReadyError(RuntimeError):
    """No champion is loaded; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: str
    alias: str
    spec: ModelSpec
    session: ort.InferenceSession = field(repr=False)
    sha256: str
    tags: dict[str, str] = field(repr=False)
    loaded_at: str

    @cached_property  # read once: get_inputs() builds new objects on every call
    def input_name(self) -> str:
        return str(self.session.get_inputs()[0].name)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax of the logits of a normalised (N, C, H, W) float32 batch."""
        feed = {self.input_name: batch}
        logits = np.asarray(self.session.run(None, feed)[0], dtype=np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "alias": self.alias,
                "sha256": self.sha256, "loaded_at": self.loaded_at,
                "classes": self.spec.classes, "tags": self.tags}  # fmt: skip


@dataclass(frozen=True)
class Routing:
    """Which model answers a request: the champion, or for `canary_fraction` of request
    keys the challenger."""

    champion: LoadedModel | None
    challenger: LoadedModel | None = None
    canary_fraction: float = 0.0
    not_ready: str = "the registry has not been read yet"

    def route(self, key: str) -> LoadedModel:
        """The model for a request whose content hash (hex) is `key`."""
        if self.champion is None:
            raise NotReadyError(self.not_ready)
        if self.challenger is not None and _share(key) < self.canary_fraction:
            return self.challenger
        return self.champion


def _share(key: str) -> float:
    """The request key as a point of [0, 1): the same content always lands alike."""
    return int(key[:8], 16) / 0x1_0000_0000


class RegistryFollower:
    """Keeps `routing` in step with the registry's aliases (see the module docstring)."""

    def __init__(self, *, model_name: str, tracking_uri: str, reload_seconds: float,
                 threads: int, canary_fraction: float,
                 on_loaded: Callable[[LoadedModel], None] = lambda model: None,
                 on_failed: Callable[[str], None] = lambda error: None,
                 on_routing: Callable[[Routing], None] = lambda routing: None,
                 ) -> None:  # fmt: skip
        self.model_name, self.tracking_uri = model_name, tracking_uri
        self.reload_seconds, self.threads = reload_seconds, threads
        self.canary_fraction = canary_fraction
        self.on_loaded, self.on_failed, self.on_routing = (
            on_loaded,
            on_failed,
            on_routing,
        )
        self.routing = Routing(None, canary_fraction=canary_fraction)
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def refresh(self) -> None:
        """Read the aliases once; load and switch to what moved."""
        client = MlflowClient(self.tracking_uri)
        current = self.routing
        try:
            champion = self._follow(client, CHAMPION, current.champion)
            challenger = (
                self._follow(client, CHALLENGER, current.challenger)
                if self.canary_fraction > 0
                else None
            )
        except Exception as error:  # registry down, bad version: keep what is served
            self.last_error = f"{type(error).__name__}: {error}"
            self.on_failed(self.last_error)
            log.warning("registry: %s (still serving %s)", self.last_error,
                        current.champion.version if current.champion else "nothing")  # fmt: skip
            if current.champion is None:
                self.routing = Routing(None, canary_fraction=self.canary_fraction,
                                       not_ready=self.last_error)  # fmt: skip
                self.on_routing(self.routing)
            return
        self.last_error = None
        if challenger is not None and champion is not None:
            challenger = None if challenger.version == champion.version else challenger
        reason = f"model {self.model_name!r} has no version at alias {CHAMPION!r} yet"
        self.routing = Routing(champion, challenger, self.canary_fraction, reason)
        self.on_routing(self.routing)

    def _follow(self, client: MlflowClient, alias: str,
                loaded: LoadedModel | None) -> LoadedModel | None:  # fmt: skip
        version = alias_version(client, self.model_name, alias)
        if version is None:
            return None
        if loaded is not None and loaded.version == version:
            return loaded
        model = load_version(client, self.model_name, version, alias, self.threads,
                             self.tracking_uri)  # fmt: skip
        self.on_loaded(model)
        log.info("loaded %s version %s (%s), sha256 %s", self.model_name, version,
                 alias, model.sha256[:12])  # fmt: skip
        return model

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.refresh()
            self._stop.wait(
                max(0.0, self.reload_seconds - (time.monotonic() - started))
            )


def load_version(client: MlflowClient, name: str, version: str, alias: str,
                 threads: int, tracking_uri: str) -> LoadedModel:  # fmt: skip
    """Download a registered version's shipped ONNX model, verify and warm it."""
    record = client.get_model_version(name, version)
    expected = record.tags.get(ONNX_SHA256_TAG)
    if not expected:
        raise ModelLoadError(f"{name} version {version}: no {ONNX_SHA256_TAG} tag, so "
                             "its file cannot be verified; refusing to serve it")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="serve-model-") as scratch:
        folder = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=record.source, dst_path=scratch, tracking_uri=tracking_uri))  # fmt: skip
        onnx_path = folder / ONNX_FILE
        if not onnx_path.is_file():
            raise ModelLoadError(f"{name} version {version}: {record.source} has no "
                                 f"{ONNX_FILE}")  # fmt: skip
        digest = sha256_file(onnx_path)
        if digest != expected:
            raise ModelLoadError(
                f"{name} version {version}: {ONNX_FILE} sha256 {digest[:12]} != "
                f"registered {expected[:12]}; refusing to serve it"
            )
        spec = ModelSpec.read(folder)
        session = cpu_session(onnx_path.read_bytes(), threads)
    model = LoadedModel(
        name=name, version=version, alias=alias, spec=spec, session=session,
        sha256=digest, tags=dict(record.tags),
        loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
    warm = np.zeros((1, spec.in_channels, spec.image_size, spec.image_size), "f4")
    for _ in range(
        _WARMUP_CALLS
    ):  # the first calls allocate; no request should pay that
        model.probabilities(warm)
    return model


def request_key(digests: list[str]) -> str:
    """One hex key for a request from its images' sha256s (the canary split reads it)."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()
