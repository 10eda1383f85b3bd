"""Semantic-segmentation networks: a score per class and pixel, logits (N, classes, H, W) at
the input's height and width (build_model picks them by spec.arch: "unet", "deeplabv3plus").

Both are built from ops every stage of the pipeline handles: torch.export with a dynamic
batch (QAT), the dynamo ONNX exporter, ONNX Runtime's QDQ int8 quantizer and Torch-Pruning.
Resolution changes are bilinear resizes by constant factors, one ONNX Resize each; in the
int8 graph ONNX Runtime runs the convolutions and concatenations in int8 (QLinearConv,
QLinearConcat) and the Resizes in float between a DequantizeLinear and a QuantizeLinear.
The output layer is a 1x1 convolution, the last weighted layer to run, which
pruning.prune_channels leaves whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from components.model import BasicBlock
from components.spec import ModelSpec

__all__ = ["ASPP", "DeepLabV3Plus", "UNet"]

# DeepLabV3's ASPP rates at output stride 16; at output stride 8 the feature map is twice as
# fine and the rates double, so each branch keeps its field of view in input pixels. They
# were chosen for 513x513 crops: on a map no wider than a rate (64x64 inputs give 8x8 at
# stride 8, 4x4 at 16) a 3x3 branch sees only its centre tap, a 1x1 convolution in effect
# (the paper's observation), and the image-pooling branch carries the global context.
_ASPP_RATES_AT_16 = (6, 12, 18)


def conv_bn_relu(
    width_in: int, width: int, kernel: int = 3, dilation: int = 1
) -> nn.Sequential:
    """A size-preserving convolution (bias folded into BatchNorm), BatchNorm, ReLU."""
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(
            width_in, width, kernel, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    )


def _double_conv(width_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(conv_bn_relu(width_in, width), conv_bn_relu(width, width))


def _resize(features: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling of `features` to `like`'s height and width (a whole multiple).

    By scale factor, not size: the factors are constants of the exported graph, where a size
    read off `like` exports as Shape/Gather/Concat ops computing it on every run.
    """
    factors = (
        like.shape[-2] // features.shape[-2],
        like.shape[-1] // features.shape[-1],
    )
    return F.interpolate(
        features, scale_factor=factors, mode="bilinear", align_corners=False
    )


def _require_divisible(spec: ModelSpec, factor: int, why: str) -> None:
    if spec.image_size % factor:
        raise ValueError(
            f"spec.image_size {spec.image_size} is not divisible by {factor} ({why})"
        )


class _UpLevel(nn.Module):
    """One UNet decoder level: halve the width (1x1), upsample x2 (bilinear), concatenate the
    encoder's skip, two 3x3 convs.

    The paper's up-convolution also halves the width; a 1x1 convolution commutes with a
    bilinear resize (both linear), so running it first, at the low resolution, costs a
    quarter. Measured on UNet [16, 32, 64] at 64x64, ONNX Runtime, batch 1, one thread:
    fp32 / int8 1.93 / 1.13 ms this way, 2.12 / 1.25 ms with a 2x2 ConvTranspose2d instead,
    2.34 / 1.31 ms resizing all channels and no 1x1. ONNX Runtime's CPU provider has no
    int8 ConvTranspose: in the int8 graph it ran in float on weights dequantized every call,
    between NCHW/NHWC Transposes (8 in the graph, against 2); the weightless Resize runs in
    float there too, but on a small tensor. And model.shape_like does not resize a
    ConvTranspose2d (its weight is (in, out)) for channel-pruned reloads.
    """

    def __init__(self, width_deep: int, width_skip: int) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(width_deep, width_skip, 1)
        self.convs = _double_conv(2 * width_skip, width_skip)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = _resize(self.reduce(deep), skip)
        merged: torch.Tensor = self.convs(torch.cat([up, skip], dim=1))
        return merged


