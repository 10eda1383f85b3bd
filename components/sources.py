"""Where ingest copies images from: the built-in digits, a local folder, or an S3 prefix.

Every source lands in the same layout, `<images_dir>/<class>/<file>`, with the bytes copied
unchanged, so the same content gives the same manifest (and content hash) from any source.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from components.images import IGNORED_NAMES

BUILTIN_DIGITS = "builtin:digits"
# Concurrent S3 downloads: per-request latency, not bandwidth, bounds many small images
# (botocore keeps 10 connections per client).
S3_DOWNLOAD_THREADS = 10


# Where a source file lands, relative to the target folder (raises SourceError naming it).
RelativePath = Callable[[PurePosixPath | Path, str], Path]


class SourceError(ValueError):
    """The source cannot be read in the expected layout; the message names the item."""


def copy_source(source: str, images_dir: Path) -> None:
    """Copy every file of `source` into `images_dir/<class>/...`."""
    if source == BUILTIN_DIGITS:
        _write_digits(images_dir)
    elif source.startswith("s3://"):
        _download_s3(source, images_dir)
    elif source.startswith("builtin:"):
        raise SourceError(f"ingest.source: unknown built-in dataset '{source}'")
    else:
        _copy_folder(Path(source), images_dir)


def copy_tree(source: str, root: Path) -> None:
    """Copy every file of a folder or s3:// prefix into `root`, keeping relative paths (a
    task's own layout, e.g. segmentation's images/, masks/ and classes.yaml)."""
    if source.startswith("builtin:"):
        raise SourceError(f"ingest.source: unknown built-in dataset '{source}'")
    if source.startswith("s3://"):
        _download_s3(source, root, _inside)
    else:
        _copy_folder(Path(source), root, _inside)


def source_fingerprint(source: str) -> str:
    """A cheap fingerprint of the source's current state: names, sizes and change markers
    (mtimes locally, ETags on S3), without reading any file's content."""
    if source.startswith("builtin:"):  # generated from the installed scikit-learn
        from importlib.metadata import version

        return f"{source} scikit-learn=={version('scikit-learn')}"
    if source.startswith("s3://"):
        entries = [
            f"{item['Key']}\t{item['ETag']}\t{item['Size']}"
            for item in _list_s3(source)[2]
        ]
    else:
        root = Path(source)
        entries = (
            [
                f"{p.relative_to(root)}\t{p.lstat().st_size}\t{p.lstat().st_mtime_ns}"
                for p in _walk_files(root)
            ]
            if root.is_dir()
            else []
        )
    return hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()


def _write_digits(images_dir: Path) -> None:
    """scikit-learn's bundled 8x8 digits (values 0..16), written as 8-bit grey PNGs."""
    from sklearn.datasets import load_digits  # imported here: only this source needs it

    digits = load_digits()
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for index, (image, label) in enumerate(
        tqdm(zip(pixels, digits.target, strict=True), total=len(pixels), desc="digits")
    ):
        class_dir = images_dir / str(label)
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image, mode="L").save(class_dir / f"digit_{index:04d}.png")


def _copy_folder(
    root: Path, images_dir: Path, relative_to: RelativePath | None = None
) -> None:
    place = relative_to or _class_relative
    if not root.is_dir():
        raise SourceError(f"ingest.source: folder '{root}' does not exist")
    real_root = root.resolve()
    files = sorted(_walk_files(root))
    for path in tqdm(files, desc="copy", unit="file"):
        relative = path.relative_to(root)
        target = images_dir / place(relative, str(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() and not path.resolve().is_relative_to(real_root):
            # Keep the escaping link as a link (never read what it points to) so that
            # validate refuses it by name instead of the copy hiding it.
            os.symlink(os.readlink(path), target)
        else:
            shutil.copyfile(path, target)


def _walk_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for folder, _dirs, names in os.walk(root):  # does not descend into linked folders
        found.extend(Path(folder) / name for name in names if not _ignored(name))
    return found


def _download_s3(
    uri: str, images_dir: Path, relative_to: RelativePath | None = None
) -> None:
    """Download `s3://bucket/prefix/<class>/<file>` (or, with `relative_to`, any layout);
    endpoint and keys come from AWS_* env."""
    place = relative_to or _class_relative
    client, prefix, items = _list_s3(uri)
    bucket = uri.removeprefix("s3://").partition("/")[0]
    if not items:
        raise SourceError(f"ingest.source: no objects under '{uri}'")

    def target(key: str) -> Path:
        relative = PurePosixPath(key[len(prefix) :])
        return images_dir / place(relative, f"s3://{bucket}/{key}")

    # Every key is checked before anything is fetched.
    targets = {key: target(key) for key in sorted(item["Key"] for item in items)}
    for folder in {target.parent for target in targets.values()}:
        folder.mkdir(parents=True, exist_ok=True)

    def fetch(key: str) -> None:
        client.download_file(bucket, key, str(targets[key]))

    with ThreadPoolExecutor(S3_DOWNLOAD_THREADS) as pool:
        for _ in tqdm(pool.map(fetch, targets), total=len(targets), desc="s3",
                      unit="object"):  # fmt: skip
            pass


def download_unlabelled(uri: str, target: Path) -> list[Path]:
    """Download every object under `s3://bucket/prefix` (any depth, no class folders: the
    monitor's current batch) into `target`, keeping the key's relative path."""
    client, prefix, items = _list_s3(uri)
    bucket = uri.removeprefix("s3://").partition("/")[0]
    paths = []
    for item in sorted(items, key=lambda entry: str(entry["Key"])):
        relative = PurePosixPath(item["Key"][len(prefix) :])
        if any(part in ("", ".", "..") for part in relative.parts):
            raise SourceError(f"s3://{bucket}/{item['Key']}: path leaves the prefix")
        path = target / Path(*relative.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, item["Key"], str(path))
        paths.append(path)
    return paths


def _list_s3(uri: str) -> tuple[Any, str, list[dict[str, Any]]]:
    import boto3  # imported here: only this source needs it

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    client = boto3.client("s3")
    items = [
        item
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        )
        for item in page.get("Contents", [])
        if not item["Key"].endswith("/")
        and not _ignored(PurePosixPath(item["Key"]).name)
    ]
    return client, prefix, items


def _class_relative(relative: PurePosixPath | Path, item: str) -> Path:
    parts = relative.parts
    if len(parts) < 2:
        raise SourceError(
            f"{item}: not inside a class folder (expected <class>/<file>)"
        )
    if any(part in ("", ".", "..") for part in parts):
        raise SourceError(f"{item}: path leaves the dataset root")
    return Path(*parts)


def _inside(relative: PurePosixPath | Path, item: str) -> Path:
    if any(part in ("", ".", "..") for part in relative.parts):
        raise SourceError(f"{item}: path leaves the dataset root")
    return Path(*relative.parts)


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES
