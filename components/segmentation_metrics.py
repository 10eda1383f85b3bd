"""Semantic-segmentation quality measures over class-id masks: the pixel confusion matrix,
per-class and mean IoU, per-image IoU (the promotion gate's per-item score), boundary F1,
pixel-level calibration, and the plots evaluate writes.

Pure functions over numpy arrays; evaluate writes what they return, promote reads it.

Inputs: `predicted` (N, H, W) integer class ids in [0, K); `target` (N, H, W) integer class
ids in [0, K) or `ignore_index` (an unlabelled pixel: left out of every measure, whatever was
predicted there); `probabilities` (N, K, H, W) softmax; class names indexed by class id.

A class is *absent* when no labelled pixel has it as truth and none is predicted as it. Its
IoU is undefined: `iou_per_class` gives NaN, the means (miou, mean class accuracy) leave it
out, and `segmentation_summary` reports its `iou_<name>` as 0.0, as torchmetrics'
MulticlassJaccardIndex(average="none") does (zero_division=0), so that the summary is plain
JSON with the same keys for every model; read miou, not the per-class keys, for a mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import ndimage

from components.masks import DEFAULT_IGNORE_INDEX
from components.quality import calibration

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OVERLAY_ALPHA = 0.45
# Pixels per chunk of the boundary computation ((images, classes, H, W) booleans and the
# distance transform's work arrays), so memory stays bounded for a large test split.
_BOUNDARY_CHUNK_PIXELS = 1 << 20


def pixel_confusion(
    predicted: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> np.ndarray:
    """(K, K) int64 pixel counts, rows = truth, columns = prediction; ignored pixels left
    out."""
    labelled = _labelled(predicted, target, num_classes, ignore_index)
    truth = target[labelled].astype(np.int64)
    guess = predicted[labelled].astype(np.int64)
    counts = np.bincount(truth * num_classes + guess, minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """(K,) intersection over union of each class; NaN for a class absent from both truth
    and prediction."""
    matrix = _square(confusion).astype(np.float64)
    hits = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - hits
    iou: np.ndarray = np.divide(
        hits, union, out=np.full(len(hits), np.nan), where=union > 0
    )
    return iou


def segmentation_summary(
    confusion: np.ndarray, names: Sequence[str]
) -> dict[str, float]:
    """The headline measures of a pixel confusion matrix, all plain floats (JSON-safe):

    - miou: mean IoU over the classes present (absent ones left out, as in torchmetrics'
      MulticlassJaccardIndex(average="macro"));
    - pixel_accuracy: share of labelled pixels predicted right;
    - fwiou: IoU weighted by each class's share of the true pixels;
    - mean_class_accuracy: mean recall over the classes with true pixels;
    - iou_<name> per class, 0.0 for an absent class (see the module's docstring).

    Raises ValueError when the matrix holds no pixel (nothing was labelled)."""
    matrix = _square(confusion).astype(np.float64)
    if len(names) != len(matrix):
        raise ValueError(
            f"{len(names)} class names for a {len(matrix)}x{len(matrix)} confusion matrix"
        )
    total = matrix.sum()
    if total <= 0:
        raise ValueError("the confusion matrix is empty: no labelled pixel to score")
    iou = iou_per_class(matrix)
    hits = np.diag(matrix)
    truth = matrix.sum(axis=1)
    recall = np.divide(hits, truth, out=np.full(len(hits), np.nan), where=truth > 0)
    summary = {
        "miou": float(np.nanmean(iou)),
        "pixel_accuracy": float(hits.sum() / total),
        # A class with true pixels has a defined IoU; the others weigh nothing.
        "fwiou": float(np.sum(truth / total * np.nan_to_num(iou))),
        "mean_class_accuracy": float(np.nanmean(recall)),
    }
    for name, value in zip(names, iou, strict=True):
        summary[f"iou_{name}"] = 0.0 if np.isnan(value) else float(value)
    return summary


def per_image_iou(
    predicted: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> np.ndarray:
    """(N,) each image's mean IoU over the classes in its (labelled) truth or its
    prediction, in [0, 1]. An image with no labelled pixel scores 1.0 (nothing to get
    wrong), so every item has a score. The promotion gate's per-item quality."""
    labelled = _labelled(predicted, target, num_classes, ignore_index)
    count = len(target)
    image = np.broadcast_to(np.arange(count)[:, None, None], target.shape)[labelled]
    truth = target[labelled].astype(np.int64)
    guess = predicted[labelled].astype(np.int64)
    codes = (image * num_classes + truth) * num_classes + guess
    confusion = np.bincount(codes, minlength=count * num_classes**2).reshape(
        count, num_classes, num_classes
    )
    hits = np.diagonal(confusion, axis1=1, axis2=2)
    union = confusion.sum(axis=1) + confusion.sum(axis=2) - hits
    present = union > 0
    iou = np.divide(hits, union, out=np.zeros(union.shape), where=present)
    classes = present.sum(axis=1)
    return np.where(classes > 0, iou.sum(axis=1) / np.maximum(classes, 1), 1.0)


def boundary_f1(
    predicted: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    tolerance: int = 2,
) -> float:
    """Boundary F1 (the BF score of Csurka et al. 2013), mean over images and the classes
    present in each image's truth or prediction.

    A boundary pixel of class c is a pixel of class c with a 4-neighbour of another value
    (the image's edge is no boundary). Precision: the share of predicted boundary pixels
    within `tolerance` px (Euclidean) of a true boundary pixel of the same class; recall the
    reverse. Ignored pixels count as a value of their own in both masks (the prediction is
    masked where the truth is unlabelled), so an unlabelled band shapes both alike. A class
    with no boundary in either mask scores 1.0 when it is in both (e.g. the whole image),
    0.0 otherwise. Raises ValueError when there is no labelled pixel."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 (got {tolerance})")
    labelled = _labelled(predicted, target, num_classes, ignore_index)
    if not labelled.any():
        raise ValueError("no labelled pixel: boundary F1 is undefined")
    truth = np.where(labelled, target, -1).astype(np.int64)
    guess = np.where(labelled, predicted, -1).astype(np.int64)
    per_image = max(1, _BOUNDARY_CHUNK_PIXELS // (num_classes * truth[0].size))
    scores = [
        _boundary_scores(
            guess[start : start + per_image],
            truth[start : start + per_image],
            num_classes,
            tolerance,
        )
        for start in range(0, len(truth), per_image)
    ]
    return float(np.concatenate(scores).mean())


def _boundary_scores(
    guess: np.ndarray, truth: np.ndarray, num_classes: int, tolerance: int
) -> np.ndarray:
    """F1 of every (image, class) present in a chunk, flattened."""
    classes = np.arange(num_classes)[None, :, None, None]
    guess_members = guess[:, None] == classes  # (m, K, H, W)
    truth_members = truth[:, None] == classes
    guess_edges = _edges(guess)[:, None] & guess_members
    truth_edges = _edges(truth)[:, None] & truth_members
    guess_count = guess_edges.sum(axis=(2, 3))
    truth_count = truth_edges.sum(axis=(2, 3))
    guess_hits = (guess_edges & _near(truth_edges, tolerance)).sum(axis=(2, 3))
    truth_hits = (truth_edges & _near(guess_edges, tolerance)).sum(axis=(2, 3))
    precision = np.divide(
        guess_hits, guess_count, out=np.zeros(guess_count.shape), where=guess_count > 0
    )
    recall = np.divide(
        truth_hits, truth_count, out=np.zeros(truth_count.shape), where=truth_count > 0
    )
    both = precision + recall
    f1 = np.divide(
        2 * precision * recall, both, out=np.zeros(both.shape), where=both > 0
    )
    guess_present = guess_members.any(axis=(2, 3))
    truth_present = truth_members.any(axis=(2, 3))
    no_edges = (guess_count == 0) & (truth_count == 0)
    f1 = np.where(no_edges, (guess_present & truth_present).astype(float), f1)
    return f1[guess_present | truth_present]  # type: ignore[no-any-return]


def _edges(labels: np.ndarray) -> np.ndarray:
    """(m, H, W) True where a labelled pixel (>= 0) has a 4-neighbour of another value."""
    edges = np.zeros(labels.shape, dtype=bool)
    rows = labels[:, 1:, :] != labels[:, :-1, :]
    edges[:, 1:, :] |= rows
    edges[:, :-1, :] |= rows
    columns = labels[:, :, 1:] != labels[:, :, :-1]
    edges[:, :, 1:] |= columns
    edges[:, :, :-1] |= columns
    return edges & (labels >= 0)


def _near(edges: np.ndarray, tolerance: int) -> np.ndarray:
    """(m, K, H, W) True within `tolerance` px of an edge pixel of the same (image, class):
    a 2-D distance transform per plane that has edges (several times faster than one
    transform over the stack)."""
    planes = edges.reshape(-1, *edges.shape[2:])
    near = np.zeros(planes.shape, dtype=bool)
    for index in np.flatnonzero(planes.any(axis=(1, 2))):
        near[index] = ndimage.distance_transform_edt(~planes[index]) <= tolerance
    return near.reshape(edges.shape)


def pixel_calibration(
    probabilities: np.ndarray,
    target: np.ndarray,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    bins: int = 15,
) -> tuple[float, pd.DataFrame]:
    """Expected calibration error and bin table (components.quality.calibration) over the
    labelled pixels, each pixel an item."""
    if probabilities.ndim != 4 or (
        probabilities.shape[:1] + probabilities.shape[2:] != target.shape
    ):
        raise ValueError(
            f"probabilities {probabilities.shape} must be (N, K, H, W) for target "
            f"{target.shape} (N, H, W)"
        )
    labelled = target != ignore_index
    labels = target[labelled].astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        raise ValueError(
            f"target holds ids outside 0..{probabilities.shape[1] - 1} "
            f"and the ignore index {ignore_index}"
        )
    pixels = np.moveaxis(probabilities, 1, -1)[labelled]  # (P, K)
    return calibration(pixels, labels, bins)


def class_colours(num_classes: int) -> np.ndarray:
    """(K, 4) RGBA, fixed per class id (tab10's colours, then tab20's lighter ones,
    repeating every 20 ids)."""
    from matplotlib import colormaps

    palette = np.asarray(colormaps["tab20"](np.arange(20)), dtype=np.float64)
    ordered = np.concatenate([palette[0::2], palette[1::2]])
    return ordered[np.arange(num_classes) % len(ordered)]


def plot_worst_images(
    path: Path,
    images: np.ndarray,
    target: np.ndarray,
    predicted: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    count: int = 6,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
) -> None:
    """A PNG with a row per lowest-scoring image (ties: the earlier image first): the image
    ((C, H, W), C = 1 or 3, values in [0, 1]), the truth overlaid on it (unlabelled pixels
    not overlaid) and the prediction overlaid, in fixed class colours with a legend."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got {images.shape}")
    if not (len(images) == len(target) == len(predicted) == len(scores)):
        raise ValueError("images, target, predicted and scores differ in length")
    colours = class_colours(len(names))
    worst = np.argsort(np.asarray(scores, dtype=float), kind="stable")[:count]
    rows = max(1, len(worst))
    figure, axes = plt.subplots(rows, 3, figsize=(8.4, 2.8 * rows + 0.7), squeeze=False)
    for row, index in enumerate(worst):
        picture = np.clip(np.moveaxis(images[index], 0, -1), 0.0, 1.0)
        panels = (
            (f"image {index}, score {float(scores[index]):.3f}", None),
            ("truth", _overlay(target[index], colours, ignore_index)),
            ("prediction", _overlay(predicted[index], colours, ignore_index)),
        )
        for column, (title, overlay) in enumerate(panels):
            axis = axes[row, column]
            if picture.shape[-1] == 1:
                axis.imshow(picture[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                axis.imshow(picture)
            if overlay is not None:
                axis.imshow(overlay, interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.set_axis_off()
    for axis in axes.ravel()[3 * len(worst) :]:
        axis.set_axis_off()
    handles = [
        Patch(facecolor=colours[i], label=name) for i, name in enumerate(names)
    ] + [Patch(facecolor="none", edgecolor="grey", label="unlabelled")]
    figure.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8
    )
    figure.suptitle(f"Worst {len(worst)} images by score")
    figure.tight_layout(rect=(0.0, 0.6 / (2.8 * rows + 0.7), 1.0, 1.0))
    _save(figure, Path(path))


def _overlay(mask: np.ndarray, colours: np.ndarray, ignore_index: int) -> np.ndarray:
    """(H, W, 4) RGBA: each class in its colour, unlabelled pixels transparent."""
    labelled = mask != ignore_index
    ids = np.where(labelled, mask, 0).astype(np.int64) % len(colours)
    rgba = colours[ids].copy()
    rgba[..., 3] = np.where(labelled, OVERLAY_ALPHA, 0.0)
    return rgba


def plot_pixel_confusion(
    path: Path, confusion: np.ndarray, names: Sequence[str]
) -> None:
    """Row-normalised pixel confusion heat map (each row: where that class's pixels went)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = _square(confusion).astype(np.float64)
    if len(names) != len(matrix):
        raise ValueError(
            f"{len(names)} class names for a {len(matrix)}x{len(matrix)} confusion matrix"
        )
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = max(4.0, 0.5 * len(names) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    if len(names) <= 20:
        for (row, column), value in np.ndenumerate(share):
            axes.text(column, row, f"{value:.2f}", ha="center", va="center",
                      fontsize=7, color="white" if value > 0.5 else "black")  # fmt: skip
    ticks = np.arange(len(names))
    axes.set_xticks(ticks, labels=list(names), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(names))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("Pixel confusion (rows normalised)")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    _save(figure, Path(path))


def _save(figure: Figure, path: Path) -> None:
    """Write a figure atomically (a temporary name in the same folder, then replace)."""
    import matplotlib.pyplot as plt

    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    temporary.replace(path)


def _square(confusion: np.ndarray) -> np.ndarray:
    matrix = np.asarray(confusion)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix is square (K, K), got {matrix.shape}")
    return matrix


def _labelled(
    predicted: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int
) -> np.ndarray:
    """The (N, H, W) mask of labelled pixels, after checking shapes and ids."""
    if predicted.ndim != 3 or predicted.shape != target.shape:
        raise ValueError(
            f"predicted {predicted.shape} and target {target.shape} must both be (N, H, W)"
        )
    for name, array in (("predicted", predicted), ("target", target)):
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"{name} must hold integer class ids (got {array.dtype})")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (got {num_classes})")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index {ignore_index} is a class id (0..{num_classes - 1})"
        )
    if predicted.size and (predicted.min() < 0 or predicted.max() >= num_classes):
        raise ValueError(f"predicted holds ids outside 0..{num_classes - 1}")
    labelled = target != ignore_index
    truth = target[labelled]
    if truth.size and (truth.min() < 0 or truth.max() >= num_classes):
        raise ValueError(
            f"target holds ids outside 0..{num_classes - 1} and the ignore index "
            f"{ignore_index}"
        )
    return labelled  # type: ignore[no-any-return]