class UNet(nn.Module):
    """U-Net: one encoder level per width in spec.channels (two 3x3 conv-BN-ReLU, a 2x2
    max-pool before each level after the first), a mirrored decoder joined to the encoder by
    skip connections (_UpLevel), and a 1x1 convolution to spec.num_classes."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        levels = len(spec.channels)
        _require_divisible(spec, 2 ** (levels - 1), f"unet: {levels - 1} 2x2 poolings")
        widths_in = [spec.in_channels, *spec.channels[:-1]]
        self.encoder = nn.ModuleList(
            _double_conv(width_in, width)
            for width_in, width in zip(widths_in, spec.channels, strict=True)
        )
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList(
            _UpLevel(spec.channels[level], spec.channels[level - 1])
            for level in range(levels - 1, 0, -1)
        )
        self.classifier = nn.Conv2d(spec.channels[0], spec.num_classes, 1)

    @property
    def embedding_input(self) -> nn.Module:
        """The layer whose input is the encoder's deepest features (the drift monitor's
        embedding; in ONNX, the first Resize reads the same map)."""
        return self.decoder[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        features = images
        for index, level in enumerate(self.encoder):
            features = level(self.pool(features) if index else features)
            skips.append(features)
        features = skips.pop()  # the deepest level feeds the decoder, not a skip
        for up in self.decoder:
            features = up(features, skips.pop())
        logits: torch.Tensor = self.classifier(features)
        return logits


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabV3): a 1x1 branch, one 3x3 branch per dilation
    rate and an image-pooling branch, concatenated and projected to `width`."""

    def __init__(
        self, width_in: int, width: int, rates: tuple[int, ...], dropout: float
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(width_in, width, 1)]
            + [conv_bn_relu(width_in, width, 3, dilation=rate) for rate in rates]
        )
        # Image-level context. No BatchNorm here, unlike the paper: on a 1x1 map its
        # training statistics come from the batch alone, and a batch of one image (the
        # loaders keep an epoch's last, partial batch) raises in training.
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(width_in, width, 1),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(
            conv_bn_relu(width * (len(rates) + 2), width, 1), nn.Dropout(dropout)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = _resize(self.pooling(features), features)  # a broadcast, as a Resize
        branches = [branch(features) for branch in self.branches]
        projected: torch.Tensor = self.project(torch.cat([*branches, pooled], dim=1))
        return projected


def encoder_plan(stages: int, output_stride: int) -> list[tuple[int, int]]:
    """(stride, dilation) of each residual stage after the stride-2 stem: stages halve the
    resolution until it reaches 1/output_stride, later stages dilate instead (x2 each)."""
    plan: list[tuple[int, int]] = []
    stride, dilation = 2, 1
    for _ in range(stages):
        if stride < output_stride:
            plan.append((2, dilation))
            stride *= 2
        else:
            dilation *= 2
            plan.append((1, dilation))
    if stride != output_stride:
        raise ValueError(
            f"spec.channels: {stages} stages reach output stride {stride} at most, "
            f"spec.output_stride is {output_stride}"
        )
    return plan


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ on a small ResNet: a stride-2 stem, one stage of two BasicBlocks per width
    in spec.channels (strided down to 1/spec.output_stride, dilated after), ASPP of width
    spec.hidden, and the V3+ decoder (ASPP output upsampled to the first stage's 1/4-scale
    features, concatenated, two 3x3 convs, a 1x1 classifier, upsampled to the input)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.output_stride not in (8, 16):
            raise ValueError(
                f"spec.output_stride {spec.output_stride}: deeplabv3plus takes 8 or 16"
            )
        _require_divisible(
            spec, spec.output_stride, f"spec.output_stride {spec.output_stride}"
        )
        plan = encoder_plan(len(spec.channels), spec.output_stride)
        self.stem = nn.Sequential(
            nn.Conv2d(spec.in_channels, spec.channels[0], 3, 2, padding=1, bias=False),
            nn.BatchNorm2d(spec.channels[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        width_in, dilation_in = spec.channels[0], 1
        for width, (stride, dilation) in zip(spec.channels, plan, strict=True):
            # As in DeepLabV3's ResNets, a stage's first block keeps the previous dilation.
            first = BasicBlock(width_in, width, stride, dilation_in)
            stages.append(nn.Sequential(first, BasicBlock(width, width, 1, dilation)))
            width_in, dilation_in = width, dilation
        self.low_level = stages[0]  # 1/4 scale: the edges the decoder recovers
        self.stages = nn.Sequential(*stages[1:])
        scale = 16 // spec.output_stride
        rates = tuple(rate * scale for rate in _ASPP_RATES_AT_16)
        self.aspp = ASPP(width_in, spec.hidden, rates, spec.dropout)
        # The paper reduces 256 low-level channels to 48 against a 256-wide ASPP so they do
        # not outweigh the encoder's output; a quarter of spec.hidden keeps that balance.
        low_width = max(8, spec.hidden // 4)
        self.reduce = conv_bn_relu(spec.channels[0], low_width, 1)
        self.decoder = nn.Sequential(
            conv_bn_relu(spec.hidden + low_width, spec.hidden),
            conv_bn_relu(spec.hidden, spec.hidden),
        )
        self.classifier = nn.Conv2d(spec.hidden, spec.num_classes, 1)

    @property
    def embedding_input(self) -> nn.Module:
        """The layer whose input is the encoder's output (the drift monitor's embedding)."""
        return self.aspp

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        low = self.low_level(self.stem(images))
        context = self.aspp(self.stages(low))
        merged = torch.cat([_resize(context, low), self.reduce(low)], dim=1)
        logits = self.classifier(self.decoder(merged))
        return _resize(logits, images)
