"""Pruning: global magnitude (unstructured) with torch.nn.utils.prune and channel (structured)
with Torch-Pruning's dependency graph (model.shape_like reloads the result).

Unstructured pruning zeroes weights in place: the file compresses, CPU inference is no faster.
Channel pruning removes whole filters, and with them every tensor slice that depends on
them (BatchNorm, the next layer's input, residual partners), so the network is smaller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

_WEIGHTED = (nn.Conv2d, nn.Linear)


def prune_global_magnitude(
    model: nn.Module, sparsity: float
) -> dict[str, torch.Tensor]:
    """Zero the `sparsity` share of conv and linear weights with the smallest |w|, ranked
    across all layers at once; returns the masks (1 = kept) by parameter name."""
    targets = [(m, "weight") for m in model.modules() if isinstance(m, _WEIGHTED)]
    prune.global_unstructured(
        targets, pruning_method=prune.L1Unstructured, amount=sparsity
    )
    for module, name in targets:
        prune.remove(module, name)  # type: ignore[no-untyped-call]  # a plain weight now
    return {
        f"{name}.weight": (module.weight != 0).to(module.weight.dtype)
        for name, module in model.named_modules()
        if isinstance(module, _WEIGHTED)
    }


def keep_masked(
    model: nn.Module, masks: dict[str, torch.Tensor]
) -> Callable[..., None]:
    """An optimizer post-step hook re-applying `masks` to `model`'s parameters (by name),
    so fine-tuning, QAT included, cannot regrow pruned weights."""
    params = dict(model.named_parameters())
    missing = sorted(set(masks) - set(params))
    if missing:
        raise ValueError(f"masked parameters not in the model: {missing}")

    @torch.no_grad()
    def apply(*_: Any) -> None:
        for name, mask in masks.items():
            params[name].mul_(mask)

    return apply


def prune_channels(model: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    """Remove `ratio` of every prunable layer's output channels by L1 norm (in place).

    The output layer is left whole (its width is the class count): a classifier's last
    linear layer, a segmentation net's 1x1 classifier convolution.
    """
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=[output_layer(model, example)],
    )
    pruner.step()
    return model


def output_layer(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The conv or linear layer that produces `model`'s output: the last one to run on
    `example` (only parameter-free ops, pooling or a resize, may follow it). Found by
    running it rather than by module order, which is only the order of registration."""
    ran: list[nn.Module] = []
    hooks = [
        module.register_forward_hook(lambda module, *_: ran.append(module))
        for module in model.modules()
        if isinstance(module, _WEIGHTED)
    ]
    training = model.training
    try:
        with torch.no_grad():  # in eval mode, so BatchNorm statistics stay as they are
            output = model.eval()(example)
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    layer = ran[-1]
    width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    if width != output.shape[1]:
        raise ValueError(
            f"{type(model).__name__}: the last layer to run ({layer}) is {width} wide, "
            f"the output {output.shape[1]}: it is not the output layer"
        )
    return layer


def sparsity(model: nn.Module) -> float:
    """Share of zero weights over conv and linear layers."""
    weights = [m.weight for m in model.modules() if isinstance(m, _WEIGHTED)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, sum(w.numel() for w in weights))
