"""validate: Great Expectations suites over the manifest, the files and the classes.

The checks that need the files (decoding, header bounds, links, checksums) become columns of
the manifest frame first; GX then judges every column and names the offending rows by path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from components.config import ValidateConfig
from components.gx_suites import manifest_expectations, run_suites
from components.images import ImageReadError, ImageTooLargeError, decode, read_header
from components.ingest import MANIFEST
from components.io import atomic_dir, sha256_file, write_json
from components.tasks import dataset_task


class DataValidationError(RuntimeError):
    """The dataset failed validation; `failed` names each expectation and offending items."""

    def __init__(self, failed: list[str]) -> None:
        super().__init__("data validation failed:\n  " + "\n  ".join(failed))
        self.failed = failed


@dataclass(frozen=True)
class ValidateResult:
    success: bool
    report_dir: Path
    failed: list[str] = field(default_factory=list)


def validate(
    cfg: ValidateConfig, *, data_dir: Path, report_dir: Path
) -> ValidateResult:
    """Validate the dataset in `data_dir`; write results and Data Docs under `report_dir`.

    Returns success=False with every failure named; the caller decides to stop.
    """
    manifest = _read_manifest(data_dir)
    files = _check_files(manifest, data_dir, cfg)
    labels = dataset_task(data_dir).label_suites(manifest, data_dir, cfg)
    with atomic_dir(report_dir) as staging:
        outcome = run_suites(
            {"manifest": (files, manifest_expectations(cfg), "path"), **labels},
            docs_dir=staging / "data_docs",
        )
        write_json(staging / "results.json", outcome.results)
        write_json(
            staging / "summary.json",
            {
                "success": outcome.success,
                "failed": outcome.failed,
                "images": len(manifest),
            },
        )
    return ValidateResult(
        success=outcome.success, report_dir=report_dir, failed=outcome.failed
    )


def _read_manifest(data_dir: Path) -> pd.DataFrame:
    path = data_dir / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest is missing (run ingest first)")
    try:
        return pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path}: manifest cannot be read ({error})") from error


def _check_files(
    manifest: pd.DataFrame, data_dir: Path, cfg: ValidateConfig
) -> pd.DataFrame:
    """One row per image with the file-level facts GX judges."""
    root = data_dir.resolve()
    checks = [
        _check_file(data_dir / str(path), root, cfg, sha)
        for path, sha in tqdm(
            zip(manifest["path"], manifest["sha256"], strict=True),
            total=len(manifest),
            desc="validate files",
        )
    ]
    frame = pd.concat([manifest.reset_index(drop=True), pd.DataFrame(checks)], axis=1)
    content = frame["sha256"]
    frame["labels_with_same_content"] = frame.groupby(content)["label"].transform(
        "nunique"
    )
    frame["splits_with_same_content"] = frame.groupby(content)["split"].transform(
        "nunique"
    )
    return frame


def _check_file(
    path: Path, root: Path, cfg: ValidateConfig, sha256: str | None
) -> dict[str, object]:
    """Never read through a link that leaves the root; never decode past the header bounds."""
    facts: dict[str, object] = {
        "inside_root": path.resolve().is_relative_to(root),
        "exists": None,
        "checksum_ok": None,
        "within_bounds": None,
        "decodes": None,
    }
    if not facts["inside_root"]:
        return facts
    facts["exists"] = path.is_file()
    if not facts["exists"]:
        return facts
    facts["checksum_ok"] = sha256 == sha256_file(path)
    try:
        header = read_header(path)
    except ImageTooLargeError:
        facts["within_bounds"] = False
        return facts
    except ImageReadError:
        facts["decodes"] = False
        return facts
    facts["within_bounds"] = (
        cfg.min_side <= min(header.width, header.height)
        and max(header.width, header.height) <= cfg.max_side
        and header.width * header.height <= cfg.max_pixels
    )
    if facts["within_bounds"]:
        try:
            decode(path, channels=header.channels, max_pixels=cfg.max_pixels)
            facts["decodes"] = True
        except ImageReadError:
            facts["decodes"] = False
    return facts
