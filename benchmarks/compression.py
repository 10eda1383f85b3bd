"""Compression: every variant of a trained candidate measured side by side, the shipped one
against fp32, on the pipeline's own model (the digits CNN, 16x16 grey) and on a model of
realistic size (the residual network on 32x32 RGB digits, colour-tinted).

Each candidate is trained by the pipeline's train stage (Ray Train) and compressed by the
compress stage with params.compress, except the budget: only accuracy binds here
(`max_accuracy_drop_pts` 0.5, or 1.0 with --quick), so the figures show what the smallest
variant within that drop buys.

    python benchmarks/compression.py [--quick]

`size_ratio` is fp32's gzip-compressed ONNX bytes over the shipped variant's (the measure
the stage ranks by); `size_ratio_raw` the same on the uncompressed files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import ROOT, digits_dataset, emit, machine, scratch_tracking
from components.compress import compress
from components.config import (
    CompressBudget,
    CompressConfig,
    IngestConfig,
    TrainConfig,
    load_params,
)
from components.ingest import ingest
from components.train import train

GOALS = {"size_ratio": ">= 3.5", "latency_speedup": ">= 2.0",
         "accuracy_drop_pts": "<= 0.5 (--quick: <= 1.0)", "onnx_agreement": ">= 0.99"}  # fmt: skip


def rgb_digits(scratch: Path, size: int = 32) -> Path:
    """The bundled digits as size x size RGB images, each a seeded light ink colour on a
    seeded dark background, in class folders; then ingested like any folder source."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    folder = scratch / "rgb-digits"
    for index, (image, label) in enumerate(
        zip(digits.images, digits.target, strict=True)
    ):
        ink = (image / 16.0)[:, :, None]
        foreground, background = rng.uniform(128, 255, 3), rng.uniform(0, 96, 3)
        pixels = (ink * foreground + (1 - ink) * background).astype(np.uint8)
        path = folder / str(label) / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR).save(
            path
        )
    cfg = load_params("ingest", IngestConfig, ROOT / "params.yaml")
    return ingest(cfg.model_copy(update={"source": str(folder)}),
                  out_dir=scratch / "rgb-dataset").out_dir.resolve()  # fmt: skip


def measure(name: str, train_cfg: TrainConfig, compress_cfg: CompressConfig,
            data_dir: Path, scratch: Path) -> dict[str, Any]:  # fmt: skip
    started = time.perf_counter()
    candidate = train(train_cfg, data_dir=data_dir, out_dir=scratch / f"{name}-candidate",
                      params_path=ROOT / "params.yaml").model_dir  # fmt: skip
    trained = time.perf_counter()
    result = compress(compress_cfg, model_dir=candidate, data_dir=data_dir,
                      out_dir=scratch / f"{name}-compressed",
                      report_path=scratch / f"{name}-compression.json")  # fmt: skip
    table = {row.variant: row for row in result.table}
    fp32, shipped = table["fp32"], table[result.shipped]
    return {
        "shipped": result.shipped,
        "size_ratio": round(fp32.gzip_bytes / shipped.gzip_bytes, 2),
        "size_ratio_raw": round(fp32.onnx_bytes / shipped.onnx_bytes, 2),
        "latency_speedup": round(fp32.latency_ms_b1 / shipped.latency_ms_b1, 2),
        "latency_speedup_b64": round(fp32.latency_ms_b64 / shipped.latency_ms_b64, 2),
        "accuracy_drop_pts": round(shipped.accuracy_drop_pts, 2),
        "onnx_agreement": round(shipped.onnx_agreement, 4),
        "fp32_accuracy": round(fp32.accuracy, 4),
        "train_seconds": round(trained - started, 1),
        "compress_seconds": round(time.perf_counter() - trained, 1),
        "variants": {
            row.variant: {
                "accuracy": round(row.accuracy, 4),
                "gzip_bytes": row.gzip_bytes,
                "onnx_bytes": row.onnx_bytes,
                "latency_ms_b1": round(row.latency_ms_b1, 4),
                "latency_ms_b64": round(row.latency_ms_b64, 3),
                "onnx_agreement": round(row.onnx_agreement, 4),
            }
            for row in result.table
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and runs")
    quick = parser.parse_args().quick
    base_train = load_params("train", TrainConfig, ROOT / "params.yaml")
    base_compress = load_params("compress", CompressConfig, ROOT / "params.yaml")
    budget = CompressBudget(max_accuracy_drop_pts=1.0 if quick else 0.5,
                            max_latency_ms=1e6, max_size_bytes=10**12)  # fmt: skip
    compress_cfg = base_compress.model_copy(update={
        "budget": budget, **({"runs": 100, "qat_epochs": 2, "finetune_epochs": 2}
                             if quick else {}),
    })  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as tmp:
        scratch = Path(tmp)
        scratch_tracking(scratch)
        cnn = base_train.model_copy(
            update={"epochs": 8 if quick else base_train.epochs}
        )
        resnet = base_train.model_copy(update={
            "arch": "resnet", "image_size": 32, "channels": [32, 64, 128],
            "epochs": 6 if quick else 12,
        })  # fmt: skip
        models = {
            "cnn_digits_16_grey": measure("cnn", cnn, compress_cfg,
                                          digits_dataset(scratch), scratch),
            "resnet_digits_32_rgb": measure("resnet", resnet, compress_cfg,
                                            rgb_digits(scratch), scratch),
        }  # fmt: skip
    headline = models["cnn_digits_16_grey"]
    emit("compression", {
        "benchmark": "compression", "quick": quick,
        **{key: headline[key] for key in
           ("size_ratio", "latency_speedup", "accuracy_drop_pts", "onnx_agreement")},
        "goals": GOALS, "models": models, "threads": compress_cfg.threads,
        "machine": machine(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
