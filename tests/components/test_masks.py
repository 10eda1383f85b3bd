"""Segmentation labels (issue 12's data layer): the built-in shapes dataset, classes.yaml and
masks read as class ids, with the offending file named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.masks import (
    MaskError,
    class_pixels,
    read_classes,
    read_mask,
    stray_values,
)
from components.shapes import CLASSES, write_shapes

LIMIT = 1_000_000


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    write_shapes(root, count=40, size=48, seed=3)
    return root


def test_shapes_are_seeded_and_masks_match_their_images(
    shapes: Path, tmp_path: Path
) -> None:
    write_shapes(tmp_path, count=40, size=48, seed=3)
    for name in ("images/shapes_0000.png", "masks/shapes_0039.png", "classes.yaml"):
        assert (tmp_path / name).read_bytes() == (shapes / name).read_bytes()
    classes = read_classes(shapes / "classes.yaml")
    assert classes.names == CLASSES and classes.ignore_index == 255
    totals = dict.fromkeys(CLASSES.values(), 0)
    for path in sorted((shapes / "images").iterdir()):
        image = Image.open(path)
        mask = read_mask(shapes / "masks" / path.name, max_pixels=LIMIT)
        assert image.mode == "RGB" and image.size == mask.shape[::-1] == (48, 48)
        assert stray_values(mask, classes) == []
        for name, count in class_pixels(mask, classes).items():
            totals[name] += count
        # clutter, not a flat background: the photo's texture is behind the shapes
        background = np.asarray(image, dtype=np.float64)[mask == 0]
        assert background.std() > 10
    assert all(count > 0 for count in totals.values()), totals
    assert (
        totals["background"] > sum(totals.values()) / 3
    )  # objects do not fill the frame


def _png(array: np.ndarray, mode: str, palette: bool = False) -> bytes:
    image = Image.fromarray(array, mode=mode)
    if palette:
        image = image.convert("P")
        image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def test_a_palette_mask_is_read_by_index_and_rgb_is_refused() -> None:
    ids = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    as_palette = Image.fromarray(ids, mode="P")
    as_palette.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10] + [0] * 759)
    stream = io.BytesIO()
    as_palette.save(stream, format="PNG")
    assert np.array_equal(read_mask(stream.getvalue(), max_pixels=LIMIT), ids)
    rgb = np.stack([ids * 100] * 3, axis=-1)
    with pytest.raises(MaskError, match=r"cat_7\.png: a RGB image where one channel"):
        read_mask(_png(rgb, "RGB"), max_pixels=LIMIT, name="cat_7.png")
    with pytest.raises(MaskError, match=r"cut\.png"):
        read_mask(_png(ids, "L")[:40], max_pixels=LIMIT, name="cut.png")


def test_stray_values_and_bad_classes_files_are_named(tmp_path: Path) -> None:
    classes_file = tmp_path / "classes.yaml"
    classes_file.write_text("classes: {0: background, 1: road}\n")
    classes = read_classes(classes_file)
    mask = np.array([[0, 1, 255], [7, 1, 9]], dtype=np.uint8)
    assert stray_values(mask, classes) == [7, 9]
    for text, problem in [
        ("classes: [background, road]\n", "classes: {id: name}"),
        ("classes: {0: background}\n", "at least two classes"),
        ("classes: {0: a, 1: a}\n", "repeat"),
        ("classes: {0: a, 1: b}\nignore_index: 1\n", "ignore_index 1"),
        ("classes: {0: a, x: b}\n", "integers"),
    ]:
        classes_file.write_text(text)
        with pytest.raises(MaskError, match=r"classes\.yaml") as refused:
            read_classes(classes_file)
        assert problem in str(refused.value)
