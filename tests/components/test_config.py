from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from components.config import (
    CardConfig,
    CompressConfig,
    EvaluateConfig,
    IngestConfig,
    MonitorConfig,
    ParamsError,
    PromoteConfig,
    ServeConfig,
    TrainConfig,
    TuneConfig,
    ValidateConfig,
    load_params,
    load_task_name,
)
from components.tasks import TASKS
from tests.conftest import TINY_PARAMS, tiny_params

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {
    "ingest": IngestConfig,
    "validate": ValidateConfig,
    "train": TrainConfig,
    "tune": TuneConfig,
    "compress": CompressConfig,
    "evaluate": EvaluateConfig,
    "promote": PromoteConfig,
    "card": CardConfig,
    "monitor": MonitorConfig,
    "serve": ServeConfig,
}


@pytest.mark.parametrize(
    "params_path",
    [
        ROOT / "params.yaml",
        ROOT / "params.segmentation.yaml",
        TINY_PARAMS,
        TINY_PARAMS.with_name("params.segmentation.tiny.yaml"),
    ],
)
def test_every_section_loads_and_no_section_is_unknown(params_path: Path) -> None:
    raw = yaml.safe_load(params_path.read_text())
    assert set(raw) - {"task"} == set(SECTIONS)
    assert load_task_name(params_path) in TASKS
    for section, config_type in SECTIONS.items():
        assert isinstance(load_params(section, config_type, params_path), config_type)


def test_unknown_task_is_named(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("task: detection\n")
    with pytest.raises(ParamsError, match=r"task: 'detection' is not one of"):
        load_task_name(path)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tiny_params(tmp_path, train={"learning_rate": 0.1})
    with pytest.raises(ParamsError, match=r"train\.learning_rate: unknown key"):
        load_params("train", TrainConfig, path)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    path = tiny_params(tmp_path, train={"epochs": "ten"})
    with pytest.raises(ParamsError, match=r"train\.epochs: .*'ten'"):
        load_params("train", TrainConfig, path)


def test_yaml_string_where_a_number_is_expected_is_refused(tmp_path: Path) -> None:
    # PyYAML reads 1e-3 (no dot) as a string: strict typing catches it instead of crashing later.
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 1e-3\n")
    with pytest.raises(ParamsError, match=r"train\.lr"):
        load_params("train", TrainConfig, path)


def test_out_of_range_value_is_named(tmp_path: Path) -> None:
    path = tiny_params(tmp_path, ingest={"val_fraction": 0.6, "test_fraction": 0.5})
    with pytest.raises(ParamsError, match=r"ingest"):
        load_params("ingest", IngestConfig, path)


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nope\.yaml: file not found"):
        load_params("train", TrainConfig, tmp_path / "nope.yaml")


def _flow_tasks(module: str) -> list[str]:
    tree = ast.parse((ROOT / "flows" / f"{module}.py").read_text())
    flow = next(
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == module
    )
    return [
        node.func.id.removesuffix("_task")
        for node in ast.walk(flow)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id.endswith("_task")
    ]


def test_dvc_stages_match_flow_tasks_in_order() -> None:
    """dvc.yaml is the training flow's stages in order, then the monitoring flow's."""
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert stages == _flow_tasks("training") + _flow_tasks("monitoring")


def test_dvc_stage_params_are_their_own_sections() -> None:
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())[
        "stages"
    ].items():
        # train runs the search; ingest also reads the top-level task (recorded in the data)
        extra = {"train": ["tune"]}.get(name, [])
        expected = (["task"] if name == "ingest" else []) + [name, *extra]
        assert stage["params"] == expected
        assert f"python -m components {name}" in stage["cmd"]


def test_nested_budget_key_is_named(tmp_path: Path) -> None:
    path = tiny_params(tmp_path, compress={"budget": {"max_size_bytes": "small"}})
    with pytest.raises(
        ParamsError, match=r"compress\.budget\.max_size_bytes: .*'small'"
    ):
        load_params("compress", CompressConfig, path)


def test_unknown_variant_is_named(tmp_path: Path) -> None:
    path = tiny_params(tmp_path, compress={"variants": ["fp32", "int4"]})
    with pytest.raises(ParamsError, match=r"compress\.variants\.1: .*'int4'"):
        load_params("compress", CompressConfig, path)
