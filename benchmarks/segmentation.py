"""Segmentation: the pipeline's second task measured end to end on builtin:shapes.

1. pipeline: ingest -> validate -> train (Ray Train) -> compress -> evaluate with
   params.segmentation.yaml, timed; the test mIoU it reaches.
2. compression, both architectures (U-Net from 1., DeepLabV3+ trained here): each int8 variant
   (PTQ, QAT, channel-pruned + QAT) against fp32: gzip size ratio, batch-1 ONNX Runtime latency
   ratio, mIoU drop, and pixel agreement with fp32 (evaluate's fp32_pixel_agreement).
3. the gate: a retrain on masks of which a tenth (of the train split) are shifted by several
   pixels, and an honest retrain with another seed, each judged against the model of 1. by
   the promotion decision (paired Wilcoxon signed-rank on the per-image IoU of the same test
   images).

    python benchmarks/segmentation.py [--quick]

--quick trains a quarter of the epochs and measures only int8_qat: the figures then show
that every part runs, not the targets.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import ROOT, emit, machine, scratch_tracking
from components.compress import compress
from components.config import (
    CompressBudget,
    CompressConfig,
    EvaluateConfig,
    IngestConfig,
    PromoteConfig,
    TrainConfig,
    ValidateConfig,
    load_params,
)
from components.evaluate import evaluate
from components.ingest import MANIFEST, ingest
from components.promotion import decide
from components.registry import read_evidence
from components.shapes import write_shapes
from components.train import train
from components.validate import validate

PARAMS = ROOT / "params.segmentation.yaml"
GOALS = {"test_miou": ">= 0.85", "pipeline_seconds": "<= 300 (2 cores)",
         "size_ratio": ">= 3.5", "latency_ratio": ">= 2", "miou_drop_pts": "<= 1",
         "pixel_agreement": ">= 0.98", "sabotaged": "rejected",
         "honest": "not rejected"}  # fmt: skip
SHIFT_PIXELS = 6
SABOTAGED_SHARE = 0.1


def pipeline(scratch: Path, train_cfg: TrainConfig, source: Path) -> dict[str, Any]:
    """The stages as `dvc repro` runs them (in one process), each timed."""
    clock = {"start": time.perf_counter()}
    data = ingest(load_params("ingest", IngestConfig, PARAMS).model_copy(
        update={"source": str(source)}), out_dir=scratch / "dataset",
        task="segmentation").out_dir  # fmt: skip
    clock["ingest"] = time.perf_counter()
    checked = validate(load_params("validate", ValidateConfig, PARAMS), data_dir=data,
                       report_dir=scratch / "validation")  # fmt: skip
    assert checked.success, checked.failed
    clock["validate"] = time.perf_counter()
    trained = train(train_cfg, data_dir=data, out_dir=scratch / "candidate",
                    params_path=PARAMS)  # fmt: skip
    clock["train"] = time.perf_counter()
    shipped = compress(load_params("compress", CompressConfig, PARAMS),
                       model_dir=trained.model_dir, data_dir=data,
                       out_dir=scratch / "compressed",
                       report_path=scratch / "compression.json").model_dir  # fmt: skip
    clock["compress"] = time.perf_counter()
    metrics = evaluate(load_params("evaluate", EvaluateConfig, PARAMS),
                       model_dir=trained.model_dir, shipped_dir=shipped, data_dir=data,
                       report_dir=scratch / "evaluation").metrics  # fmt: skip
    clock["evaluate"] = time.perf_counter()
    stages = list(clock)
    return {
        "data": data, "candidate": trained.model_dir, "evaluation": scratch / "evaluation",
        "test_miou": round(metrics["test_miou"], 4),
        "fp32_test_miou": round(metrics["fp32_test_miou"], 4),
        "test_pixel_accuracy": round(metrics["test_pixel_accuracy"], 4),
        "iou": {k.removeprefix("iou_"): round(v, 4) for k, v in metrics.items()
                if k.startswith("iou_")},
        "shipped": metrics["variant"],
        "pipeline_seconds": round(clock["evaluate"] - clock["start"], 1),
        "seconds": {stage: round(clock[stage] - clock[previous], 1)
                    for previous, stage in itertools.pairwise(stages)},
    }  # fmt: skip


def int8_variants(
    arch: str, candidate: Path, data: Path, scratch: Path, variants: list[str]
) -> dict[str, Any]:
    """Each int8 variant shipped against fp32 (a permissive budget, so the smaller ships),
    then evaluated: its mIoU, and its pixels against the fp32 candidate's."""
    base = load_params("compress", CompressConfig, PARAMS)
    budget = CompressBudget(max_accuracy_drop_pts=100.0, max_latency_ms=1e6,
                            max_size_bytes=10**12)  # fmt: skip
    results: dict[str, Any] = {}
    for variant in variants:
        out = scratch / f"{arch}-{variant}"
        cfg = base.model_copy(update={"variants": ["fp32", variant], "budget": budget})
        result = compress(cfg, model_dir=candidate, data_dir=data, out_dir=out / "model",
                          report_path=out / "compression.json")  # fmt: skip
        rows = {row.variant: row for row in result.table}
        fp32, row = rows["fp32"], rows[variant]
        metrics = evaluate(load_params("evaluate", EvaluateConfig, PARAMS),
                           model_dir=candidate, shipped_dir=result.model_dir,
                           data_dir=data, report_dir=out / "evaluation").metrics  # fmt: skip
        results[variant] = {
            "size_ratio": round(fp32.gzip_bytes / row.gzip_bytes, 3),
            "latency_ratio": round(fp32.latency_ms_b1 / row.latency_ms_b1, 3),
            "miou_drop_pts": round(100 * (fp32.accuracy - row.accuracy), 2),
            "pixel_agreement": round(metrics["fp32_pixel_agreement"], 4),
            "fp32_gzip_bytes": fp32.gzip_bytes, "gzip_bytes": row.gzip_bytes,
            "fp32_latency_ms_b1": round(fp32.latency_ms_b1, 3),
            "latency_ms_b1": round(row.latency_ms_b1, 3),
        }  # fmt: skip
    return results


