"""The features the drift monitor compares, one row per image.

Three kinds, because shifts show in different places:
- image statistics (brightness, contrast, sharpness, entropy): cheap, and they say *what*
  changed in words an operator understands;
- the model's embedding (its penultimate layer), projected on principal axes fitted on the
  reference: shifts the statistics miss;
- the model's outputs (the softmax per class, the confidence, the predicted class). Rabanser et
  al., "Failing Loudly" (2019), found two-sample tests on the softmax outputs the best of the
  detectors they compared, so these are never left out.

evaluate writes the reference (`write_reference`, on the test split: held out, so the model's
confidence there is what unseen data gets); the monitor computes the same features on the
current batch (`features`) with the projection stored beside the reference. Both use the
shipped variant as it runs (its ONNX file), so the outputs watched are the deployed model's.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA

from components.data import to_pixels
from components.io import read_json, sha256_file, write_json
from components.model import SPEC_FILE, WEIGHTS_FILE, ModelSpec, load_model
from components.onnx_model import OnnxModel
from components.tasks import Outputs, get_task

FEATURES_FILE = "features.parquet"
PROJECTION_FILE = "projection.npz"
REFERENCE_JSON = "reference.json"
PREDICTED_CLASS = "predicted_class"
STATISTICS = ("brightness", "contrast", "sharpness", "entropy")
_ENTROPY_BINS = 32

# A normalised batch (N, C, H, W) -> (embeddings, logits)
Scorer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Projection:
    """Principal axes of the reference embeddings (PCA fitted on the reference only)."""

    mean: np.ndarray
    components: np.ndarray  # (dims, embedding width)

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        projected: np.ndarray = (embeddings - self.mean) @ self.components.T
        return projected

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean, components=self.components)

    @classmethod
    def load(cls, path: Path) -> Projection:
        with np.load(path) as stored:
            return cls(mean=stored["mean"], components=stored["components"])


def load_pixels(paths: list[Path], spec: ModelSpec) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1], resized as the model sees them; an unreadable file
    raises ImageReadError naming it."""
    if not paths:
        return np.zeros((0, spec.in_channels, spec.image_size, spec.image_size), "f4")
    # A plain loop: for small images a thread pool was 2.4x *slower* (10,000 digit PNGs:
    # 0.77 s in a loop, 1.86 s on 2 threads, 2.15 s on 8; the GIL, not I/O, is the limit).
    return np.stack([to_pixels(path, spec) for path in paths])


def model_scorer(model_dir: Path) -> tuple[Scorer, ModelSpec, str]:
    """The model in `model_dir` as the monitor sees it: its model.onnx when there is one
    (the shipped variant, as it runs; ONNX Runtime on every core), else its PyTorch weights.
    Returns the scorer, the spec and the model file's sha256 (the reference records it, so a
    monitor never compares features of two different models)."""
    spec = ModelSpec(**read_json(model_dir / SPEC_FILE))
    task = get_task(spec.task)
    onnx_path = model_dir / "model.onnx"
    if onnx_path.is_file():
        session = OnnxModel(onnx_path, threads=os.cpu_count() or 1,
                            embedding=task.embedding_layer)  # fmt: skip
        return session.embeddings_and_logits, spec, sha256_file(onnx_path)
    model, spec = load_model(model_dir)
    return _torch_scorer(model, task.embedding_module(model)), spec, \
        sha256_file(model_dir / WEIGHTS_FILE)  # fmt: skip


def features(
    scorer: Scorer,
    spec: ModelSpec,
    pixels: np.ndarray,
    projection: Projection,
    batch_size: int = 512,
) -> pd.DataFrame:
    """Statistics, projected embedding and outputs of every image in `pixels`."""
    embeddings, probabilities = _model_outputs(scorer, spec, pixels, batch_size)
    return _frame(pixels, projection.apply(embeddings), probabilities, spec)


