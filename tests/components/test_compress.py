"""compress: pruning, QAT, ONNX parity, weights-only round trips, and the budget gate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from components.__main__ import app
from components.compress import (
    ONNX_FILE,
    QAT_STATE_FILE,
    CompressionBudgetError,
    Measurement,
    choose_variant,
    compress,
)
from components.config import (
    VARIANTS,
    CompressBudget,
    CompressConfig,
    load_params,
)
from components.model import ModelSpec, build_model, load_model, save_model
from components.onnx_model import OnnxModel, export_onnx
from components.pruning import (
    keep_masked,
    prune_channels,
    prune_global_magnitude,
    sparsity,
)
from components.quantize import freeze_qat, load_qat, prepare_qat
from tests.conftest import TINY_PARAMS, tiny_params


def _spec(arch: str, channels: int = 3, size: int = 16) -> ModelSpec:
    return ModelSpec(arch=arch, classes=["a", "b", "c"], in_channels=channels,
                     image_size=size, channels=[8, 16], hidden=16, dropout=0.0,
                     mean=0.5, std=0.25)  # fmt: skip


def _row(variant: str, *, drop: float = 0.0, gzip_bytes: int = 1000,
         latency: float = 1.0, accuracy: float = 0.9) -> Measurement:  # fmt: skip
    return Measurement(variant=variant, accuracy=accuracy, accuracy_drop_pts=drop,
                       pytorch_accuracy=accuracy, onnx_agreement=1.0, max_logit_diff=0.0,
                       onnx_bytes=gzip_bytes * 2, gzip_bytes=gzip_bytes,
                       latency_ms_b1=latency, latency_ms_b64=latency * 30,
                       parameters=100, sparsity=0.0)  # fmt: skip


# --- the budget: a pure choice ------------------------------------------------------------


def test_budget_ships_the_smallest_variant_that_meets_it() -> None:
    table = [
        _row("fp32", gzip_bytes=4000),
        _row("int8_qat", gzip_bytes=1000, drop=0.3),
        _row("pruned_channels_int8", gzip_bytes=600, drop=2.5),  # too inaccurate
        _row("pruned_unstructured_int8", gzip_bytes=800, latency=9.0),  # too slow
    ]
    budget = CompressBudget(max_accuracy_drop_pts=1.0, max_latency_ms=5.0,
                            max_size_bytes=5000)  # fmt: skip
    shipped, judged = choose_variant(table, budget)
    assert shipped.variant == "int8_qat"
    reasons = {row.variant: row.budget_failures for row in judged}
    assert reasons["fp32"] == () and reasons["int8_qat"] == ()
    assert "accuracy drop 2.50 pts > 1.0" in reasons["pruned_channels_int8"]
    assert any("latency" in r for r in reasons["pruned_unstructured_int8"])


def test_budget_breaks_size_ties_by_accuracy() -> None:
    table = [_row("fp32", gzip_bytes=900, accuracy=0.90),
             _row("int8_ptq", gzip_bytes=900, accuracy=0.95)]  # fmt: skip
    shipped, _ = choose_variant(table, CompressBudget())
    assert shipped.variant == "int8_ptq"


def test_budget_fails_closed_with_the_table_in_the_message() -> None:
    table = [_row("fp32", gzip_bytes=4000), _row("int8_qat", gzip_bytes=1000)]
    with pytest.raises(CompressionBudgetError) as caught:
        choose_variant(table, CompressBudget(max_size_bytes=500))
    message = str(caught.value)
    assert "fp32" in message and "int8_qat" in message
    assert "size 1000 B > 500 B" in message and "max_size_bytes 500" in message


# --- the building blocks ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_channel_pruned_model_round_trips_through_weights_only_files(
    arch: str, tmp_path: Path
) -> None:
    spec = _spec(arch)
    model = build_model(spec).eval()
    images = torch.randn(4, 3, 16, 16)
    before = sum(p.numel() for p in model.parameters())
    prune_channels(model, 0.5, images[:2])
    assert sum(p.numel() for p in model.parameters()) < 0.5 * before
    save_model(model, replace(spec, channel_pruned=True), tmp_path)
    loaded, loaded_spec = load_model(tmp_path)  # torch.load(weights_only=True) inside
    assert loaded_spec.channel_pruned
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


def test_global_magnitude_pruning_reaches_the_sparsity_and_fine_tuning_keeps_it() -> (
    None
):
    model = build_model(_spec("cnn"))
    masks = prune_global_magnitude(model, 0.7)
    assert sparsity(model) == pytest.approx(0.7, abs=0.01)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    optimizer.register_step_post_hook(keep_masked(model, masks))
    for _ in range(3):
        loss = model(torch.randn(8, 3, 16, 16)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert sparsity(model) == pytest.approx(0.7, abs=0.01)


def test_qat_graph_round_trips_through_a_weights_only_state_dict(
    tmp_path: Path,
) -> None:
    spec = _spec("resnet")
    example = torch.randn(2, 3, 16, 16)
    prepared = prepare_qat(build_model(spec), example)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=0.01)
    for _ in range(2):  # observers and fake-quant ranges move away from their defaults
        prepared.train()
        loss = torch.nn.functional.cross_entropy(prepared(torch.randn(8, 3, 16, 16)),
                                                 torch.randint(0, 3, (8,)))  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(prepared.state_dict(), tmp_path / QAT_STATE_FILE)
    reference = freeze_qat(prepared)
    state = torch.load(tmp_path / QAT_STATE_FILE, weights_only=True)
    rebuilt = load_qat(build_model(spec), example, state)
    images = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(images), reference(images))


def test_onnx_export_matches_pytorch_at_any_batch_size(tmp_path: Path) -> None:
    model = build_model(_spec("resnet")).eval()
    path = export_onnx(model, torch.randn(2, 3, 16, 16), tmp_path / "m.onnx")
    session = OnnxModel(path)
    for batch in (1, 7):
        images = torch.randn(batch, 3, 16, 16)
        with torch.no_grad():
            expected = model(images).numpy()
        np.testing.assert_allclose(session.logits(images.numpy()), expected, atol=1e-4)


# --- the stage ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compressed(candidate: Path, tiny_dataset, tmp_path_factory: pytest.TempPathFactory):
    cfg = load_params("compress", CompressConfig, TINY_PARAMS).model_copy(
        update={"variants": list(VARIANTS)}
    )
    out = tmp_path_factory.mktemp("compressed")
    result = compress(cfg, model_dir=candidate, data_dir=tiny_dataset.out_dir,
                      out_dir=out / "compressed", report_path=out / "compression.json")  # fmt: skip
    return result, out


def test_every_variant_is_built_exported_and_measured(compressed) -> None:
    _, out = compressed
    report = json.loads((out / "compression.json").read_text())
    rows = {row["variant"]: row for row in report["variants"]}
    assert set(rows) == set(VARIANTS)
    assert (out / "compression.png").stat().st_size > 0
    for name, row in rows.items():
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b64"] > row["latency_ms_b1"]
        assert 0 < row["gzip_bytes"] < row["onnx_bytes"]
        if "int8" in name:  # int8 weights: about a quarter of the float file
            assert row["onnx_bytes"] < 0.5 * rows["fp32"]["onnx_bytes"], name
            assert row["onnx_agreement"] >= 0.75, name
        else:  # float ONNX is PyTorch to rounding
            assert row["onnx_agreement"] == 1.0, name
            assert row["max_logit_diff"] < 1e-3, name
    assert rows["pruned_unstructured"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert rows["pruned_unstructured"]["gzip_bytes"] < rows["fp32"]["gzip_bytes"]
    assert rows["pruned_channels"]["parameters"] < rows["fp32"]["parameters"]
    # the summary compares the shipped variant with fp32
    assert report["summary"]["size_ratio"] == pytest.approx(
        rows["fp32"]["gzip_bytes"] / rows[report["shipped"]]["gzip_bytes"], rel=1e-3
    )


def test_the_shipped_variant_is_the_smallest_and_is_written_whole(compressed) -> None:
    result, out = compressed
    smallest = min(result.table, key=lambda row: (row.gzip_bytes, -row.accuracy))
    assert result.shipped == smallest.variant  # the tiny budget admits every variant
    folder = out / "compressed"
    assert (
        json.loads((folder / "variant.json").read_text())["variant"] == result.shipped
    )
    assert (
        json.loads((folder / "metrics.json").read_text())["variant"] == result.shipped
    )
    graph = onnx.load(str(folder / ONNX_FILE))
    ops = {node.op_type for node in graph.graph.node}
    if "int8" in result.shipped:
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert any(
            t.data_type == onnx.TensorProto.INT8 for t in graph.graph.initializer
        )
    # the float weights beside it reload, weights only, into the same network
    _, spec = load_model(folder)
    assert spec.channel_pruned == ("pruned_channels" in result.shipped)


def test_compress_cli_fails_closed_when_no_variant_fits(
    candidate: Path, tiny_dataset, tmp_path: Path
) -> None:
    params = tiny_params(tmp_path, compress={
        "variants": ["fp32", "int8_ptq"],
        "budget": {"max_accuracy_drop_pts": 100.0, "max_latency_ms": 1000.0,
                   "max_size_bytes": 10},
    })  # fmt: skip
    out_dir, report = tmp_path / "compressed", tmp_path / "compression.json"
    result = CliRunner().invoke(app, [
        "compress", "--model-dir", str(candidate), "--data-dir",
        str(tiny_dataset.out_dir), "--out-dir", str(out_dir), "--report", str(report),
        "--params", str(params),
    ])  # fmt: skip
    assert result.exit_code == 1
    assert "no variant meets params.compress.budget" in result.output
    assert "int8_ptq" in result.output and "> 10 B" in result.output
    assert not out_dir.exists() and not report.exists()
