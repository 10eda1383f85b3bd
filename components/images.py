"""Reading images safely: the header first, the pixels only when the header is within bounds."""

from __future__ import annotations

import io
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


class UndecodableImageError(ImageReadError):
    """The header was read but the pixel data was not (a truncated or corrupt file)."""


class ImageSizeError(ImageReadError):
    """A side is outside [min_side, max_side]; nothing was decoded."""


# A file on disk, or the bytes of one (an upload), named in errors by `name`.
ImageSource = Path | bytes


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
    with _open(path, str(path)) as image:
        width, height = image.size
        mode = image.mode
    return ImageHeader(width=width, height=height, channels=_CHANNELS.get(mode, 3))


def decode(
    source: ImageSource,
    *,
    channels: int,
    max_pixels: int,
    sides: tuple[int, int] | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode fully into 'L' (channels=1) or 'RGB' (channels=3), refusing oversized images
    (and, with `sides` = (min_side, max_side), images with a side out of those bounds)."""
    mode = "L" if channels == 1 else "RGB"
    return _decode(source, max_pixels=max_pixels, sides=sides, name=name, mode=mode)


def decode_raw(
    source: ImageSource,
    *,
    max_pixels: int,
    sides: tuple[int, int] | None = None,
    name: str | None = None,
) -> Image.Image:
    """`decode` without the conversion: the pixels in the file's own mode (a palette PNG
    keeps its indices, which is how segmentation masks are read)."""
    return _decode(source, max_pixels=max_pixels, sides=sides, name=name, mode=None)


def _decode(
    source: ImageSource,
    *,
    max_pixels: int,
    sides: tuple[int, int] | None,
    name: str | None,
    mode: str | None,
) -> Image.Image:
    """The file is opened once: the size comes from the header, checked before any pixel data
    is decoded. Truncated files raise here: PIL only notices missing data when it decodes.
    """
    label = name or str(source if isinstance(source, Path) else "<bytes>")
    with _open(source, label) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{label}: {width}x{height} pixels exceeds the limit of "
                f"{max_pixels} (refused without decoding)"
            )
        if (
            sides
            and not sides[0] <= min(width, height) <= max(width, height) <= sides[1]
        ):
            raise ImageSizeError(
                f"{label}: {width}x{height} has a side outside [{sides[0]}, {sides[1]}]"
            )
        try:
            image.load()
            return image.convert(mode) if mode else image.copy()
        except (OSError, ValueError, SyntaxError) as error:
            raise UndecodableImageError(
                f"{label}: cannot be decoded ({error})"
            ) from error


def _open(source: ImageSource, label: str) -> Image.Image:
    """Image.open (header only), with Pillow's own size warnings silenced (the caller
    judges size) and its errors turned into ours, naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(
                io.BytesIO(source) if isinstance(source, bytes) else source
            )
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(
            f"{label}: {error} (refused without decoding)"
        ) from error
    except (UnidentifiedImageError, OSError) as error:
        raise ImageReadError(f"{label}: not a readable image ({error})") from error


def pixel_stats(image: Image.Image) -> PixelStats:
    """Mean and standard deviation of the pixel values, scaled to [0, 1]."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return PixelStats(mean=float(pixels.mean()), std=float(pixels.std()))
