"""The model's input from an image: one function for training, evaluation, the drift monitor
and the serving endpoint, so what a served model sees is bit for bit what it was scored on.

numpy and Pillow only: the serving process does not import torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from components.images import ImageSource, decode
from components.spec import ModelSpec

# Decoding is bounded by validate (and by serve's own limits); this only guards a loader
# pointed at an unvalidated folder.
MAX_PIXELS = 64_000_000


def to_pixels(
    source: ImageSource,
    spec: ModelSpec,
    *,
    max_pixels: int = MAX_PIXELS,
    sides: tuple[int, int] | None = None,
    name: str | None = None,
) -> np.ndarray:
    """The image as the model sees it before normalisation: resized to the spec, (C, H, W)
    float32 in [0, 1]. Raises ImageReadError naming the file (or `name`)."""
    image = decode(source, channels=spec.in_channels, max_pixels=max_pixels,
                   sides=sides, name=name)  # fmt: skip
    if image.size != (spec.image_size, spec.image_size):
        image = image.resize(
            (spec.image_size, spec.image_size), Image.Resampling.BILINEAR
        )
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    # (H, W) grey or (H, W, C) colour -> (C, H, W)
    pixels = pixels[None, :, :] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels)


def normalise(pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """`to_pixels` output (one image or a batch) in the units the model was trained on."""
    normalised: np.ndarray = (pixels - np.float32(spec.mean)) / np.float32(spec.std)
    return normalised