def sabotaged_source(source: Path, data: Path, target: Path) -> tuple[Path, int]:
    """A copy of the source where a tenth of the train split's masks are shifted by
    SHIFT_PIXELS down and right (the images untouched: the split stays the same)."""
    import pandas as pd

    shutil.copytree(source, target)
    manifest = pd.read_parquet(data / MANIFEST)
    train_masks = sorted(manifest.loc[manifest["split"] == "train", "mask_path"])
    rng = np.random.default_rng(0)
    chosen = rng.choice(train_masks, size=round(SABOTAGED_SHARE * len(train_masks)),
                        replace=False)  # fmt: skip
    for relative in chosen:
        mask = np.asarray(Image.open(target / relative))
        shifted = np.roll(mask, (SHIFT_PIXELS, SHIFT_PIXELS), axis=(0, 1))
        Image.fromarray(shifted, mode="L").save(target / relative)
    return target, len(chosen)


def judged(
    champion_evaluation: Path, scratch: Path, source: Path, train_cfg: TrainConfig
) -> dict[str, Any]:
    data = ingest(load_params("ingest", IngestConfig, PARAMS).model_copy(
        update={"source": str(source)}), out_dir=scratch / "dataset",
        task="segmentation").out_dir  # fmt: skip
    trained = train(train_cfg, data_dir=data, out_dir=scratch / "candidate",
                    params_path=PARAMS)  # fmt: skip
    # The fp32 candidate as shipped (no compression), so the comparison is of training.
    evaluate(load_params("evaluate", EvaluateConfig, PARAMS), model_dir=trained.model_dir,
             data_dir=data, report_dir=scratch / "evaluation")  # fmt: skip
    rules = load_params("promote", PromoteConfig, PARAMS)
    decision = decide(read_evidence(scratch / "evaluation"),
                      read_evidence(champion_evaluation), rules)  # fmt: skip
    metrics = json.loads((scratch / "evaluation/metrics.json").read_text())
    comparison = decision.comparison
    return {
        "promoted": decision.promote,
        "test_miou": round(metrics["test_miou"], 4),
        "p_worse": None if comparison is None else round(comparison.p_worse, 6),
        "mean_iou_difference": None if comparison is None
        else round(comparison.mean_difference, 4),
        "reasons": decision.reasons,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer epochs, one variant"
    )
    quick = parser.parse_args().quick
    base = load_params("train", TrainConfig, PARAMS)
    epochs = max(2, base.epochs // 4) if quick else base.epochs
    unet = base.model_copy(update={"epochs": epochs})
    deeplab = base.model_copy(update={"arch": "deeplabv3plus", "epochs": epochs,
                                      "output_stride": 8})  # fmt: skip
    variants = (
        ["int8_qat"] if quick else ["int8_ptq", "int8_qat", "pruned_channels_int8"]
    )
    with tempfile.TemporaryDirectory(prefix="bench-segmentation-") as tmp:
        scratch = Path(tmp)
        scratch_tracking(scratch)
        source = scratch / "shapes"
        write_shapes(source)  # builtin:shapes, written once for every run below
        run = pipeline(scratch / "pipeline", unet, source)
        deeplab_run = train(deeplab, data_dir=run["data"], out_dir=scratch / "deeplab",
                            params_path=PARAMS)  # fmt: skip
        compression = {
            "unet": int8_variants("unet", run["candidate"], run["data"], scratch, variants),
            "deeplabv3plus": int8_variants("deeplabv3plus", deeplab_run.model_dir,
                                           run["data"], scratch, variants),
        }  # fmt: skip
        # The champion's evidence is its fp32 candidate's, like the retrains'.
        evaluate(load_params("evaluate", EvaluateConfig, PARAMS),
                 model_dir=run["candidate"], data_dir=run["data"],
                 report_dir=scratch / "champion")  # fmt: skip
        sabotage, shifted = sabotaged_source(source, run["data"], scratch / "sabotaged")
        gate = {
            "shifted_masks": shifted, "shift_pixels": SHIFT_PIXELS,
            "sabotaged": judged(scratch / "champion", scratch / "gate-sabotaged",
                                sabotage, unet),
            "honest": judged(scratch / "champion", scratch / "gate-honest", source,
                             unet.model_copy(update={"seed": 1})),
        }  # fmt: skip
    for key in ("data", "candidate", "evaluation"):
        run.pop(key)
    emit("segmentation", {
        "benchmark": "segmentation", "quick": quick, "epochs": epochs, **run,
        "deeplabv3plus_val_miou": round(deeplab_run.metrics["val_miou"], 4),
        "compression": compression, "gate": gate, "goals": GOALS, "machine": machine(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
