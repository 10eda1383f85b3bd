"""The Great Expectations suites of validate, and running them with Data Docs.

Each expectation carries `meta.check`, a short name used in error messages and summaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import ValidateConfig
from components.ingest import MANIFEST_COLUMNS, SPLITS

_MAX_NAMED = 20  # offending items named per failed expectation; the JSON has them all


@dataclass(frozen=True)
class SuiteOutcome:
    success: bool
    failed: list[str]
    results: dict[str, Any]


def manifest_expectations(cfg: ValidateConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    def one(
        column: str, check: str
    ) -> Any:  # nulls (a check that did not apply) are skipped
        return gxe.ExpectColumnValuesToBeBetween(
            column=column, min_value=1, max_value=1, meta={"check": check}
        )

    return [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=1, meta={"check": "dataset not empty"}
        ),
        *[
            gxe.ExpectColumnToExist(column=c, meta={"check": f"manifest has {c}"})
            for c in MANIFEST_COLUMNS
        ],
        gxe.ExpectColumnValuesToBeUnique(column="path", meta={"check": "paths unique"}),
        gxe.ExpectColumnValuesToNotBeNull(
            column="label", meta={"check": "label present"}
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="split",
            value_set=list(SPLITS),
            meta={"check": "split is train/val/test"},
        ),
        _true("inside_root", "file resolves inside the dataset root"),
        _true("exists", "file exists"),
        _true("checksum_ok", "file matches its manifest sha256"),
        _true(
            "within_bounds",
            f"pixel dimensions within [{cfg.min_side}, {cfg.max_side}] per side and "
            f"{cfg.max_pixels} pixels (header only)",
        ),
        _true("decodes", "file decodes as an image"),
        one("labels_with_same_content", "no identical image under two labels"),
        one("splits_with_same_content", "no identical image in two splits (leakage)"),
    ]


def class_expectations(cfg: ValidateConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=cfg.min_classes,
            meta={"check": f"at least {cfg.min_classes} classes"},
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="images",
            min_value=cfg.min_images_per_class,
            meta={
                "check": f"every class has at least {cfg.min_images_per_class} images"
            },
        ),
        *[
            gxe.ExpectColumnValuesToBeBetween(
                column=split,
                min_value=1,
                meta={"check": f"every class has {split} images"},
            )
            for split in SPLITS
        ],
        gxe.ExpectColumnValuesToBeBetween(
            column="imbalance",
            max_value=cfg.max_class_imbalance,
            meta={
                "check": f"largest class at most {cfg.max_class_imbalance}x this class"
            },
        ),
    ]


def class_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Classification: images per class and split, and each class's imbalance."""
    counts = manifest.groupby(["label", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(SPLITS), fill_value=0)
    table = counts.assign(images=counts.sum(axis=1)).reset_index()
    largest = table["images"].max() if len(table) else 0
    table["imbalance"] = largest / table["images"].clip(lower=1)
    table["label"] = table["label"].astype(str)
    return table


def mask_expectations() -> list[Any]:
    """Segmentation: one row per image and per orphan mask (components/tasks/segmentation)."""

    return [
        _true("paired", "every image has exactly one mask and every mask an image"),
        _true("reads_as_ids", "mask is one channel of class ids (grey or palette PNG)"),
        _true("same_size", "mask has its image's width and height"),
        _true("declared_values", "mask values are declared class ids or the ignore id"),
    ]


def segmentation_class_expectations(cfg: ValidateConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="train_pixels",
            min_value=1,
            meta={"check": "every class has pixels in the train split"},
        )
    ]


def _true(column: str, check: str) -> Any:
    """Every value is True; nulls (a check that did not apply to the row) are skipped."""
    import great_expectations.expectations as gxe

    return gxe.ExpectColumnValuesToBeInSet(
        column=column, value_set=[True], meta={"check": check}
    )


def run_suites(
    suites: dict[str, tuple[pd.DataFrame, list[Any], str]], *, docs_dir: Path
) -> SuiteOutcome:
    """Run each (frame, expectations, id column) as a GX checkpoint; build Data Docs."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")  # no network calls from GX
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name="validation", site_config=_site_config(docs_dir)
    )
    source = context.data_sources.add_pandas("dataset")
    failed: list[str] = []
    results: dict[str, Any] = {}
    for name, (frame, expectations, id_column) in suites.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(
            "all"
        )
        suite = context.suites.add(
            gx.ExpectationSuite(name=name, expectations=expectations)
        )
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=name,
                validation_definitions=[definition],
                actions=[
                    gx.checkpoint.UpdateDataDocsAction(
                        name="docs", site_names=["validation"]
                    )
                ],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": [id_column],
                },
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": frame})
        results[name] = run.describe_dict()
        failed += [
            _describe_failure(name, result, id_column)
            for validation in run.run_results.values()
            for result in validation.results
            if not result.success
        ]
    return SuiteOutcome(success=not failed, failed=failed, results=results)


def _describe_failure(suite: str, result: Any, id_column: str) -> str:
    check = result.expectation_config.meta.get("check", result.expectation_config.type)
    if result.exception_info and result.exception_info.get("raised_exception"):
        return (
            f"{suite}: {check}: could not be evaluated "
            f"({result.exception_info.get('exception_message')})"
        )
    offending = [
        str(row[id_column]) for row in result.result.get("unexpected_index_list") or []
    ]
    if not offending:
        return f"{suite}: {check} (observed {result.result.get('observed_value')})"
    named = ", ".join(offending[:_MAX_NAMED])
    more = (
        f" and {len(offending) - _MAX_NAMED} more"
        if len(offending) > _MAX_NAMED
        else ""
    )
    return f"{suite}: {check}: {len(offending)} offending: {named}{more}"


def _site_config(docs_dir: Path) -> Any:  # GX's TypedDict; plain dict at runtime
    return {
        "class_name": "SiteBuilder",
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir.resolve()),
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
