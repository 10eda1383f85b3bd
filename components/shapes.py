"""builtin:shapes, the built-in semantic-segmentation dataset: seeded, generated offline.

Filled and outlined circles, squares and triangles of varied sizes, overlapping, in random
colours, over textured backgrounds cut from scikit-learn's two bundled photographs (a temple
and a flower), so a model must separate objects from clutter rather than threshold a flat
background. Written in the segmentation layout:

    images/<name>.png    RGB
    masks/<name>.png     one channel of class ids (0 background; later shapes cover earlier)
    classes.yaml         {classes: {0: background, 1: circle, 2: square, 3: triangle},
                          ignore_index: 255}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

CLASSES = {0: "background", 1: "circle", 2: "square", 3: "triangle"}
IGNORE_INDEX = 255
CLASSES_FILE = "classes.yaml"
_MIN_TEXTURE = 30.0  # pixel standard deviation a background crop needs (0..255)
_CROP_TRIES = 20


def write_shapes(
    out_dir: Path, *, count: int = 1000, size: int = 64, seed: int = 0
) -> None:
    """Write `count` images of `size` x `size` pixels and their masks under `out_dir`."""
    from sklearn.datasets import load_sample_images  # bundled photos: no network

    photos = [np.asarray(photo) for photo in load_sample_images().images]
    rng = np.random.default_rng(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, mask = _scene(photos, size, rng)
        name = f"shapes_{index:04d}.png"
        image.save(out_dir / "images" / name)
        mask.save(out_dir / "masks" / name)
    (out_dir / CLASSES_FILE).write_text(
        yaml.safe_dump({"classes": CLASSES, "ignore_index": IGNORE_INDEX})
    )


def _scene(
    photos: list[np.ndarray], size: int, rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    image = Image.fromarray(_background(photos, size, rng))
    mask = Image.new("L", (size, size), 0)
    draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 4))):
        label = int(rng.integers(1, len(CLASSES)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        outline = int(rng.integers(3, 6)) if rng.random() < 0.25 else 0
        points = _shape(label, size, rng)
        for draw, fill in ((draw_image, colour), (draw_mask, label)):
            _draw(draw, label, points, fill, outline)
    return image, mask


def _background(
    photos: list[np.ndarray], size: int, rng: np.random.Generator
) -> np.ndarray:
    """A random crop of a bundled photo, at a random scale, sometimes mirrored; crops of
    nearly flat regions (the temple photo's sky) are drawn again."""
    for _ in range(_CROP_TRIES):
        photo = photos[int(rng.integers(len(photos)))]
        side = int(rng.integers(size, min(photo.shape[:2]) // 2))
        top = int(rng.integers(0, photo.shape[0] - side))
        left = int(rng.integers(0, photo.shape[1] - side))
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        pixels = np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))
        if pixels.std() >= _MIN_TEXTURE:
            break
    return pixels[:, ::-1].copy() if rng.random() < 0.5 else pixels


def _shape(
    label: int, size: int, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """The shape's bounding box (circle, square) or corners (triangle), in pixels."""
    radius = float(rng.uniform(size * 0.14, size * 0.3))
    x, y = (float(v) for v in rng.uniform(radius, size - radius, size=2))
    if label == 3:
        turn = float(rng.uniform(0, 2 * np.pi))
        return [(x + radius * np.cos(turn + k * 2 * np.pi / 3),
                 y + radius * np.sin(turn + k * 2 * np.pi / 3)) for k in range(3)]  # fmt: skip
    return [(x - radius, y - radius), (x + radius, y + radius)]


def _draw(draw: ImageDraw.ImageDraw, label: int, points: list[tuple[float, float]],
          fill: tuple[int, ...] | int, outline: int) -> None:  # fmt: skip
    """Filled, or only its outline `outline` pixels wide; no anti-aliasing, so the mask
    and the image agree on every pixel."""
    paint: dict[str, object] = (
        {"outline": fill, "width": outline} if outline else {"fill": fill}
    )
    if label == 1:
        draw.ellipse(points, **paint)  # type: ignore[arg-type]
    elif label == 2:
        draw.rectangle(points, **paint)  # type: ignore[arg-type]
    else:
        draw.polygon(points, **paint)  # type: ignore[arg-type]
