"""ONNX export (torch.export based, any batch size) and ONNX Runtime inference and timing."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import onnxruntime as ort

if (
    TYPE_CHECKING
):  # torch is imported where a model is exported: serving runs without it
    import torch
    from torch import nn

# The exporter logs one warning per torchvision op it cannot find; torchvision is not used.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
for _chatty in ("onnx_ir", "onnxscript"):  # a line per graph pass at INFO
    logging.getLogger(_chatty).setLevel(logging.WARNING)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """One self-contained .onnx file (weights inside) with a dynamic batch dimension."""
    import torch

    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )
    return path


def cpu_session(source: str | bytes, threads: int) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on `threads` intra-op threads (timings and a server's
    workers each need a fixed share of the cores)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An ONNX Runtime CPU session with a fixed thread count (timings need one)."""

    def __init__(
        self, path: Path, threads: int = 1, *, embedding: EmbeddingLayer | None = None
    ) -> None:
        """`embedding`: also expose that layer's input as a second output, for the drift
        monitor (a classifier's head input; a segmentation net's encoder output)."""
        self.path = path
        source: str | bytes = str(path)
        if embedding:
            source = _with_embedding_output(path, embedding)
        self.session = cpu_session(source, threads)
        self.input_name: str = self.session.get_inputs()[0].name

    def logits(self, images: np.ndarray) -> np.ndarray:
        output: np.ndarray = self.session.run(None, {self.input_name: images})[0]
        return output

    def embeddings_and_logits(
        self, images: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate activations, logits); needs `embedding=True`."""
        logits, embeddings = self.session.run(None, {self.input_name: images})[:2]
        return np.asarray(embeddings), np.asarray(logits)

    def time_calls(self, images: np.ndarray, calls: int) -> list[float]:
        """Seconds taken by each of `calls` runs on `images`."""
        feed = {self.input_name: np.ascontiguousarray(images, dtype=np.float32)}
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            self.session.run(None, feed)
            times.append(time.perf_counter() - start)
        return times


def median_latency_ms(
    models: dict[str, OnnxModel], images: np.ndarray, warmup: int, runs: int
) -> dict[str, float]:
    """Median latency of each model on `images`, measured side by side: the runs are
    interleaved in rounds, so a slow spell on a shared machine hits every model alike."""
    rounds = min(10, runs)
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.time_calls(images, warmup)
    for round_index in range(rounds):
        calls = runs // rounds + (1 if round_index < runs % rounds else 0)
        for name, model in models.items():
            times[name] += model.time_calls(images, calls)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


# Where the embedding is read: (op types, "first" or "last" such node); its data input.
EmbeddingLayer = tuple[tuple[str, ...], Literal["first", "last"]]
# A classifier's head: the last Gemm/MatMul reads the penultimate activations.
CLASSIFIER_HEAD: EmbeddingLayer = (("Gemm", "MatMul"), "last")
# An encoder-decoder's first upsampling reads the encoder's deepest features.
DECODER_START: EmbeddingLayer = (("Resize", "ConvTranspose"), "first")


def _with_embedding_output(path: Path, layer: EmbeddingLayer) -> bytes:
    """The model with `layer`'s data input added as a graph output (after DequantizeLinear
    in int8, so always float)."""
    import onnx

    model = onnx.load(str(path))
    op_types, which = layer
    nodes = [node for node in model.graph.node if node.op_type in op_types]
    if not nodes:
        raise ValueError(
            f"{path}: no {'/'.join(op_types)} node, so no embedding to expose"
        )
    name = nodes[-1 if which == "last" else 0].input[0]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
    )
    serialized: bytes = model.SerializeToString()
    return serialized
