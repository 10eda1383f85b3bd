"""Segmentation quality measures: a 2-image 4x4 case worked by hand, torchmetrics as a
cross-check, boundary F1 against a plain per-image loop, pixel calibration and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.classification import (
    MulticlassConfusionMatrix,
    MulticlassJaccardIndex,
)

from components.segmentation_metrics import (
    boundary_f1,
    iou_per_class,
    per_image_iou,
    pixel_calibration,
    pixel_confusion,
    plot_pixel_confusion,
    plot_worst_images,
    segmentation_summary,
)

X = 255  # unlabelled
NAMES = ["background", "square", "stripe"]

# Worked by hand: image 0 has two ignored pixels; image 1 one, where class 2 is predicted,
# so class 2 is absent from image 1 (an ignored pixel's prediction does not count).
TARGET = np.array(
    [
        [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, X, X], [2, 2, 2, 2]],
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [X, 0, 0, 0]],
    ],
    dtype=np.uint8,
)
PREDICTED = np.array(
    [
        [[0, 0, 1, 1], [0, 1, 1, 1], [2, 2, 0, 1], [2, 2, 2, 0]],
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0], [2, 0, 0, 0]],
    ],
    dtype=np.int64,
)
# Image 0: (truth, prediction) 0->0 x3, 0->1 x1, 1->1 x4, 2->2 x5, 2->0 x1 (14 pixels);
# image 1: 0->0 x11, 1->1 x3, 1->0 x1 (15 pixels).
CONFUSION = np.array([[14, 1, 0], [1, 7, 0], [1, 0, 5]])
# IoU = hits / (row + column - hits): 14 / (15 + 16 - 14), 7 / (8 + 8 - 7), 5 / (6 + 5 - 5).
IOU = np.array([14 / 17, 7 / 9, 5 / 6])


def test_pixel_confusion_by_hand() -> None:
    confusion = pixel_confusion(PREDICTED, TARGET, 3, 255)
    assert confusion.dtype == np.int64 and confusion.shape == (3, 3)
    np.testing.assert_array_equal(confusion, CONFUSION)
    assert confusion.sum() == (TARGET != X).sum() == 29


def test_confusion_and_miou_match_torchmetrics() -> None:
    preds, target = torch.from_numpy(PREDICTED), torch.from_numpy(TARGET).long()
    matrix = MulticlassConfusionMatrix(num_classes=3, ignore_index=255)(preds, target)
    np.testing.assert_array_equal(matrix.numpy(), CONFUSION)
    jaccard = MulticlassJaccardIndex(num_classes=3, average="macro", ignore_index=255)
    summary = segmentation_summary(CONFUSION, NAMES)
    assert summary["miou"] == pytest.approx(float(jaccard(preds, target)))


def test_iou_and_summary_by_hand() -> None:
    np.testing.assert_allclose(iou_per_class(CONFUSION), IOU)
    summary = segmentation_summary(CONFUSION, NAMES)
    assert summary == pytest.approx(
        {
            "miou": IOU.mean(),
            "pixel_accuracy": 26 / 29,
            "fwiou": (15 * IOU[0] + 8 * IOU[1] + 6 * IOU[2]) / 29,
            "mean_class_accuracy": (14 / 15 + 7 / 8 + 5 / 6) / 3,
            "iou_background": IOU[0],
            "iou_square": IOU[1],
            "iou_stripe": IOU[2],
        }
    )


def test_an_absent_class_is_nan_per_class_0_in_the_summary_and_out_of_the_means() -> (
    None
):
    target, predicted = TARGET[1:], PREDICTED[1:].copy()
    predicted[0, 3, 0] = 0  # (under an ignored pixel anyway)
    confusion = pixel_confusion(predicted, target, 3)
    iou = iou_per_class(confusion)
    np.testing.assert_allclose(iou, [11 / 12, 3 / 4, np.nan])
    summary = segmentation_summary(confusion, NAMES)
    assert summary["iou_stripe"] == 0.0
    assert summary["miou"] == pytest.approx((11 / 12 + 3 / 4) / 2)
    assert summary["mean_class_accuracy"] == pytest.approx((1 + 3 / 4) / 2)
    json.dumps(summary, allow_nan=False)  # plain JSON
    preds, truth = torch.from_numpy(predicted), torch.from_numpy(target).long()
    macro = MulticlassJaccardIndex(num_classes=3, average="macro", ignore_index=255)
    none = MulticlassJaccardIndex(num_classes=3, average="none", ignore_index=255)
    assert summary["miou"] == pytest.approx(float(macro(preds, truth)))
    per_class = [summary[f"iou_{name}"] for name in NAMES]
    np.testing.assert_allclose(per_class, none(preds, truth).numpy(), rtol=1e-6)


def test_miou_matches_torchmetrics_on_random_masks() -> None:
    generator = np.random.default_rng(7)
    for _ in range(3):
        target = generator.integers(0, 4, (3, 9, 11)).astype(np.uint8)
        target[generator.random(target.shape) < 0.2] = 255
        predicted = np.where(
            generator.random(target.shape) < 0.6, target % 4, generator.integers(0, 4)
        ).astype(np.int64)
        summary = segmentation_summary(
            pixel_confusion(predicted, target, 4), list("abcd")
        )
        jaccard = MulticlassJaccardIndex(num_classes=4, ignore_index=255)
        expected = jaccard(torch.from_numpy(predicted), torch.from_numpy(target).long())
        assert summary["miou"] == pytest.approx(float(expected), rel=1e-6)


def test_summary_refuses_an_empty_matrix_and_mismatched_names() -> None:
    with pytest.raises(ValueError, match="no labelled pixel"):
        segmentation_summary(np.zeros((3, 3), dtype=np.int64), NAMES)
    with pytest.raises(ValueError, match="2 class names"):
        segmentation_summary(CONFUSION, NAMES[:2])


def test_per_image_iou_by_hand() -> None:
    scores = per_image_iou(PREDICTED, TARGET, 3, 255)
    # Image 0: 3 / (4 + 4 - 3), 4 / (4 + 5 - 4), 5 / (6 + 5 - 5);
    # image 1: 11 / (11 + 12 - 11), 3 / (4 + 3 - 3), class 2 absent.
    np.testing.assert_allclose(
        scores, [(3 / 5 + 4 / 5 + 5 / 6) / 3, (11 / 12 + 3 / 4) / 2]
    )


def test_per_image_iou_edge_cases_are_in_range() -> None:
    background = np.zeros((3, 4, 4), dtype=np.uint8)
    predicted = np.zeros((3, 4, 4), dtype=np.int64)
    predicted[1, 0, 0] = (
        1  # background IoU 15/16; class 1 present in prediction only: 0
    )
    background[2] = X  # nothing labelled: 1.0
    scores = per_image_iou(predicted, background, 2)
    np.testing.assert_allclose(scores, [1.0, (15 / 16 + 0.0) / 2, 1.0])
    generator = np.random.default_rng(1)
    target = generator.integers(0, 3, (20, 8, 8)).astype(np.uint8)
    guess = generator.integers(0, 3, (20, 8, 8))
    first, second = per_image_iou(guess, target, 3), per_image_iou(guess, target, 3)
    np.testing.assert_array_equal(first, second)
    assert ((first >= 0) & (first <= 1)).all()


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        pixel_confusion(PREDICTED + 1, TARGET, 3)
    with pytest.raises(ValueError, match="must both be"):
        pixel_confusion(PREDICTED[0], TARGET[0], 3)
    with pytest.raises(ValueError, match="is a class id"):
        pixel_confusion(PREDICTED, TARGET, 3, ignore_index=2)


def _shapes(count: int = 4, size: int = 32) -> np.ndarray:
    """Rectangles (class 1) and discs (class 2) on background, away from the edges, and an
    unlabelled band at the top."""
    target = np.zeros((count, size, size), dtype=np.uint8)
    rows, columns = np.mgrid[:size, :size]
    for i in range(count):
        target[i, 6 + i : 16 + i, 5 : 14 + i] = 1
        disc = (rows - 20) ** 2 + (columns - 22 + i) ** 2 <= (4 + i) ** 2
        target[i][disc] = 2
        target[i, :2] = X
    return target


def test_a_perfect_prediction_scores_one_everywhere() -> None:
    target = _shapes()
    predicted = np.where(target == X, 1, target).astype(np.int64)  # noise where ignored
    summary = segmentation_summary(pixel_confusion(predicted, target, 3), NAMES)
    assert all(value == pytest.approx(1.0) for value in summary.values())
    np.testing.assert_allclose(per_image_iou(predicted, target, 3), 1.0)
    assert boundary_f1(predicted, target, 3, tolerance=0) == pytest.approx(1.0)
    assert boundary_f1(predicted, target, 3) == pytest.approx(1.0)


def test_boundary_f1_tolerates_a_one_pixel_shift_within_its_tolerance() -> None:
    target = _shapes()
    shifted = np.roll(np.where(target == X, 0, target), 1, axis=2).astype(np.int64)
    loose = boundary_f1(shifted, target, 3, tolerance=2)
    strict = boundary_f1(shifted, target, 3, tolerance=0)
    assert loose > 0.9
    assert strict < loose - 0.2


def _reference_boundary_f1(
    predicted: np.ndarray, target: np.ndarray, num_classes: int, tolerance: int
) -> float:
    """The BF score written plainly: per image and class, a distance transform each."""

    def edges(mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
        padded = np.pad(labels, 1, mode="edge")
        centre = padded[1:-1, 1:-1]
        differs = np.zeros_like(mask)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            differs |= (
                padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]] != centre
            )
        return mask & differs

    scores = []
    for guess, truth in zip(predicted, target, strict=True):
        truth = truth.astype(np.int64)
        truth[truth == X] = -1
        guess = np.where(truth == -1, -1, guess)
        for c in range(num_classes):
            in_guess, in_truth = guess == c, truth == c
            if not (in_guess.any() or in_truth.any()):
                continue
            guess_edges, truth_edges = edges(in_guess, guess), edges(in_truth, truth)
            if not guess_edges.any() and not truth_edges.any():
                scores.append(float(in_guess.any() and in_truth.any()))
                continue
            if not guess_edges.any() or not truth_edges.any():
                scores.append(0.0)
                continue
            to_truth = ndimage.distance_transform_edt(~truth_edges)
            to_guess = ndimage.distance_transform_edt(~guess_edges)
            precision = (to_truth[guess_edges] <= tolerance).mean()
            recall = (to_guess[truth_edges] <= tolerance).mean()
            both = precision + recall
            scores.append(2 * precision * recall / both if both else 0.0)
    return float(np.mean(scores))


@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_boundary_f1_matches_a_plain_loop(tolerance: int) -> None:
    generator = np.random.default_rng(tolerance)
    target = _shapes(count=5, size=20)
    target[generator.random(target.shape) < 0.03] = X
    noisy = generator.random(target.shape) < 0.1
    predicted = np.where(noisy, generator.integers(0, 3, target.shape), target)
    predicted = np.where(predicted == X, 0, predicted).astype(np.int64)
    predicted[0] = 0  # classes 1 and 2 missed outright
    expected = _reference_boundary_f1(predicted, target, 3, tolerance)
    assert boundary_f1(predicted, target, 3, tolerance=tolerance) == pytest.approx(
        expected
    )


def test_pixel_calibration_of_confident_correct_pixels_is_near_zero() -> None:
    target = _shapes(count=2, size=16)
    labels = np.where(target == X, 0, target)
    probabilities = np.full((2, 3, 16, 16), 0.0005)
    np.put_along_axis(probabilities, labels[:, None].astype(np.int64), 0.999, axis=1)
    # Where unlabelled the model is confidently "wrong" (no truth): left out, so no harm.
    ece, table = pixel_calibration(probabilities, target, 255, bins=10)
    assert ece == pytest.approx(0.0, abs=2e-3)
    assert table["count"].sum() == (target != X).sum()
    assert table["count"].iloc[-1] == (target != X).sum()


def test_plots_write_png_files(tmp_path: Path) -> None:
    target = _shapes(count=5, size=16)
    predicted = np.roll(np.where(target == X, 0, target), 2, axis=1).astype(np.int64)
    scores = per_image_iou(predicted, target, 3)
    generator = np.random.default_rng(0)
    for channels in (1, 3):
        images = generator.random((5, channels, 16, 16)).astype(np.float32)
        path = tmp_path / f"worst_{channels}.png"
        plot_worst_images(path, images, target, predicted, scores, NAMES, count=3)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    confusion_png = tmp_path / "pixel_confusion.png"
    plot_pixel_confusion(confusion_png, CONFUSION, NAMES)
    assert confusion_png.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pixel_confusion.png",
        "worst_1.png",
        "worst_3.png",
    ]  # no temporary left behind
