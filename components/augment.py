"""Training augmentations (train.augment), applied to an image and its mask together.

Seeded by the caller's generator, so a run is reproducible on any number of workers:
- hflip / vflip: mirror both;
- scale_crop: enlarge both by a random factor in [1, 1.5] and cut back to the same size at a
  random place (the image bilinear, the mask by nearest neighbour: class ids never blend).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Augmentation = Literal["hflip", "vflip", "scale_crop"]
MAX_SCALE = 1.5


def augment_pair(
    image: torch.Tensor,
    mask: torch.Tensor | None,
    augment: Sequence[str],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`image` (C, H, W) float and `mask` (H, W) ids (or None) with the same changes."""
    if "hflip" in augment and rng.random() < 0.5:
        image, mask = image.flip(-1), None if mask is None else mask.flip(-1)
    if "vflip" in augment and rng.random() < 0.5:
        image, mask = image.flip(-2), None if mask is None else mask.flip(-2)
    if "scale_crop" in augment:
        image, mask = _scale_crop(image, mask, rng)
    return image.contiguous(), None if mask is None else mask.contiguous()


def _scale_crop(
    image: torch.Tensor, mask: torch.Tensor | None, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    height, width = image.shape[-2:]
    scale = float(rng.uniform(1.0, MAX_SCALE))
    size = (max(height, round(height * scale)), max(width, round(width * scale)))
    top = int(rng.integers(0, size[0] - height + 1))
    left = int(rng.integers(0, size[1] - width + 1))
    window = (slice(top, top + height), slice(left, left + width))
    grown = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
    image = grown[0][:, window[0], window[1]]
    if mask is not None:
        grown_mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")
        mask = grown_mask[0, 0][window].to(mask.dtype)
    return image, mask
