from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import pandas as pd
import pytest

from components.config import IngestConfig
from components.ingest import DATASET_JSON, MANIFEST, ingest
from components.sources import SourceError
from tests.imagegen import make_image_folder


def cfg(source: Path | str, **changes: object) -> IngestConfig:
    values: dict[str, object] = {
        "val_fraction": 0.2,
        "test_fraction": 0.2,
        "seed": 0,
        **changes,
    }
    return IngestConfig(source=str(source), **values)


def test_local_folder_gives_manifest_and_summary(
    image_folder: Path, tmp_path: Path
) -> None:
    result = ingest(cfg(image_folder), out_dir=tmp_path / "dataset")
    manifest = pd.read_parquet(tmp_path / "dataset" / MANIFEST)
    assert set(manifest.columns) >= {
        "path",
        "sha256",
        "label",
        "split",
        "height",
        "width",
        "channels",
        "pixel_mean",
        "pixel_std",
    }
    assert len(manifest) == result.num_images == 36
    assert result.classes == ["class_0", "class_1", "class_2"]
    assert all((tmp_path / "dataset" / p).is_file() for p in manifest["path"])
    assert (
        manifest["pixel_mean"].between(0, 1).all() and (manifest["channels"] == 1).all()
    )
    summary = json.loads((tmp_path / "dataset" / DATASET_JSON).read_text())
    assert summary["content_hash"] == result.content_hash
    assert sum(n for split in summary["counts"].values() for n in split.values()) == 36


def test_split_is_stratified_and_deterministic(
    image_folder: Path, tmp_path: Path
) -> None:
    first = ingest(cfg(image_folder), out_dir=tmp_path / "a")
    second = ingest(cfg(image_folder), out_dir=tmp_path / "b")
    one = pd.read_parquet(tmp_path / "a" / MANIFEST)
    two = pd.read_parquet(tmp_path / "b" / MANIFEST)
    pd.testing.assert_frame_equal(one, two)
    assert first.content_hash == second.content_hash
    per_class = one.groupby(["label", "split"]).size().unstack()
    assert (per_class[["train", "val", "test"]] >= 2).all().all()
    other_seed = pd.read_parquet(
        ingest(cfg(image_folder, seed=1), out_dir=tmp_path / "c").out_dir / MANIFEST
    )
    assert not other_seed["split"].equals(one["split"])


def test_same_content_same_hash_whatever_the_order(
    image_folder: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(image_folder, copy)
    (copy / "class_0" / "img_000.png").touch()  # a new mtime does not change content
    a = ingest(cfg(image_folder), out_dir=tmp_path / "a")
    b = ingest(cfg(copy), out_dir=tmp_path / "b")
    assert a.content_hash == b.content_hash
    shutil.copyfile(copy / "class_1" / "img_001.png", copy / "class_1" / "img_000.png")
    assert ingest(cfg(copy), out_dir=tmp_path / "c").content_hash != a.content_hash


def test_rgb_images_of_any_size(tmp_path: Path) -> None:
    source = make_image_folder(
        tmp_path / "rgb", rgb=True, vary_size=True, size=(20, 30)
    )
    ingest(cfg(source), out_dir=tmp_path / "dataset")
    manifest = pd.read_parquet(tmp_path / "dataset" / MANIFEST)
    assert (manifest["channels"] == 3).all()
    assert manifest["height"].nunique() > 1 and manifest["width"].nunique() > 1
    assert set(manifest["path"].str.rsplit(".", n=1).str[1]) == {"png", "jpg"}


def test_builtin_digits(tmp_path: Path) -> None:
    result = ingest(cfg("builtin:digits"), out_dir=tmp_path / "digits")
    manifest = pd.read_parquet(tmp_path / "digits" / MANIFEST)
    assert result.num_images == 1797 and result.classes == [str(d) for d in range(10)]
    assert (manifest["height"] == 8).all() and (manifest["width"] == 8).all()


def test_s3_source_matches_local_and_writes_no_secret(
    image_folder: Path, tmp_path: Path, aws_env: dict[str, str]
) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="images")
    for path in image_folder.rglob("*.png"):
        s3.upload_file(
            str(path), "images", f"v1/{path.relative_to(image_folder).as_posix()}"
        )
    remote = ingest(cfg("s3://images/v1"), out_dir=tmp_path / "from_s3")
    local = ingest(cfg(image_folder), out_dir=tmp_path / "from_local")
    assert remote.content_hash == local.content_hash
    written = b"".join(
        p.read_bytes() for p in (tmp_path / "from_s3").rglob("*") if p.is_file()
    )
    for secret in (
        aws_env["AWS_SECRET_ACCESS_KEY"],
        aws_env["AWS_ACCESS_KEY_ID"],
        aws_env["AWS_ENDPOINT_URL"],
    ):
        assert secret.encode() not in written


def test_empty_s3_prefix_is_named(tmp_path: Path, aws_env: dict[str, str]) -> None:
    boto3.client("s3").create_bucket(Bucket="empty")
    with pytest.raises(SourceError, match="no objects under 's3://empty/none'"):
        ingest(cfg("s3://empty/none"), out_dir=tmp_path / "dataset")


def test_file_outside_a_class_folder_is_named(
    image_folder: Path, tmp_path: Path
) -> None:
    (image_folder / "stray.png").write_bytes(b"x")
    with pytest.raises(SourceError, match=r"stray\.png: not inside a class folder"):
        ingest(cfg(image_folder), out_dir=tmp_path / "dataset")


def test_missing_folder_and_unknown_builtin_are_named(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        ingest(cfg(tmp_path / "missing"), out_dir=tmp_path / "dataset")
    with pytest.raises(SourceError, match="builtin:cifar"):
        ingest(cfg("builtin:cifar"), out_dir=tmp_path / "dataset")


def test_failure_keeps_the_previous_output(image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    good = ingest(cfg(image_folder), out_dir=out)
    (image_folder / "stray.png").write_bytes(b"x")
    with pytest.raises(SourceError):
        ingest(cfg(image_folder), out_dir=out)
    assert (
        json.loads((out / DATASET_JSON).read_text())["content_hash"]
        == good.content_hash
    )
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unreadable_files_are_kept_for_validate(
    image_folder: Path, tmp_path: Path
) -> None:
    (image_folder / "class_0" / "notes.txt").write_text("not an image")
    ingest(cfg(image_folder), out_dir=tmp_path / "dataset")
    manifest = pd.read_parquet(tmp_path / "dataset" / MANIFEST).set_index("path")
    row = manifest.loc["images/class_0/notes.txt"]
    assert pd.isna(row["height"]) and pd.isna(row["pixel_mean"]) and row["sha256"]


def test_unchanged_source_is_not_copied_again(
    image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dataset"
    first = ingest(cfg(image_folder), out_dir=out)
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert ingest(cfg(image_folder), out_dir=out) == first
    assert (out / MANIFEST).stat().st_mtime_ns == stamp  # skipped: nothing rewritten
    shutil.copyfile(
        image_folder / "class_2" / "img_000.png", image_folder / "class_2" / "new.png"
    )
    changed = ingest(cfg(image_folder), out_dir=out)
    assert changed.num_images == first.num_images + 1
    assert (
        ingest(cfg(image_folder, seed=3), out_dir=out).content_hash
        == changed.content_hash
    )
    assert (
        out / MANIFEST
    ).stat().st_mtime_ns != stamp  # params changed: ingested again
