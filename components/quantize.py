"""Quantization-aware training to int8 (torchao PT2E) and the int8 ONNX that ships.

Training side: torchao's PT2E flow, the maintained successor of torch.ao.quantization
(deprecated in torch 2.13). The model is captured with torch.export, fake-quantized by the
X86InductorQuantizer (uint8 per-tensor activations, int8 per-channel symmetric weights,
conv-BN folding simulated during training) and fine-tuned.

Deployment side: ONNX Runtime's static QDQ quantizer, with the same scheme (uint8
activations, int8 per-channel weights), applied to the QAT-trained weights and calibrated on
training images. Why not export the PT2E graph itself (it exports, as a QDQ graph)? Its Q/DQ
placement is the one Inductor fuses, not ONNX Runtime: residual adds and block outputs stay
in float, so ORT runs half the convolutions in fp32 with layout changes between them; on the
residual network that int8 graph measured slower than fp32 (1.69 ms vs 1.38 ms at batch 1),
against 0.42 ms for ORT's placement. The QAT graph itself, observers frozen, stays the
PyTorch int8 reference the ONNX file is checked against: convert_pt2e would compute the same
numbers with explicit quantize/dequantize ops, but it spends 15 s on the small CNN searching
for conv-BN patterns to fold.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import cast

import numpy as np
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn
from torchao.quantization.pt2e import (
    allow_exported_model_train_eval,
    disable_observer,
)
from torchao.quantization.pt2e.quantize_pt2e import (
    convert_pt2e,
    prepare_pt2e,
    prepare_qat_pt2e,
)
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)


def prepare_qat(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Capture `model` (any batch size) and insert fake quantization for QAT.

    The result trains like a module (`.train()` / `.eval()` work); its parameters and
    BatchNorm buffers keep the names of `model`'s, which `qat_weights` relies on.
    """
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True)
    )
    prepared = prepare_qat_pt2e(_capture(model.train(), example), quantizer)
    allow_exported_model_train_eval(prepared)
    return cast(torch.fx.GraphModule, prepared)


def quantize_ptq(
    model: nn.Module, example: torch.Tensor, calibration: Iterable[np.ndarray]
) -> torch.fx.GraphModule:
    """Post-training int8 (no fine-tune): observers calibrated on `calibration`, converted."""
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config()
    )
    prepared = prepare_pt2e(_capture(model.eval(), example), quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(torch.from_numpy(batch))
    return cast(torch.fx.GraphModule, convert_pt2e(prepared))


def load_qat(
    model: nn.Module, example: torch.Tensor, state: dict[str, torch.Tensor]
) -> torch.fx.GraphModule:
    """Rebuild the int8 PyTorch model from a QAT graph's saved state dict (weights only)."""
    prepared = prepare_qat(model, example)
    prepared.load_state_dict(state)
    return freeze_qat(prepared)


def _capture(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    return graph.module()


def freeze_qat(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The trained QAT graph as an int8 inference model: quantization ranges frozen (no
    observer updates on what it is run on), BatchNorm in inference mode."""
    prepared.apply(disable_observer)
    prepared.eval()
    return prepared


def qat_weights(prepared: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """The QAT-trained weights and BatchNorm statistics, keyed as `model`'s state dict."""
    trained = prepared.state_dict()
    wanted = model.state_dict()
    missing = sorted(set(wanted) - set(trained))
    if missing:
        raise RuntimeError(f"QAT graph lost these tensors: {missing}")
    return {name: trained[name].detach().clone() for name in wanted}


class _Batches(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self._feeds = iter([{input_name: batch} for batch in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_onnx(
    fp32_path: Path, out_path: Path, input_name: str, calibration: Iterable[np.ndarray]
) -> None:
    """Write the int8 QDQ model of `fp32_path` to `out_path`, calibrated on `calibration`."""
    with tempfile.TemporaryDirectory() as scratch:
        # Shape inference and graph folding (BatchNorm into Conv) before quantizing.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            _Batches(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
