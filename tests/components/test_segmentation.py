"""The segmentation task's data and training pieces: ingest of images + masks, every mask
check of validate named, joint augmentation, and the running metrics against the evaluated
ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from components.augment import augment_pair
from components.config import IngestConfig, TrainConfig, ValidateConfig
from components.ingest import DATASET_JSON, MANIFEST, ingest
from components.masks import MaskError
from components.segmentation_metrics import pixel_confusion, segmentation_summary
from components.shapes import write_shapes
from components.spec import ModelSpec
from components.tasks import get_task
from components.validate import validate

SEGMENTATION = get_task("segmentation")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "source"
    write_shapes(root, count=30, size=32, seed=3)
    return root


def _ingest(source: Path | str, out: Path) -> Path:
    ingest(IngestConfig(source=str(source), val_fraction=0.2, test_fraction=0.2),
           out_dir=out, task="segmentation")  # fmt: skip
    return out


def test_ingest_records_masks_classes_and_the_task(
    shapes: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "source"
    shutil.copytree(shapes, copy)
    # An identical image and mask under another name: content-addressed, same split.
    shutil.copy(copy / "images/shapes_0000.png", copy / "images/twin.png")
    shutil.copy(copy / "masks/shapes_0000.png", copy / "masks/twin.png")
    data = _ingest(copy, tmp_path / "dataset")
    summary = json.loads((data / DATASET_JSON).read_text())
    assert summary["task"] == "segmentation"
    assert summary["classes"] == ["background", "circle", "square", "triangle"]
    assert summary["ignore_index"] == 255 and summary["orphan_masks"] == []
    manifest = pd.read_parquet(data / MANIFEST).set_index("path")
    row = manifest.loc["images/shapes_0000.png"]
    assert row["mask_path"] == "masks/shapes_0000.png" and row["mask_problem"] is None
    mask = np.asarray(Image.open(copy / "masks/shapes_0000.png"))
    assert row["pixels_circle"] == int((mask == 1).sum())
    assert manifest.loc["images/twin.png", "split"] == row["split"]
    assert (data / "classes.yaml").is_file()
    # the mask is part of the content: changing one pixel changes the dataset's hash
    mask = mask.copy()
    mask[0, 0] = 3 if mask[0, 0] != 3 else 2
    Image.fromarray(mask, mode="L").save(copy / "masks/twin.png")
    again = _ingest(copy, tmp_path / "dataset2")
    assert (
        json.loads((again / DATASET_JSON).read_text())["content_hash"]
        != (summary["content_hash"])
    )


def test_validate_names_every_broken_mask(shapes: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(shapes, source)
    (source / "masks/shapes_0001.png").unlink()  # an image without its mask
    Image.new("L", (32, 32)).save(source / "masks/orphan.png")  # a mask without image
    Image.new("L", (16, 16), 1).save(source / "masks/shapes_0002.png")  # wrong size
    stray = np.zeros((32, 32), np.uint8)
    stray[:4, :4] = 7
    Image.fromarray(stray, mode="L").save(source / "masks/shapes_0003.png")
    Image.new("RGB", (32, 32), (1, 1, 1)).save(source / "masks/shapes_0004.png")
    data = _ingest(source, tmp_path / "dataset")
    result = validate(ValidateConfig(max_empty_share=0.2), data_dir=data,
                      report_dir=tmp_path / "report")  # fmt: skip
    assert not result.success
    failed = "\n".join(result.failed)
    assert "images/shapes_0001.png (an image without a mask)" in failed
    assert "masks/orphan.png (a mask without an image)" in failed
    assert "masks/shapes_0002.png (16x16, its image 32x32)" in failed
    assert "masks/shapes_0003.png (values [7] are not declared class ids)" in failed
    assert "masks/shapes_0004.png (a RGB image where one channel of class ids" in failed


def test_validate_wants_every_class_in_train_and_few_empty_masks(
    shapes: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(shapes, source)
    for mask in sorted((source / "masks").glob("*.png"))[
        :12
    ]:  # 12 of 30 all background
        Image.new("L", (32, 32), 0).save(mask)
    classes = yaml.safe_load((source / "classes.yaml").read_text())
    classes["classes"][4] = "hexagon"  # declared, never drawn
    (source / "classes.yaml").write_text(yaml.safe_dump(classes))
    data = _ingest(source, tmp_path / "dataset")
    result = validate(ValidateConfig(max_empty_share=0.2), data_dir=data,
                      report_dir=tmp_path / "report")  # fmt: skip
    failed = "\n".join(result.failed)
    assert "every class has pixels in the train split: 1 offending: hexagon" in failed
    assert (
        "share of all-background masks at most 0.2" in failed and "12 of 30" in failed
    )


def test_classes_yaml_missing_or_with_gaps_is_named(
    shapes: Path, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    shutil.copytree(shapes, source)
    (source / "classes.yaml").write_text(yaml.safe_dump({"classes": {0: "bg", 2: "x"}}))
    with pytest.raises(MaskError, match=r"classes.yaml: class ids must be 0..1"):
        _ingest(source, tmp_path / "a")
    (source / "classes.yaml").unlink()
    with pytest.raises(MaskError, match=r"no classes.yaml"):
        _ingest(source, tmp_path / "b")


def test_augmentation_moves_image_and_mask_together_and_is_seeded() -> None:
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[4:12, 20:30] = 2
    image = mask[None].float().repeat(3, 1, 1)  # each pixel's value is its class
    kinds = ("hflip", "vflip", "scale_crop")
    for seed in range(20):
        out, out_mask = augment_pair(image, mask, kinds, np.random.default_rng(seed))
        assert out_mask is not None and out.shape == image.shape
        assert set(out_mask.unique().tolist()) <= {0, 2}  # never a blended id
        inside = out_mask == 2
        assert out[0][inside].mean() > 1.5 and out[0][~inside].mean() < 0.5
        again, again_mask = augment_pair(
            image, mask, kinds, np.random.default_rng(seed)
        )
        assert torch.equal(out, again) and torch.equal(out_mask, again_mask)


def test_running_miou_matches_the_evaluated_miou_and_ignores_unlabelled() -> None:
    spec = ModelSpec(arch="unet", classes=["background", "a", "b"], in_channels=3,
                     image_size=8, channels=[4], hidden=4, dropout=0.0, mean=0.5, std=0.25,
                     task="segmentation")  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, 8, 8, generator=generator)
    targets = torch.randint(0, 3, (4, 8, 8), generator=generator)
    targets[:, 0] = 255
    counts = SEGMENTATION.counts(logits[:2], targets[:2], spec) + SEGMENTATION.counts(
        logits[2:], targets[2:], spec
    )
    running = SEGMENTATION.running_metrics(counts)
    confusion = pixel_confusion(logits.argmax(1).numpy(), targets.numpy(), 3, 255)
    evaluated = segmentation_summary(confusion, list(spec.classes))
    assert running["miou"] == pytest.approx(evaluated["miou"])
    assert running["pixel_accuracy"] == pytest.approx(evaluated["pixel_accuracy"])
    # what the model says on unlabelled pixels changes neither the loss nor the counts
    changed = logits.clone()
    changed[:, :, 0] = 100.0
    for kind in ("ce", "ce_dice"):
        assert SEGMENTATION.loss(changed, targets, spec, kind).item() == pytest.approx(
            SEGMENTATION.loss(logits, targets, spec, kind).item()
        )
    assert torch.equal(
        SEGMENTATION.counts(changed, targets, spec),
        SEGMENTATION.counts(logits, targets, spec),
    )


def test_s3_segmentation_source_matches_local(
    shapes: Path, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="masks")
    for path in shapes.rglob("*"):
        if path.is_file():
            s3.upload_file(
                str(path), "masks", f"v1/{path.relative_to(shapes).as_posix()}"
            )
    remote = json.loads(
        (_ingest("s3://masks/v1", tmp_path / "s3") / DATASET_JSON).read_text()
    )
    local = json.loads((_ingest(shapes, tmp_path / "local") / DATASET_JSON).read_text())
    assert remote["content_hash"] == local["content_hash"]
    assert remote["classes"] == local["classes"]


def test_the_augmentation_draw_changes_with_the_epoch_only(
    shapes: Path, tmp_path: Path
) -> None:
    from components.data import read_split
    from components.train import model_spec

    data = _ingest(shapes, tmp_path / "dataset")
    cfg = TrainConfig(
        arch="unet", image_size=32, channels=[8], augment=["hflip", "vflip"]
    )
    spec = model_spec(cfg, data)
    rows = read_split(data, "train")
    first = SEGMENTATION.dataset(data, rows, spec, augment=cfg.augment, seed=0)
    second = SEGMENTATION.dataset(data, rows, spec, augment=cfg.augment, seed=0)
    masks = [first[i][1] for i in range(8)]
    assert all(torch.equal(m, second[i][1]) for i, m in enumerate(masks))
    first.set_epoch(1)
    assert any(not torch.equal(m, first[i][1]) for i, m in enumerate(masks))
