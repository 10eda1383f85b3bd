"""The model family and its spec: everything needed to rebuild a network from its weights."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from components.io import write_json
from components.spec import (
    LINEAGE_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    ModelSpec,
)

__all__ = [
    "LINEAGE_FILE",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "BasicBlock",
    "ModelSpec",
    "SmallCNN",
    "SmallResNet",
    "build_model",
    "load_model",
    "save_model",
    "shape_like",
]


def build_model(spec: ModelSpec) -> nn.Module:
    if spec.arch == "cnn":
        return SmallCNN(spec)
    if spec.arch == "resnet":
        return SmallResNet(spec)
    if spec.arch in ("unet", "deeplabv3plus"):
        # Imported here: segmentation_nets builds on BasicBlock from this module.
        from components.segmentation_nets import DeepLabV3Plus, UNet

        return UNet(spec) if spec.arch == "unet" else DeepLabV3Plus(spec)
    raise ValueError(f"spec.arch: unknown architecture '{spec.arch}'")


class SmallCNN(nn.Module):
    """conv-BN-ReLU blocks, each halving the resolution, then a dropout MLP head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width_in = spec.in_channels
        for width in spec.channels:
            blocks += [
                nn.Conv2d(width_in, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Conv2d(width, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            width_in = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width_in, spec.hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.hidden, spec.num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.pool(self.features(images)))
        return logits


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut, as in ResNet.

    `dilation` > 1 spreads the 3x3 taps (padding follows, so the size is kept): DeepLab's
    encoder trades its last strides for dilation to keep a finer feature map.
    """

    def __init__(
        self, width_in: int, width: int, stride: int, dilation: int = 1
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(
                width_in,
                width,
                3,
                stride,
                padding=dilation,
                dilation=dilation,
                bias=False,
            ),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(width),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or width_in != width:
            self.shortcut = nn.Sequential(
                nn.Conv2d(width_in, width, 1, stride=stride, bias=False),
                nn.BatchNorm2d(width),
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(images) + self.shortcut(images))


class SmallResNet(nn.Module):
    """A 3x3 stem, then one residual stage per width (each after the first halves the
    resolution, two blocks a stage), global pooling and a dropout linear head."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        stem_width = spec.channels[0]
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        width_in = stem_width
        for index, width in enumerate(spec.channels):
            stride = 1 if index == 0 else 2
            stages += [BasicBlock(width_in, width, stride), BasicBlock(width, width, 1)]
            width_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(spec.dropout),
            nn.Linear(width_in, spec.num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.stages(self.stem(images)))
        return logits


def save_model(model: nn.Module, spec: ModelSpec, out_dir: Path) -> None:
    """Weights as a plain state dict (no pickled code) beside the spec."""
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)
    write_json(out_dir / SPEC_FILE, asdict(spec))


def load_model(model_dir: Path) -> tuple[nn.Module, ModelSpec]:
    spec = ModelSpec.read(model_dir)
    model = build_model(spec)
    weights_path = model_dir / WEIGHTS_FILE
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{weights_path}: model weights are missing (run train first)"
        )
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if spec.channel_pruned:
        shape_like(model, state)
    model.load_state_dict(state)
    return model.eval(), spec


def shape_like(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize the conv, BatchNorm and linear layers of a freshly built `model` to the tensor
    shapes in `state`, so a channel-pruned network loads from a plain state dict (no pickled
    modules: Torch-Pruning's own serialisation pickles them)."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for tensor_name, current in [*module.named_parameters(recurse=False),
                                     *module.named_buffers(recurse=False)]:  # fmt: skip
            saved = state.get(prefix + tensor_name)
            if saved is None or saved.shape == current.shape:
                continue
            resized = torch.empty(saved.shape, dtype=current.dtype)
            if isinstance(current, nn.Parameter):
                setattr(module, tensor_name, nn.Parameter(resized))
            else:
                module.register_buffer(tensor_name, resized)
        _sync_widths(module)
    return model


def _sync_widths(module: nn.Module) -> None:
    """Keep the width attributes (used in repr and by exporters) true to the tensors."""
    if isinstance(module, nn.Conv2d):
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * module.groups
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, nn.BatchNorm2d):
        module.num_features = module.weight.shape[0]
