"""Ray Train overhead: the same model, data, batch size and thread count in a plain PyTorch
loop and under Ray Train with one worker, side by side in one run.

Both loops are the project's own (`run_epoch`, the same sampler and loaders) and both save a
checkpoint each epoch; the Ray side's epoch time is the interval between its reports, so it
includes Ray's report and checkpoint-upload overhead.

    python benchmarks/train_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script
from benchmarks.common import (
    ROOT,
    ReportClock,
    digits_dataset,
    emit,
    machine,
    read_clock,
    scratch_tracking,
)
from components.config import TrainConfig, load_params
from components.data import ImageDataset, read_split
from components.model import ModelSpec, build_model
from components.ray_runtime import ensure_ray
from components.train import build_trainer, model_spec
from components.train_loop import Precision, run_epoch, seed_everything

THREADS = 1  # what Ray gives a one-CPU Train worker (OMP_NUM_THREADS=1)


def plain_epochs(cfg: TrainConfig, spec: ModelSpec, data_dir: Path, scratch: Path,
                 device: str = "cpu") -> list[float]:  # fmt: skip
    """A plain PyTorch loop: same sampler, loaders, steps and a checkpoint each epoch."""
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    torch.set_num_threads(THREADS)
    seed_everything(cfg.seed)
    train_set = ImageDataset(data_dir, read_split(data_dir, "train"), spec)
    val_set = ImageDataset(data_dir, read_split(data_dir, "val"), spec)
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, seed=cfg.seed)
    pin = device == "cuda"
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                              pin_memory=pin)  # fmt: skip
    val_loader = DataLoader(val_set, batch_size=cfg.batch_size, pin_memory=pin)
    precision = Precision.for_device(torch.device(device), cfg)
    model = build_model(spec).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    times = []
    for epoch in range(cfg.epochs):
        start = time.perf_counter()
        sampler.set_epoch(epoch)
        run_epoch(model, train_loader, precision, optimizer)
        run_epoch(model, val_loader, precision)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   scratch / "plain_checkpoint.pt")  # fmt: skip
        times.append(time.perf_counter() - start)
    return times


def ray_epochs(
    cfg: TrainConfig, spec: ModelSpec, data_dir: Path, scratch: Path
) -> dict:
    start = time.perf_counter()
    ensure_ray(cfg.num_workers + 1)
    init_seconds = time.perf_counter() - start
    scratch.mkdir(parents=True, exist_ok=True)
    clock = scratch / "clock.tsv"
    fit_start = time.time()
    build_trainer(cfg, spec, data_dir=data_dir, run_name="overhead",
                  callbacks=[ReportClock(clock)]).fit()  # fmt: skip
    stamps = [stamp for stamp, _ in read_clock(clock)]
    intervals = [b - a for a, b in itertools.pairwise(stamps)]
    steady = statistics.median(intervals)
    return {"init": init_seconds, "epochs": intervals, "steady": steady,
            "startup": init_seconds + (stamps[0] - fit_start) - steady}  # fmt: skip


def gpu_ratio(
    cfg: TrainConfig, spec: ModelSpec, data_dir: Path, scratch: Path
) -> float:
    """The same comparison on one GPU (AMP and channels-last as params set them)."""
    gpu_cfg = cfg.model_copy(
        update={"use_gpu": True, "storage_path": str(scratch / "gpu")}
    )
    images = len(read_split(data_dir, "train"))
    plain = images / statistics.median(
        plain_epochs(gpu_cfg, spec, data_dir, scratch, "cuda")[1:]
    )
    ray_ips = (
        images / ray_epochs(gpu_cfg, spec, data_dir, scratch / "gpu_clock")["steady"]
    )
    return round(plain / ray_ips, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 epochs instead of 10")
    args = parser.parse_args()
    epochs = 5 if args.quick else 10
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as folder:
        scratch = Path(folder)
        scratch_tracking(scratch)
        data_dir = digits_dataset(scratch)
        cfg = load_params("train", TrainConfig, ROOT / "params.yaml").model_copy(
            update={
                "epochs": epochs,
                "num_workers": 1,
                "use_gpu": False,
                "storage_path": str(scratch / "ray"),
            }
        )
        spec = model_spec(cfg, data_dir)
        plain = plain_epochs(cfg, spec, data_dir, scratch)
        ray_side = ray_epochs(cfg, spec, data_dir, scratch)
        gpu = (
            gpu_ratio(cfg, spec, data_dir, scratch)
            if torch.cuda.is_available()
            else None
        )
    plain_steady = statistics.median(plain[1:])
    emit("train_overhead", {
        "benchmark": "train_overhead",
        "quick": args.quick,
        "machine": machine(),
        "setup": {"model": cfg.arch, "channels": cfg.channels, "image_size": cfg.image_size,
                  "batch_size": cfg.batch_size, "threads": THREADS, "epochs": epochs,
                  "data": "digits train split (1257 images) + val (269)"},
        "plain_epoch_seconds": {"value": round(plain_steady, 3), "unit": "s (median, epochs 2+)"},
        "ray_epoch_seconds": {"value": round(ray_side["steady"], 3),
                              "unit": "s (median interval between reports)"},
        "ray_over_plain": {"value": round(ray_side["steady"] / plain_steady, 3),
                           "unit": "ratio", "goal": "<= 1.05"},
        "ray_startup_seconds": {"value": round(ray_side["startup"], 2), "unit": "s",
                                "note": "ray.init + worker group start, before epoch 1"},
        "ray_init_seconds": {"value": round(ray_side["init"], 2), "unit": "s"},
        "gpu_ray_over_plain": {"value": gpu, "unit": "plain images/s over Ray images/s "
                               "(time-like: <= 1.05 is the goal)",
                               "note": None if gpu is not None else "no GPU on this machine"},
    })  # fmt: skip


if __name__ == "__main__":
    main()