def write_reference(
    scorer: Scorer,
    spec: ModelSpec,
    pixels: np.ndarray,
    out_dir: Path,
    *,
    dims: int,
    description: dict[str, object],
) -> pd.DataFrame:
    """Fit the projection on these images' embeddings and write the reference features,
    the projection and a description (what data, which model) to `out_dir`."""
    embeddings, probabilities = _model_outputs(scorer, spec, pixels, 512)
    dims = min(dims, embeddings.shape[1], len(pixels))
    pca = PCA(n_components=dims, random_state=0).fit(embeddings)
    projection = Projection(
        mean=pca.mean_.astype(np.float32), components=pca.components_.astype(np.float32)
    )
    frame = _frame(pixels, projection.apply(embeddings), probabilities, spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out_dir / FEATURES_FILE, index=False)
    projection.save(out_dir / PROJECTION_FILE)
    write_json(out_dir / REFERENCE_JSON, {
        **description,
        "images": len(frame),
        "columns": list(frame.columns),
        "embedding_dims": dims,
        "explained_variance": float(pca.explained_variance_ratio_.sum()),
    })  # fmt: skip
    return frame


def image_statistics(pixels: np.ndarray) -> pd.DataFrame:
    """Per image, on the grey level in [0, 1]: mean (brightness), standard deviation
    (contrast), variance of the Laplacian (sharpness: blur lowers it, noise raises it) and
    the Shannon entropy of a 32-bin histogram, in bits. Vectorised over the batch."""
    grey = pixels.mean(axis=1, dtype=np.float64)  # (N, H, W)
    count = len(grey)
    laplacian = (4 * grey[:, 1:-1, 1:-1] - grey[:, :-2, 1:-1] - grey[:, 2:, 1:-1]
                 - grey[:, 1:-1, :-2] - grey[:, 1:-1, 2:])  # fmt: skip
    levels = np.clip((grey * _ENTROPY_BINS).astype(np.int64), 0, _ENTROPY_BINS - 1)
    offsets = np.arange(count)[:, None, None] * _ENTROPY_BINS
    histogram = np.bincount(
        (levels + offsets).ravel(), minlength=count * _ENTROPY_BINS
    ).reshape(count, _ENTROPY_BINS)
    share = histogram / np.maximum(histogram.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(share > 0, share * np.log2(share), 0.0), axis=1)
    return pd.DataFrame({
        "brightness": grey.mean(axis=(1, 2)),
        "contrast": grey.std(axis=(1, 2)),
        "sharpness": laplacian.var(axis=(1, 2)),
        "entropy": entropy,
    })  # fmt: skip


def numerical_columns(frame: pd.DataFrame) -> list[str]:
    return [column for column in frame.columns if column != PREDICTED_CLASS]


def _torch_scorer(model: torch.nn.Module, layer: torch.nn.Module) -> Scorer:
    """(embeddings, logits) of a PyTorch model: the input of `layer` (the task's embedding
    layer), caught by a forward hook, and the output."""
    model.eval()

    def score(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        captured: list[torch.Tensor] = []
        hook = layer.register_forward_hook(
            lambda _module, inputs, _output: captured.append(inputs[0].detach())
        )
        try:
            with torch.inference_mode():
                logits = model(torch.from_numpy(images))
        finally:
            hook.remove()
        return captured[0].numpy(), logits.numpy()

    return score


def _model_outputs(
    scorer: Scorer, spec: ModelSpec, pixels: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, softmax) over the batch, `batch_size` images at a time."""
    embeddings, logits = [], []
    for start in range(0, len(pixels), batch_size):
        batch = (pixels[start : start + batch_size] - spec.mean) / spec.std
        embedded, scored = scorer(np.ascontiguousarray(batch, dtype=np.float32))
        if embedded.ndim == 4:  # feature maps: their spatial mean per channel
            embedded = embedded.mean(axis=(2, 3))
        embeddings.append(embedded.reshape(len(batch), -1))
        logits.append(scored)
    if not logits:
        raise ValueError("no images to score")
    return np.concatenate(embeddings), Outputs.from_logits(
        np.concatenate(logits)
    ).probabilities


def _frame(
    pixels: np.ndarray,
    projected: np.ndarray,
    probabilities: np.ndarray,
    spec: ModelSpec,
) -> pd.DataFrame:
    """Statistics, the projected embedding, and the task's output features, with the
    predicted class (segmentation: the largest object predicted) as a categorical."""
    columns = {f"embedding_{i}": projected[:, i] for i in range(projected.shape[1])}
    outputs = get_task(spec.task).output_features(probabilities, spec)
    predicted = outputs.pop(PREDICTED_CLASS)
    frame = pd.concat(
        [image_statistics(pixels), pd.DataFrame(columns | outputs)], axis=1
    )
    frame[PREDICTED_CLASS] = pd.Categorical(
        [spec.classes[int(i)] for i in predicted], categories=spec.classes
    )
    return frame
