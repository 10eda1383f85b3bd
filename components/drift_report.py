"""Evidently's side of the monitor: the drift report (HTML and JSON) over the same features,
tests and corrected level as drift_rule.judge, and the workspace project whose dashboard shows
drift share and per-feature p-values over time (`evidently ui --workspace <folder>`)."""

from __future__ import annotations

from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.legacy.calculations.stattests.registry import (
    StatTest,
    register_stattest,
)
from evidently.legacy.core import ColumnType
from evidently.metrics import DriftedColumnsCount, ValueDrift
from evidently.sdk.models import PanelMetric
from evidently.sdk.panels import counter_panel, line_plot_panel
from evidently.ui.workspace import RemoteWorkspace, Workspace

from components.drift_features import PREDICTED_CLASS, numerical_columns
from components.drift_rule import CLASS_MIX_TEST, class_mix_p_value


def _class_mix_test(
    reference: pd.Series, current: pd.Series, _type: ColumnType, threshold: float
) -> tuple[float, bool]:
    p_value = class_mix_p_value(reference, current)
    return p_value, p_value < threshold


# Evidently's extension point for tests: the report then runs the monitor's own test for
# the class mix, by name (its built-in "chisquare" is a goodness-of-fit test, see drift_rule).
register_stattest(
    StatTest(
        name=CLASS_MIX_TEST,
        display_name="chi-square homogeneity p_value",
        allowed_feature_types=[ColumnType.Categorical],
        default_threshold=0.05,
    ),
    _class_mix_test,
)


def drift_report(
    reference: pd.DataFrame, current: pd.DataFrame, corrected_alpha: float
) -> Snapshot:
    """Per-feature drift (p-values) and the count and share of drifted features."""
    numeric = numerical_columns(reference)
    definition = DataDefinition(
        numerical_columns=numeric, categorical_columns=[PREDICTED_CLASS]
    )
    metrics: list[Any] = [
        DriftedColumnsCount(
            columns=[*numeric, PREDICTED_CLASS],
            num_method="ks",
            num_threshold=corrected_alpha,
            per_column_method={PREDICTED_CLASS: CLASS_MIX_TEST},
            per_column_threshold={PREDICTED_CLASS: corrected_alpha},
        ),
        *[
            ValueDrift(column=c, method="ks", threshold=corrected_alpha)
            for c in numeric
        ],
        ValueDrift(
            column=PREDICTED_CLASS, method=CLASS_MIX_TEST, threshold=corrected_alpha
        ),
    ]
    return Report(metrics).run(
        current_data=Dataset.from_pandas(_plain(current), data_definition=definition),
        reference_data=Dataset.from_pandas(
            _plain(reference), data_definition=definition
        ),
    )


def drifted_count(snapshot: Snapshot) -> dict[str, float]:
    """Evidently's count and share of drifted features, from the snapshot."""
    for metric in snapshot.dict()["metrics"]:
        if str(metric["config"]["type"]).endswith("DriftedColumnsCount"):
            value: dict[str, float] = metric["value"]
            return value
    raise ValueError("the snapshot has no DriftedColumnsCount metric")


def publish(
    snapshot: Snapshot, workspace: str, project_name: str, features: list[str]
) -> str:
    """Add the snapshot to the workspace project (created, with its dashboard, on first use);
    `workspace` is a folder or the URL of a running `evidently ui`. Returns the project id."""
    space = (
        RemoteWorkspace(workspace)
        if workspace.startswith(("http://", "https://"))
        else Workspace(workspace)
    )
    found = space.search_project(project_name)
    if found:
        project = found[0]
    else:
        project = space.create_project(
            project_name, description="Drift of the image model's inputs and outputs"
        )
        _add_panels(project, features)
    space.add_run(project.id, snapshot, include_data=False)
    return str(project.id)


def _add_panels(project: Any, features: list[str]) -> None:
    dashboard = project.dashboard
    dashboard.add_panel(counter_panel(
        title="Drifted features (last run)",
        values=[PanelMetric(legend="drifted", metric="DriftedColumnsCount",
                            metric_labels={"value_type": "count"})],
        size="half",
    ))  # fmt: skip
    dashboard.add_panel(line_plot_panel(
        title="Share of drifted features",
        values=[PanelMetric(legend="share", metric="DriftedColumnsCount",
                            metric_labels={"value_type": "share"})],
        size="half",
    ))  # fmt: skip
    dashboard.add_panel(line_plot_panel(
        title="p-value per feature (drift below alpha / features)",
        values=[PanelMetric(legend=name, metric="ValueDrift",
                            metric_labels={"column": name}) for name in features],
    ))  # fmt: skip
    project.save()


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Evidently wants plain columns: the class as strings, not a pandas Categorical."""
    return frame.assign(**{PREDICTED_CLASS: frame[PREDICTED_CLASS].astype(str)})
