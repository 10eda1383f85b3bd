from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

import components.validate as validate_module
from components.config import IngestConfig, ValidateConfig
from components.ingest import MANIFEST, ingest
from components.validate import validate
from tests.conftest import TINY_PARAMS
from tests.imagegen import make_image_folder

ROOT = Path(__file__).resolve().parents[2]


def ingest_folder(source: Path, out_dir: Path) -> Path:
    ingest(
        IngestConfig(source=str(source), val_fraction=0.2, test_fraction=0.2),
        out_dir=out_dir,
    )
    return out_dir


def png_with_header_size(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height but holds almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_valid_dataset_passes_with_data_docs(
    tiny_dataset, validate_cfg, tmp_path: Path
) -> None:
    result = validate(
        validate_cfg, data_dir=tiny_dataset.out_dir, report_dir=tmp_path / "report"
    )
    assert result.success, result.failed
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()
    assert (tmp_path / "report" / "summary.json").is_file()


def _truncated(source: Path) -> None:
    target = source / "class_0" / "img_000.png"
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])


def _not_an_image(source: Path) -> None:
    (source / "class_1" / "readme.txt").write_text("this is not an image")


def _bomb(source: Path) -> None:
    png_with_header_size(source / "class_2" / "bomb.png", 60_000, 60_000)


def _escaping_link(source: Path) -> None:
    outside = source.parent / "outside.png"
    shutil.copyfile(source / "class_0" / "img_001.png", outside)
    os.symlink(outside, source / "class_0" / "link.png")


def _same_image_two_labels(source: Path) -> None:
    shutil.copyfile(source / "class_0" / "img_002.png", source / "class_1" / "copy.png")


def _one_class(source: Path) -> None:
    shutil.rmtree(source / "class_1")
    shutil.rmtree(source / "class_2")


def _small_class(source: Path) -> None:
    for path in sorted((source / "class_2").iterdir())[3:]:
        path.unlink()


def _imbalanced(source: Path) -> None:
    make_image_folder(source / "extra", classes=1, per_class=30, seed=7)
    for path in (source / "extra" / "class_0").iterdir():
        path.rename(source / "class_0" / f"extra_{path.name}")
    shutil.rmtree(source / "extra")


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "truncated": (_truncated, "file decodes as an image", "images/class_0/img_000.png"),
    "not an image": (
        _not_an_image,
        "file decodes as an image",
        "images/class_1/readme.txt",
    ),
    "decompression bomb": (_bomb, "pixel dimensions within", "images/class_2/bomb.png"),
    "symlink out of root": (
        _escaping_link,
        "resolves inside the dataset root",
        "images/class_0/link.png",
    ),
    "same image two labels": (
        _same_image_two_labels,
        "no identical image under two labels",
        "images/class_1/copy.png",
    ),
    "one class": (_one_class, "at least 2 classes", "observed 1"),
    "class too small": (_small_class, "at least 5 images", "class_2"),
    "imbalanced": (_imbalanced, "largest class at most 3.0x", "class_1"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_is_refused_by_name(name: str, tmp_path: Path, validate_cfg) -> None:
    corrupt, check, item = BAD_INPUTS[name]
    source = make_image_folder(tmp_path / "source")
    corrupt(source)
    data_dir = ingest_folder(source, tmp_path / "dataset")
    result = validate(validate_cfg, data_dir=data_dir, report_dir=tmp_path / "report")
    assert not result.success
    assert any(check in failure and item in failure for failure in result.failed), (
        result.failed
    )
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()


def test_bomb_is_refused_without_decoding(
    tmp_path: Path, validate_cfg, monkeypatch
) -> None:
    source = make_image_folder(tmp_path / "source")
    png_with_header_size(
        source / "class_0" / "big.png", 5000, 5000
    )  # under ingest's limit
    data_dir = ingest_folder(source, tmp_path / "dataset")
    decoded: list[str] = []
    real_decode = validate_module.decode
    monkeypatch.setattr(
        validate_module,
        "decode",
        lambda path, **kw: decoded.append(path.name) or real_decode(path, **kw),
    )
    result = validate(validate_cfg, data_dir=data_dir, report_dir=tmp_path / "report")
    assert any("images/class_0/big.png" in failure for failure in result.failed)
    assert "big.png" not in decoded and len(decoded) == 36


def test_same_image_in_two_splits_is_leakage(tmp_path: Path, validate_cfg) -> None:
    source = make_image_folder(tmp_path / "source")
    shutil.copyfile(source / "class_0" / "img_003.png", source / "class_0" / "twin.png")
    data_dir = ingest_folder(source, tmp_path / "dataset")
    manifest = pd.read_parquet(data_dir / MANIFEST)
    twin = manifest["path"] == "images/class_0/twin.png"
    original_split = manifest.loc[
        manifest["path"] == "images/class_0/img_003.png", "split"
    ].item()
    assert (
        manifest.loc[twin, "split"].item() == original_split
    )  # ingest keeps twins together
    manifest.loc[twin, "split"] = "test" if original_split != "test" else "train"
    manifest.to_parquet(data_dir / MANIFEST, index=False)
    result = validate(validate_cfg, data_dir=data_dir, report_dir=tmp_path / "report")
    assert any(
        "no identical image in two splits" in f and "images/class_0/twin.png" in f
        for f in result.failed
    ), result.failed


def test_empty_dataset_and_deleted_file(tmp_path: Path, validate_cfg) -> None:
    empty = tmp_path / "empty"
    (empty / "class_0").mkdir(parents=True)
    result = validate(
        validate_cfg,
        data_dir=ingest_folder(empty, tmp_path / "d1"),
        report_dir=tmp_path / "r1",
    )
    assert any("dataset not empty" in f for f in result.failed), result.failed

    data_dir = ingest_folder(make_image_folder(tmp_path / "source"), tmp_path / "d2")
    (data_dir / "images" / "class_2" / "img_004.png").unlink()
    result = validate(validate_cfg, data_dir=data_dir, report_dir=tmp_path / "r2")
    assert any(
        "file exists" in f and "images/class_2/img_004.png" in f for f in result.failed
    )


def test_cli_exits_non_zero_naming_the_file(tmp_path: Path) -> None:
    source = make_image_folder(tmp_path / "source")
    _truncated(source)
    data_dir = ingest_folder(source, tmp_path / "dataset")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "components",
            "validate",
            "--data-dir",
            str(data_dir),
            "--report-dir",
            str(tmp_path / "report"),
            "--params",
            str(TINY_PARAMS),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1
    assert "file decodes as an image" in completed.stderr
    assert "images/class_0/img_000.png" in completed.stderr


def test_missing_manifest_is_named(tmp_path: Path, validate_cfg) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.parquet"):
        validate(validate_cfg, data_dir=tmp_path, report_dir=tmp_path / "report")


def test_params_bounds_apply(tmp_path: Path) -> None:
    strict = ValidateConfig(min_side=20)  # the tiny images are 12x12
    data_dir = ingest_folder(
        make_image_folder(tmp_path / "source"), tmp_path / "dataset"
    )
    result = validate(strict, data_dir=data_dir, report_dir=tmp_path / "report")
    assert any("pixel dimensions within [20, 4096]" in f for f in result.failed)
