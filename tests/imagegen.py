"""Tiny synthetic image datasets: a few classes of easy, distinct patterns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pattern(
    label: int, height: int, width: int, rng: np.random.Generator
) -> np.ndarray:
    """Class 0: horizontal stripes, 1: vertical stripes, 2: a bright centre; plus noise."""
    rows, cols = np.mgrid[0:height, 0:width]
    if label == 0:
        base = (rows // 2) % 2
    elif label == 1:
        base = (cols // 2) % 2
    else:
        centre = (abs(rows - height / 2) < height / 4) & (
            abs(cols - width / 2) < width / 4
        )
        base = centre.astype(int)
    pixels = base * 200.0 + 25 + rng.normal(0, 12, size=(height, width))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path,
    *,
    classes: int = 3,
    per_class: int = 12,
    size: tuple[int, int] = (12, 12),
    rgb: bool = False,
    vary_size: bool = False,
    seed: int = 0,
) -> Path:
    """Write `<root>/class_<k>/img_<i>.png`; RGB images get a per-class tint."""
    rng = np.random.default_rng(seed)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            height, width = size
            if vary_size:
                height, width = (
                    height + int(rng.integers(0, 9)),
                    width + int(rng.integers(0, 9)),
                )
            grey = pattern(label, height, width, rng)
            if rgb:
                tint = np.array([1.0, 0.8, 0.6])[
                    [label % 3, (label + 1) % 3, (label + 2) % 3]
                ]
                image = Image.fromarray(
                    (grey[..., None] * tint).astype(np.uint8), mode="RGB"
                )
                image.save(
                    folder / f"img_{index:03d}.jpg"
                    if index % 2
                    else folder / f"img_{index:03d}.png"
                )
            else:
                Image.fromarray(grey, mode="L").save(folder / f"img_{index:03d}.png")
    return root
