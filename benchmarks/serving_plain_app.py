"""The plainest FastAPI app a user would write around an ONNX Runtime session: the baseline
benchmarks/serving.py compares the service against (one worker, no metrics, no log).

    BENCH_MODEL_DIR=<folder with model.onnx + spec.json> uvicorn benchmarks.serving_plain_app:app
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, UploadFile

from components.preprocess import normalise, to_pixels
from components.spec import ModelSpec

_folder = Path(os.environ.get("BENCH_MODEL_DIR", "."))
app = FastAPI()
_state: dict[str, object] = {}


@app.on_event("startup")
def _load() -> None:
    _state["spec"] = ModelSpec.read(_folder)
    _state["session"] = ort.InferenceSession(str(_folder / "model.onnx"),
                                             providers=["CPUExecutionProvider"])  # fmt: skip


@app.post("/predict")
async def predict(files: list[UploadFile] = File(...)) -> dict[str, object]:  # noqa: B008
    spec: ModelSpec = _state["spec"]  # type: ignore[assignment]
    session: ort.InferenceSession = _state["session"]  # type: ignore[assignment]
    batch = normalise(np.stack([to_pixels(await f.read(), spec) for f in files]), spec)
    logits = session.run(None, {session.get_inputs()[0].name: batch})[0]
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = exp / exp.sum(axis=1, keepdims=True)
    return {"predictions": [
        {"file": f.filename, "label": spec.classes[int(row.argmax())],
         "probabilities": dict(zip(spec.classes, map(float, row), strict=True))}
        for f, row in zip(files, probabilities, strict=True)]}  # fmt: skip
