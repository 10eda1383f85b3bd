"""Turning the dataset's manifest into tensors: decode, resize, normalise."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from components.augment import augment_pair
from components.ingest import MANIFEST
from components.masks import read_mask
from components.preprocess import MAX_PIXELS, normalise, to_pixels
from components.spec import ModelSpec

__all__ = [
    "ImageDataset",
    "LabelledImages",
    "MaskDataset",
    "input_contract",
    "read_split",
    "to_pixels",
    "to_target_mask",
    "to_tensor",
]


def read_split(data_dir: Path, split: str) -> pd.DataFrame:
    manifest = pd.read_parquet(data_dir / MANIFEST)
    part = (
        manifest[manifest["split"] == split].sort_values("path").reset_index(drop=True)
    )
    if part.empty:
        raise ValueError(f"{data_dir / MANIFEST}: split '{split}' has no images")
    return part


def input_contract(train_rows: pd.DataFrame) -> tuple[int, float, float]:
    """Channels (RGB if any image has colour) and normalisation from the train split's stats.

    The pooled std combines each image's variance with the spread of the image means.
    """
    in_channels = 3 if int(train_rows["channels"].max()) >= 3 else 1
    means = train_rows["pixel_mean"].to_numpy(dtype=np.float64)
    variances = train_rows["pixel_std"].to_numpy(dtype=np.float64) ** 2
    mean = float(means.mean())
    std = float(np.sqrt(variances.mean() + means.var()))
    return in_channels, mean, max(std, 1e-3)


class LabelledImages(Dataset[tuple[torch.Tensor, Any]]):
    """A split's (normalised image, target) pairs, with seeded augmentation: item i in
    epoch e always gets the same draw, on any worker."""

    def __init__(self, augment: Sequence[str], seed: int) -> None:
        self.augment, self.seed, self.epoch = tuple(augment), seed, 0
        self.paths: list[Path] = []

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])


class ImageDataset(LabelledImages):
    """Images of one split as normalised (C, H, W) float tensors and class indices."""

    def __init__(self, data_dir: Path, rows: pd.DataFrame, spec: ModelSpec,
                 augment: Sequence[str] = (), seed: int = 0) -> None:  # fmt: skip
        super().__init__(augment, seed)
        self.paths = [data_dir / p for p in rows["path"]]
        index_of = {name: i for i, name in enumerate(spec.classes)}
        unknown = sorted(set(rows["label"]) - set(index_of))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the model's classes")
        self.targets = [index_of[label] for label in rows["label"]]
        self.spec = spec

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = to_tensor(self.paths[index], self.spec)
        if self.augment:
            image, _ = augment_pair(image, None, self.augment, self._rng(index))
        return image, self.targets[index]


class MaskDataset(LabelledImages):
    """Images and their masks (segmentation): a normalised (C, H, W) float tensor and an
    (H, W) int64 tensor of class ids (spec.ignore_index where unlabelled), both at the
    model's resolution, augmented together."""

    def __init__(self, data_dir: Path, rows: pd.DataFrame, spec: ModelSpec,
                 augment: Sequence[str] = (), seed: int = 0) -> None:  # fmt: skip
        super().__init__(augment, seed)
        self.paths = [data_dir / p for p in rows["path"]]
        self.masks = [data_dir / p for p in rows["mask_path"]]
        self.spec = spec

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = to_tensor(self.paths[index], self.spec)
        mask = torch.from_numpy(to_target_mask(self.masks[index], self.spec))
        if self.augment:
            image, augmented = augment_pair(image, mask, self.augment, self._rng(index))
            assert augmented is not None
            mask = augmented
        return image, mask.long()


def to_target_mask(path: Path, spec: ModelSpec) -> np.ndarray:
    """A mask at the model's resolution: (H, W) int64 class ids, resized by nearest
    neighbour (a class id is never blended with another)."""
    mask = read_mask(path, max_pixels=MAX_PIXELS)
    if mask.shape != (spec.image_size, spec.image_size):
        mask = np.asarray(
            Image.fromarray(mask).resize(
                (spec.image_size, spec.image_size), Image.Resampling.NEAREST
            )
        )
    return mask.astype(np.int64)


def to_tensor(path: Path, spec: ModelSpec) -> torch.Tensor:
    """The model's input: `to_pixels`, normalised with the training mean and std."""
    return torch.from_numpy(normalise(to_pixels(path, spec), spec))
