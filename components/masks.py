"""Segmentation labels: classes.yaml, and masks read as class ids with errors that name the
file. (Issue 12's data layer; ingest and validate read segmentation datasets through it.)"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from components.images import ImageReadError, ImageSource, decode_raw

DEFAULT_IGNORE_INDEX = 255


class MaskError(ValueError):
    """A mask or classes.yaml cannot be used as labels; the message names the file."""


@dataclass(frozen=True)
class SegmentationClasses:
    names: dict[int, str]  # class id -> name
    ignore_index: int = DEFAULT_IGNORE_INDEX


def read_classes(path: Path) -> SegmentationClasses:
    """classes.yaml: `classes: {0: background, 1: ...}` and optional `ignore_index`."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise MaskError(f"{path}: cannot be read ({error})") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("classes"), dict):
        raise MaskError(f"{path}: expected a mapping with 'classes: {{id: name}}'")
    names = raw["classes"]
    if not all(isinstance(k, int) and 0 <= k < 255 for k in names):
        raise MaskError(
            f"{path}: class ids must be integers 0..254 (got {list(names)})"
        )
    if not all(isinstance(v, str) and v for v in names.values()):
        raise MaskError(f"{path}: class names must be non-empty strings")
    if len(set(names.values())) != len(names):
        raise MaskError(f"{path}: class names repeat: {sorted(names.values())}")
    ignore = raw.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if not isinstance(ignore, int) or ignore in names or not 0 <= ignore <= 255:
        raise MaskError(
            f"{path}: ignore_index {ignore!r} must be 0..255 and no class id"
        )
    if len(names) < 2:
        raise MaskError(f"{path}: at least two classes (background and one more)")
    if sorted(names) != list(range(len(names))):
        # The model's output channel k is class id k.
        raise MaskError(
            f"{path}: class ids must be 0..{len(names) - 1} without gaps "
            f"(got {sorted(names)})"
        )
    return SegmentationClasses(dict(sorted(names.items())), ignore)


def read_mask(
    source: ImageSource, *, max_pixels: int, name: str | None = None
) -> np.ndarray:
    """(H, W) uint8 class ids. A palette PNG is read by index; a mask with colour channels
    is refused: class ids were expected, and colours are not ids."""
    label = name or str(source)
    try:
        image = decode_raw(source, max_pixels=max_pixels, name=label)
    except ImageReadError as error:
        raise MaskError(str(error)) from error
    if image.mode in ("P", "L"):
        return np.asarray(image, dtype=np.uint8)
    if image.mode in ("I", "I;16") and int(np.asarray(image).max(initial=0)) <= 255:
        return np.asarray(image).astype(np.uint8)
    raise MaskError(
        f"{label}: a {image.mode} image where one channel of class ids was expected "
        "(save masks as 8-bit grey or palette PNGs, the class id in each pixel)"
    )


def stray_values(mask: np.ndarray, classes: SegmentationClasses) -> list[int]:
    """Values in `mask` that are neither a declared class id nor the ignore index."""
    allowed = np.array([*classes.names, classes.ignore_index], dtype=np.uint8)
    present = np.unique(mask)
    return [int(v) for v in present[~np.isin(present, allowed)]]


def class_pixels(mask: np.ndarray, classes: SegmentationClasses) -> dict[str, int]:
    """Pixels of each class in `mask` (the manifest's per-class counts)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return {name: int(counts[index]) for index, name in classes.names.items()}
