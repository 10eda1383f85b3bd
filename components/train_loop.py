"""What every Ray Train worker runs: data shards, the epoch loop, metrics and checkpoints.

Explicit `train_step` / `eval_step` functions; Ray Train supplies the process group (gloo on
CPU, nccl on GPU), the device and DDP wrapping, and scale is only `num_workers`.
"""

from __future__ import annotations

import random
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.data.distributed import DistributedSampler

from components.config import TrainConfig
from components.data import read_split
from components.model import ModelSpec, build_model
from components.tasks import Task, get_task

CHECKPOINT_FILE = "checkpoint.pt"
REPORTED_AT = "reported_at"
# Per-epoch compute, summed over workers (history only; metrics.json holds the run's totals).
CPU_SECONDS = "cpu_seconds"
GPU_SECONDS = "gpu_seconds"


@dataclass(frozen=True)
class Precision:
    """Mixed precision on GPU: bf16 where the device supports it, else fp16 with a scaler."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    scaler: torch.amp.GradScaler | None

    @classmethod
    def for_device(cls, device: torch.device, cfg: TrainConfig) -> Precision:
        if device.type != "cuda":  # CPU: fp32; autocast to bf16 is slower on most CPUs
            return cls(device, None, False, None)
        dtype = None
        if cfg.amp:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return cls(device, dtype, cfg.channels_last, scaler)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last \
            else images  # fmt: skip


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train for cfg.epochs, reporting metrics and a checkpoint every epoch; rank 0 returns
    the per-epoch history and the epochs at which the run resumed after a failure."""
    cfg = TrainConfig(**config["train"])
    spec = ModelSpec(**config["spec"])
    data_dir = Path(config["data_dir"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    seed_everything(cfg.seed)  # the same initial weights on every rank
    precision = Precision.for_device(ray.train.torch.get_device(), cfg)

    task = get_task(spec.task)
    train_set = task.dataset(data_dir, read_split(data_dir, "train"), spec,
                             augment=cfg.augment, seed=cfg.seed)  # fmt: skip
    val_set = task.dataset(data_dir, read_split(data_dir, "val"), spec)
    sampler: DistributedSampler[Any] = DistributedSampler(
        train_set, num_replicas=world, rank=rank, seed=cfg.seed
    )
    batch = max(1, cfg.batch_size // world)  # the global batch stays cfg.batch_size
    train_loader = _loader(train_set, cfg, batch, sampler=sampler)
    # Validation shards without padding, so the reduced metrics count each image once.
    val_loader = _loader(Subset(val_set, range(rank, len(val_set), world)), cfg, batch)

    model = build_model(spec)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model = ray.train.torch.prepare_model(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    start_epoch, history, resumes = _restore(model, optimizer, scheduler)

    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)  # the augmentation's draw
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        fitted = run_task_epoch(model, train_loader, precision, task, spec,
                                optimizer, loss=cfg.loss)  # fmt: skip
        scheduler.step()
        validated = run_task_epoch(model, val_loader, precision, task, spec)
        cpu_seconds, gpu_seconds = _epoch_compute(
            cpu_start, wall_start, precision.device
        )
        metrics = {
            "epoch": float(epoch),
            "lr": float(scheduler.get_last_lr()[0]),
            **{f"train_{key}": value for key, value in fitted.items()},
            **{f"val_{key}": value for key, value in validated.items()},
            CPU_SECONDS: cpu_seconds,
            GPU_SECONDS: gpu_seconds,
        }
        history.append(metrics)
        state = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "epoch": epoch, "history": history,
                 "resumes": resumes, "rng": _rng_state()}  # fmt: skip
        _report(metrics, state, rank)
    return {"history": history, "resumes": resumes}


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    precision: Precision,
    task: Task,
    spec: ModelSpec,
    loss: str = "ce",
) -> tuple[float, torch.Tensor]:
    """One optimiser step; returns (summed loss, the task's counts) over the batch."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        logits = model(images)
        value = task.loss(logits.float(), targets, spec, loss)
    if precision.scaler is not None:
        precision.scaler.scale(value).backward()  # type: ignore[no-untyped-call]
        precision.scaler.step(optimizer)
        precision.scaler.update()
    else:
        value.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return value.item() * len(targets), task.counts(logits.detach(), targets, spec)


@torch.no_grad()
def eval_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    precision: Precision,
    task: Task,
    spec: ModelSpec,
) -> tuple[float, torch.Tensor]:
    model.eval()
    with precision.autocast():
        logits = model(images)
    value = task.loss(logits.float(), targets, spec, "ce")
    return value.item() * len(targets), task.counts(logits, targets, spec)


def run_task_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    precision: Precision,
    task: Task,
    spec: ModelSpec,
    optimizer: torch.optim.Optimizer | None = None,
    loss: str = "ce",
) -> dict[str, float]:
    """The epoch's mean loss and the task's metrics, over all workers' batches (a train
    epoch when `optimizer` is given, else an evaluation)."""
    items = torch.zeros(2, dtype=torch.float64)  # loss sum, items
    counts: torch.Tensor | None = None
    for images, targets in loader:
        images = precision.to_device(images)
        targets = targets.to(precision.device, non_blocking=True)
        if optimizer is None:
            loss_sum, batch = eval_step(model, images, targets, precision, task, spec)
        else:
            loss_sum, batch = train_step(model, images, targets, optimizer, precision,
                                         task, spec, loss)  # fmt: skip
        items += torch.tensor([loss_sum, len(targets)], dtype=torch.float64)
        counts = batch if counts is None else counts + batch
    totals = _sum_across_workers(
        torch.cat([items, counts if counts is not None else task.zero_counts(spec)]),
        precision.device,
    )
    return {"loss": totals[0].item() / max(totals[1].item(), 1.0),
            **task.running_metrics(totals[2:])}  # fmt: skip


def run_epoch(
    model: nn.Module,
    loader: DataLoader[Any],
    precision: Precision,
    optimizer: torch.optim.Optimizer | None = None,
    spec: ModelSpec | None = None,
) -> tuple[float, float]:
    """(mean loss, the headline metric) of an epoch; classification unless `spec` says."""
    task = get_task(spec.task if spec else "classification")
    result = run_task_epoch(model, loader, precision, task, cast(ModelSpec, spec),
                            optimizer)  # fmt: skip
    return result["loss"], result[task.metric]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loader(
    dataset: Any, cfg: TrainConfig, batch: int, sampler: Any = None
) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=cfg.loader_workers,
        pin_memory=cfg.use_gpu,
        # Persistent workers would keep the dataset of epoch 0 (and its augmentation draw).
        persistent_workers=cfg.loader_workers > 0 and not cfg.augment,
    )


def _sum_across_workers(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    on_device = values.to(device)  # nccl reduces GPU tensors only
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device.cpu()


def _epoch_compute(
    cpu_start: float, wall_start: float, device: torch.device
) -> tuple[float, float]:
    """This epoch's compute summed over all workers: process CPU seconds, and GPU seconds
    (wall time of each worker holding a GPU; busy or not, it draws power). The model card
    turns them into energy with the power stated in params.card."""
    gpu = time.perf_counter() - wall_start if device.type == "cuda" else 0.0
    used = torch.tensor([time.process_time() - cpu_start, gpu], dtype=torch.float64)
    total = _sum_across_workers(used, device)
    return float(total[0]), float(total[1])


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return cast(nn.Module, model.module)
    return model


def _report(metrics: dict[str, float], state: dict[str, Any], rank: int) -> None:
    """Every rank reports; rank 0 attaches the checkpoint (all state needed to resume).

    The upload runs in the background (ASYNC) so the next epoch does not wait on storage;
    Ray deletes the local copy once it is uploaded. `reported_at` is the worker's wall clock
    (the controller sees reports only at its polls); it stays out of the history.
    """
    metrics = {**metrics, REPORTED_AT: time.time()}
    if rank != 0:
        ray.train.report(metrics)
        return
    folder = Path(tempfile.mkdtemp(prefix="checkpoint-"))
    torch.save(state, folder / CHECKPOINT_FILE)
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(folder),
        checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
        delete_local_checkpoint_after_upload=True,
    )


def _restore(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[int, list[dict[str, float]], list[int]]:
    """Resume from Ray's latest checkpoint after a worker failure; epoch 0 otherwise."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, [], []
    with checkpoint.as_directory() as folder:
        state = torch.load(
            Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True
        )
    _unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    next_epoch = state["epoch"] + 1
    return next_epoch, list(state["history"]), [*state["resumes"], next_epoch]


def _rng_state() -> dict[str, Any]:
    """RNG states as plain tuples and tensors, so the checkpoint loads with weights_only."""
    name, keys, position, has_gauss, gauss = cast(
        tuple[str, np.ndarray, int, int, float], np.random.get_state(legacy=True)
    )
    numpy_state = (
        name,
        torch.from_numpy(keys.astype(np.int64)),
        position,
        has_gauss,
        gauss,
    )
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": numpy_state,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), position, has_gauss, gauss)
    )
