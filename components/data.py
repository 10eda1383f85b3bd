"""Turning the dataset's manifest into tensors: decode, resize, normalise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from components.ingest import MANIFEST
from components.preprocess import normalise, to_pixels
from components.spec import ModelSpec

__all__ = ["ImageDataset", "input_contract", "read_split", "to_pixels", "to_tensor"]


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


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images of one split as normalised (C, H, W) float tensors and class indices."""

    def __init__(self, data_dir: Path, rows: pd.DataFrame, spec: ModelSpec) -> None:
        self.paths = [data_dir / p for p in rows["path"]]
        index_of = {name: i for i, name in enumerate(spec.classes)}
        unknown = sorted(set(rows["label"]) - set(index_of))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the model's classes")
        self.targets = [index_of[label] for label in rows["label"]]
        self.spec = spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_tensor(self.paths[index], self.spec), self.targets[index]


def to_tensor(path: Path, spec: ModelSpec) -> torch.Tensor:
    """The model's input: `to_pixels`, normalised with the training mean and std."""
    return torch.from_numpy(normalise(to_pixels(path, spec), spec))
