"""ingest: copy a source into a versioned image dataset with a manifest and a stable split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from components.config import IngestConfig
from components.images import ImageReadError, decode, pixel_stats, read_header
from components.io import atomic_dir, sha256_file, write_json
from components.sources import source_fingerprint
from components.tasks import DATASET_JSON as DATASET_JSON
from components.tasks import get_task

IMAGES = "images"
MANIFEST = "manifest.parquet"
SPLITS = ("train", "val", "test")
# One row per image; sizes are null and statistics NaN where the file could not be read.
# `label` is the class (classification) or the stratum of the split (segmentation: the
# mask's largest object class). The task adds its own columns after these.
MANIFEST_COLUMNS = (
    "path",
    "sha256",
    "label",
    "split",
    "height",
    "width",
    "channels",
    "pixel_mean",
    "pixel_std",
)


@dataclass(frozen=True)
class IngestResult:
    out_dir: Path
    content_hash: str
    num_images: int
    classes: list[str]


def ingest(
    cfg: IngestConfig, *, out_dir: Path, task: str = "classification"
) -> IngestResult:
    """Copy `cfg.source` into `out_dir` in `task`'s layout; write manifest.parquet and
    dataset.json (which records the task for every later stage) there.

    Unreadable files are kept and recorded with empty statistics: validate names them.
    When the source and params are unchanged since the last ingest into `out_dir`, nothing
    is rewritten: the Prefect flow re-ingests on every run and pays only a listing for it.
    """
    marker = out_dir.parent / f".{out_dir.name}.source.json"
    fingerprint = {"source": source_fingerprint(cfg.source),
                   "params": {**cfg.model_dump(), "task": task}}  # fmt: skip
    current = _unchanged_since_last_ingest(out_dir, marker, fingerprint)
    if current is not None:
        return _result(out_dir, current)
    marker.unlink(missing_ok=True)
    with atomic_dir(out_dir) as staging:
        handler = get_task(task)
        handler.copy_source(cfg.source, staging)
        manifest = handler.describe(staging, cfg.max_pixels)
        manifest["split"] = _assign_splits(manifest, cfg)
        extra = [c for c in manifest.columns if c not in MANIFEST_COLUMNS]
        manifest[[*MANIFEST_COLUMNS, *extra]].to_parquet(
            staging / MANIFEST, index=False
        )
        summary = _summarise(
            manifest, cfg.source, task, handler.summary(staging, manifest)
        )
        write_json(staging / DATASET_JSON, summary)
    write_json(marker, {**fingerprint, "content_hash": summary["content_hash"]})
    return _result(out_dir, summary)


def _unchanged_since_last_ingest(
    out_dir: Path, marker: Path, fingerprint: dict[str, Any]
) -> dict[str, Any] | None:
    """dataset.json if `out_dir` still holds what the last ingest of this same source wrote
    (a `dvc checkout` of another version changes the content hash and forces a new ingest)."""
    if not (marker.is_file() and (out_dir / DATASET_JSON).is_file()):
        return None
    recorded = json.loads(marker.read_text())
    summary = json.loads((out_dir / DATASET_JSON).read_text())
    same_source = {k: recorded.get(k) for k in fingerprint} == fingerprint
    return (
        summary
        if same_source and recorded.get("content_hash") == summary["content_hash"]
        else None
    )


def _result(out_dir: Path, summary: dict[str, Any]) -> IngestResult:
    return IngestResult(
        out_dir=out_dir,
        content_hash=summary["content_hash"],
        num_images=summary["num_images"],
        classes=summary["classes"],
    )


def describe_images(
    root: Path, paths: list[Path], max_pixels: int, labels: list[str]
) -> pd.DataFrame:
    """The manifest's image columns (all but `split`) for `paths` under `root`."""
    rows = [_describe(root, path, max_pixels) | {"label": label}
            for path, label in tqdm(zip(paths, labels, strict=True), total=len(paths),
                                    desc="describe")]  # fmt: skip
    frame = pd.DataFrame(
        rows,
        columns=[c for c in MANIFEST_COLUMNS if c != "split"],
    )
    for column in ("height", "width", "channels"):
        frame[column] = frame[column].astype("Int64")  # nullable: unreadable files stay
    return frame


def _describe(root: Path, path: Path, max_pixels: int) -> dict[str, object]:
    relative = path.relative_to(root).as_posix()
    row: dict[str, object] = {
        "path": relative,
        "sha256": None,
    }
    if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
        return row  # never read through a link that leaves the dataset
    row["sha256"] = sha256_file(path)
    try:
        header = read_header(path)
        row.update(height=header.height, width=header.width, channels=header.channels)
        image = decode(path, channels=header.channels, max_pixels=max_pixels)
    except ImageReadError:
        return row
    stats = pixel_stats(image)
    row.update(pixel_mean=stats.mean, pixel_std=stats.std)
    return row


def _assign_splits(manifest: pd.DataFrame, cfg: IngestConfig) -> pd.Series:
    """Stratified by label, deterministic, and by content: identical files share a split.

    Groups (one per distinct sha256) are ordered by hash before the seeded shuffle, so the
    split depends on the content only, not on file names or on the order of the source.
    """
    group_key = manifest["sha256"].fillna("path:" + manifest["path"])
    groups = manifest.assign(group=group_key).groupby("group")["label"].min()
    split_of_group: dict[str, str] = {}
    rng = np.random.default_rng(cfg.seed)
    for label in sorted(groups.unique()):
        members = sorted(groups.index[groups == label])
        order = [members[i] for i in rng.permutation(len(members))]
        n_test, n_val = _split_sizes(len(order), cfg)
        for position, group in enumerate(order):
            split_of_group[group] = (
                "test"
                if position < n_test
                else "val"
                if position < n_test + n_val
                else "train"
            )
    return group_key.map(split_of_group)


def _split_sizes(count: int, cfg: IngestConfig) -> tuple[int, int]:
    if count < 3:  # too few to split; validate refuses the class by name
        return 0, 0
    n_test = max(1, round(count * cfg.test_fraction))
    n_val = max(1, round(count * cfg.val_fraction))
    n_val = max(1, min(n_val, count - 1 - n_test))  # keep at least one image for train
    n_test = min(n_test, count - 1 - n_val)
    return n_test, n_val


def _summarise(
    manifest: pd.DataFrame, source: str, task: str, labels: dict[str, Any]
) -> dict[str, object]:
    """dataset.json: the content hash (every file's path and sha256, and the labels), the
    task and its label facts, and the image count per split and stratum."""
    content = hashlib.sha256("".join(labels.pop("content")).encode())
    counts = {
        split: {str(k): int(v) for k, v in part.groupby("label").size().items()}
        for split, part in manifest.groupby("split")
    }
    return {
        "content_hash": content.hexdigest(),
        "task": task,
        "num_images": len(manifest),
        **labels,
        "counts": counts,
        "source": source,
    }
