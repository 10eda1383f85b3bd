"""segmentation_nets: UNet and DeepLabV3+ through every stage a model goes through (shape,
torch.export/QAT capture, ONNX parity, int8 ONNX, channel pruning and its reload)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from components.model import ModelSpec, build_model, load_model, save_model
from components.onnx_model import OnnxModel, export_onnx
from components.pruning import output_layer, prune_channels
from components.quantize import prepare_qat, qat_weights, quantize_onnx
from components.segmentation_nets import encoder_plan

SIZE = 32
# (arch, output_stride): UNet ignores the stride.
NETS = [("unet", 16), ("deeplabv3plus", 8), ("deeplabv3plus", 16)]
NET_IDS = ["unet", "deeplab-os8", "deeplab-os16"]
# Pure colours per class, so a few optimizer steps fit them (the int8 test needs a fitted
# model: on random weights the class scores are near ties and argmax flips on noise).
COLOURS = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: on a shared, busy machine PyTorch's second intra-op thread mostly
    waits on the first, and a training step took 1.5 s instead of 25 ms."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(arch: str, output_stride: int = 16, size: int = SIZE) -> ModelSpec:
    return ModelSpec(arch=arch, classes=["bg", "r", "g", "b"], in_channels=3,
                     image_size=size, channels=[4, 8, 16], hidden=16, dropout=0.1,
                     mean=0.5, std=0.25, task="segmentation",
                     output_stride=output_stride)  # fmt: skip


def _scenes(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy grey images (class 0) with 1-3 rectangles coloured by class (1-3)."""
    rng = np.random.default_rng(seed)
    images = 0.5 + 0.1 * rng.standard_normal((count, 3, SIZE, SIZE))
    masks = np.zeros((count, SIZE, SIZE), dtype=np.int64)
    for index in range(count):
        for _ in range(rng.integers(1, 4)):
            label = int(rng.integers(3))
            top, left = rng.integers(0, SIZE - 6, size=2)
            height, width = rng.integers(6, SIZE // 2, size=2)
            box = np.s_[top : top + height, left : left + width]
            images[index, :, *box] = COLOURS[label].numpy()[:, None, None]
            masks[index, *box] = label + 1
    return torch.from_numpy((images - 0.5) / 0.25).float(), torch.from_numpy(masks)


@pytest.mark.parametrize(("arch", "stride"), NETS, ids=NET_IDS)
def test_logits_have_a_score_per_class_and_pixel(arch: str, stride: int) -> None:
    model = build_model(_spec(arch, stride))
    logits = model.eval()(torch.randn(2, 3, SIZE, SIZE))
    assert logits.shape == (2, 4, SIZE, SIZE)
    # A batch of one image trains too (an epoch's last batch can be that small).
    model.train()(torch.randn(1, 3, SIZE, SIZE)).sum().backward()


def test_unet_depth_follows_the_channels() -> None:
    spec = replace(_spec("unet"), channels=[4, 8], image_size=6)
    model = build_model(spec).eval()
    assert model(torch.randn(1, 3, 6, 6)).shape == (1, 4, 6, 6)
    assert len(model.encoder) == 2 and len(model.decoder) == 1


def test_deeplab_encoder_strides_then_dilates() -> None:
    assert encoder_plan(3, 16) == [(2, 1), (2, 1), (2, 1)]
    assert encoder_plan(3, 8) == [(2, 1), (2, 1), (1, 2)]
    assert encoder_plan(4, 8) == [(2, 1), (2, 1), (1, 2), (1, 4)]
    with pytest.raises(ValueError, match="reach output stride 8 at most"):
        encoder_plan(2, 16)


@pytest.mark.parametrize(
    ("arch", "stride", "size", "divisor"),
    [("deeplabv3plus", 8, 36, 8), ("deeplabv3plus", 16, 40, 16), ("unet", 16, 30, 4)],
)
def test_an_image_size_the_net_cannot_halve_is_refused(
    arch: str, stride: int, size: int, divisor: int
) -> None:
    with pytest.raises(ValueError, match=f"spec.image_size {size} .* by {divisor}"):
        build_model(_spec(arch, stride, size))


@pytest.mark.parametrize(("arch", "stride"), NETS[:2], ids=NET_IDS[:2])
def test_qat_capture_takes_any_batch_and_keeps_the_weight_names(
    arch: str, stride: int
) -> None:
    model = build_model(_spec(arch, stride))
    prepared = prepare_qat(model, torch.randn(2, 3, SIZE, SIZE))
    for batch in (1, 3):
        logits = prepared(torch.randn(batch, 3, SIZE, SIZE))
        assert logits.shape == (batch, 4, SIZE, SIZE)
    assert set(qat_weights(prepared, model)) == set(model.state_dict())


@pytest.mark.parametrize(("arch", "stride"), NETS, ids=NET_IDS)
def test_onnx_export_matches_pytorch_at_another_batch_size(
    arch: str, stride: int, tmp_path: Path
) -> None:
    model = build_model(_spec(arch, stride)).eval()
    path = export_onnx(model, torch.randn(2, 3, SIZE, SIZE), tmp_path / "model.onnx")
    images = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.abs(OnnxModel(path).logits(images.numpy()) - expected).max() < 1e-3


@pytest.mark.parametrize(("arch", "stride"), NETS[:2], ids=NET_IDS[:2])
def test_int8_onnx_agrees_with_fp32_on_a_fitted_model(
    arch: str, stride: int, tmp_path: Path
) -> None:
    """Fitted briefly: int8 runs, has the logits' shape, and picks fp32's class on nearly
    every pixel (measured 0.999+ on 64x64 images of 4 classes)."""
    torch.manual_seed(0)
    model = build_model(_spec(arch, stride))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(25):
        images, masks = _scenes(8, seed=step)
        loss = F.cross_entropy(model.train()(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fp32_path = export_onnx(model.eval(), images[:2], tmp_path / "fp32.onnx")
    int8_path = tmp_path / "int8.onnx"
    calibration = [_scenes(8, seed=100 + index)[0].numpy() for index in range(2)]
    quantize_onnx(fp32_path, int8_path, "images", calibration)
    images, masks = _scenes(8, seed=200)
    fp32 = OnnxModel(fp32_path).logits(images.numpy())
    int8 = OnnxModel(int8_path).logits(images.numpy())
    assert int8.shape == fp32.shape == (8, 4, SIZE, SIZE)
    assert (fp32.argmax(1) == masks.numpy()).mean() > 0.8  # it did fit
    assert (int8.argmax(1) == fp32.argmax(1)).mean() > 0.95


@pytest.mark.parametrize(("arch", "stride"), NETS[:2], ids=NET_IDS[:2])
def test_channel_pruned_net_keeps_its_classifier_and_reloads(
    arch: str, stride: int, tmp_path: Path
) -> None:
    spec = _spec(arch, stride)
    model = build_model(spec).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    before = sum(p.numel() for p in model.parameters())
    prune_channels(model, 0.5, images)
    assert sum(p.numel() for p in model.parameters()) < 0.5 * before
    assert model.classifier.out_channels == spec.num_classes
    save_model(model, replace(spec, channel_pruned=True), tmp_path)
    loaded, _ = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_a_classifier_keeps_its_last_linear_layer_as_output(arch: str) -> None:
    spec = replace(_spec(arch), task="classification")
    model = build_model(spec).train()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert output_layer(model, torch.randn(2, 3, SIZE, SIZE)) is head
    assert model.training  # the probe ran in eval mode and put the mode back
