"""Reading images safely: the header first, the pixels only when the header is within bounds."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Files that are not images at all are refused by validate, not skipped; only these are
# ignored as the litter of file managers and editors.
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})

_CHANNELS = {
    "1": 1,
    "L": 1,
    "LA": 1,
    "I": 1,
    "I;16": 1,
    "F": 1,
    "P": 3,
    "RGB": 3,
    "RGBA": 3,
    "CMYK": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
}


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and why."""


class ImageTooLargeError(ImageReadError):
    """The header declares more pixels than allowed; nothing was decoded."""


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    channels: int


@dataclass(frozen=True)
class PixelStats:
    mean: float
    std: float


def read_header(path: Path) -> ImageHeader:
    """Size and channel count from the file header alone: no pixel data is decoded."""
    with _open(path) as image:
        width, height = image.size
        mode = image.mode
    return ImageHeader(width=width, height=height, channels=_CHANNELS.get(mode, 3))


def decode(path: Path, *, channels: int, max_pixels: int) -> Image.Image:
    """Decode fully into 'L' (channels=1) or 'RGB' (channels=3), refusing oversized images.

    The file is opened once: the size comes from the header, checked before any pixel data
    is decoded. Truncated files raise here: PIL only notices missing data when it decodes.
    """
    with _open(path) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{path}: {width}x{height} pixels exceeds the limit of "
                f"{max_pixels} (refused without decoding)"
            )
        try:
            image.load()
            return image.convert("L" if channels == 1 else "RGB")
        except (OSError, ValueError, SyntaxError) as error:
            raise ImageReadError(f"{path}: cannot be decoded ({error})") from error


def _open(path: Path) -> Image.Image:
    """Image.open (header only), with Pillow's own size warnings silenced (the caller
    judges size) and its errors turned into ours, naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"{path}: {error} (refused without decoding)"
        ) from error
    except (UnidentifiedImageError, OSError) as error:
        raise ImageReadError(f"{path}: not a readable image ({error})") from error


def pixel_stats(image: Image.Image) -> PixelStats:
    """Mean and standard deviation of the pixel values, scaled to [0, 1]."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return PixelStats(mean=float(pixels.mean()), std=float(pixels.std()))
