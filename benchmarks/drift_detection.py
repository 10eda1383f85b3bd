"""Drift detection: power on shifted batches, false alarms on clean ones, and the monitor's
compute on 10,000 images, with the monitor's own features and rule (params.monitor.alpha).

The bundled digits are ingested with 30% validation and 30% test; a CNN of the pipeline's
shape is trained on the rest (plain PyTorch: the model's quality is not what is measured).
The reference is the test split (as evaluate writes it); every batch is drawn from the
validation split, never seen by the reference: clean as it is, or shifted by one of
noise, brightness, contrast, blur, rotation, horizontal flip, inversion, or a change of class
mix (only three classes).

    python benchmarks/drift_detection.py [--quick]

`seconds_10k`: reading 10,000 image files, the model's features and the decision
(`evidently_report_seconds_10k`, Evidently's report on the same batch, is reported apart:
it renders the HTML and dashboards, it does not decide).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import ROOT, emit, machine
from components.config import IngestConfig, MonitorConfig, TrainConfig, load_params
from components.data import ImageDataset, read_split
from components.drift_features import (
    Projection,
    features,
    load_pixels,
    model_scorer,
    write_reference,
)
from components.drift_report import drift_report
from components.drift_rule import judge
from components.ingest import ingest
from components.model import ModelSpec, build_model, save_model
from components.onnx_model import export_onnx
from components.train import model_spec
from components.train_loop import Precision, run_epoch, seed_everything

GOALS = {"power": ">= 0.95", "false_alarm_rate": "<= 0.05", "seconds_10k": "<= 2"}


def shift(
    pixels: np.ndarray, change: str, rng: np.random.Generator, strength: float = 1.0
) -> np.ndarray:
    """One batch (N, C, H, W) in [0, 1], changed as a sensor, a scanner or users might;
    `strength` 1 is the benchmark's shift, lower is milder (blur and flip, all or none,
    blend the changed image with the original)."""
    if change == "noise":
        out = pixels + rng.normal(0, 0.1 * strength, pixels.shape)
    elif change == "brightness":
        out = pixels + 0.15 * strength
    elif change == "contrast":
        out = (pixels - pixels.mean()) * (1 - 0.4 * strength) + pixels.mean()
    elif change == "rotation":
        out = ndimage.rotate(pixels, 20 * strength, axes=(2, 3), reshape=False, order=1)
    elif change in ("blur", "flip", "inversion"):
        changed = {
            "blur": lambda: ndimage.uniform_filter(pixels, size=(1, 1, 3, 3)),
            "flip": lambda: pixels[:, :, :, ::-1],
            "inversion": lambda: 1.0 - pixels,
        }[change]()
        out = strength * changed + (1 - strength) * pixels
    else:
        raise ValueError(change)
    return np.ascontiguousarray(np.clip(out, 0, 1), dtype=np.float32)


SHIFTS = ["noise", "brightness", "contrast", "blur", "rotation", "flip", "inversion"]


def train_model(data_dir: Path, epochs: int) -> tuple[torch.nn.Module, ModelSpec]:
    cfg = load_params("train", TrainConfig, ROOT / "params.yaml")
    spec = model_spec(cfg, data_dir)
    seed_everything(0)
    model = build_model(spec)
    loader = torch.utils.data.DataLoader(
        ImageDataset(data_dir, read_split(data_dir, "train"), spec),
        batch_size=64,
        shuffle=True,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    precision = Precision(torch.device("cpu"), None, False, None)
    for _ in range(epochs):
        run_epoch(model, loader, precision, optimizer)
    return model.eval(), spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer batches per kind")
    args = parser.parse_args()
    batches = 20 if args.quick else 60
    batch_size = 300
    alpha = load_params("monitor", MonitorConfig, ROOT / "params.yaml").alpha
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        scratch = Path(tmp)
        ingest_cfg = load_params("ingest", IngestConfig, ROOT / "params.yaml")
        data_dir = ingest(ingest_cfg.model_copy(update={
            "source": "builtin:digits", "val_fraction": 0.3, "test_fraction": 0.3}),
            out_dir=scratch / "dataset").out_dir  # fmt: skip
        model, spec = train_model(data_dir, epochs=8 if args.quick else 15)
        # The monitor watches an ONNX file (the shipped variant); here the fp32 export of
        # this model (the pipeline's int8 variant runs faster still).
        model_dir = scratch / "model"
        save_model(model, spec, model_dir)
        export_onnx(model, torch.zeros(1, spec.in_channels, spec.image_size,
                                       spec.image_size), model_dir / "model.onnx")  # fmt: skip
        scorer, spec, _ = model_scorer(model_dir)
        test_paths = [data_dir / p for p in read_split(data_dir, "test")["path"]]
        val_rows = read_split(data_dir, "val")
        val_paths = [data_dir / p for p in val_rows["path"]]
        reference = write_reference(scorer, spec, load_pixels(test_paths, spec),
                                    scratch / "reference", dims=8,
                                    description={"split": "test"})  # fmt: skip
        projection = Projection.load(scratch / "reference/projection.npz")
        pool = load_pixels(val_paths, spec)
        labels = val_rows["label"].to_numpy()
        rng = np.random.default_rng(0)

        def flagged(pixels: np.ndarray) -> bool:
            batch = features(scorer, spec, pixels, projection)
            return judge(reference, batch, alpha).drift_detected

        def sample() -> np.ndarray:
            return pool[rng.choice(len(pool), batch_size, replace=False)]

        clean = [flagged(sample()) for _ in range(batches)]
        per_shift = {
            change: float(np.mean([flagged(shift(sample(), change, rng))
                                   for _ in range(batches)]))
            for change in SHIFTS
        }  # fmt: skip
        # the same shifts at a tenth of the strength: where detection starts to fail
        mild = {
            change: float(np.mean([flagged(shift(sample(), change, rng, 0.1))
                                   for _ in range(batches)]))
            for change in SHIFTS
        }  # fmt: skip
        few = np.isin(labels, sorted(set(labels))[:3])  # only three classes
        per_shift["class_mix"] = float(np.mean([
            flagged(pool[few][rng.choice(few.sum(), batch_size, replace=True)])
            for _ in range(batches)]))  # fmt: skip

        # 10,000 image files: read, features, decision; then Evidently's report
        big = scratch / "current"
        big.mkdir()
        chosen = rng.choice(len(val_paths), 10_000, replace=True)
        for index, source in enumerate(chosen):
            Image.open(val_paths[source]).save(big / f"{index:05d}.png")
        files = sorted(big.iterdir())
        clock = [time.perf_counter()]
        pixels = load_pixels(files, spec)
        clock.append(time.perf_counter())
        batch = features(scorer, spec, pixels, projection)
        clock.append(time.perf_counter())
        verdict = judge(reference, batch, alpha)
        clock.append(time.perf_counter())
        seconds = clock[-1] - clock[0]
        split = dict(zip(["read_files", "features", "decision"],
                         np.round(np.diff(clock), 3).tolist(), strict=True))  # fmt: skip
        start = time.perf_counter()
        drift_report(reference, batch, verdict.corrected_alpha)
        report_seconds = time.perf_counter() - start

    power = float(np.mean(list(per_shift.values())))
    emit("drift_detection", {
        "benchmark": "drift_detection",
        "quick": args.quick,
        "power": round(power, 3),
        "false_alarm_rate": round(float(np.mean(clean)), 3),
        "seconds_10k": round(seconds, 3),
        "seconds_10k_parts": split,
        "evidently_report_seconds_10k": round(report_seconds, 3),
        "power_per_shift": per_shift,
        "power_per_shift_tenth_strength": mild,
        "batches_per_kind": batches,
        "batch_images": batch_size,
        "reference_images": len(reference),
        "features": len(verdict.p_values),
        "alpha": alpha,
        "goals": GOALS,
        "machine": machine(),
    })  # fmt: skip


if __name__ == "__main__":
    main()
