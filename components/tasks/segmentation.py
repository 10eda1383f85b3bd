"""Semantic segmentation: a class per pixel. The dataset (a folder, or s3://bucket/prefix):

    images/<name>.<ext>    the images
    masks/<name>.png       one channel of class ids per pixel (palette PNGs read by index)
    classes.yaml           classes: {0: background, 1: ...}; ignore_index: 255

Evaluated by mIoU, pixel accuracy, per-class and frequency-weighted IoU, boundary F1 and
pixel-level calibration; the gate pairs each test image's IoU (Wilcoxon signed-rank).
Targets and predictions are compared at the model's resolution (train.image_size): masks are
resized by nearest neighbour, so a class id is never blended.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np
import pandas as pd

from components.masks import (
    MaskError,
    SegmentationClasses,
    class_pixels,
    read_classes,
    read_mask,
    stray_values,
)
from components.onnx_model import DECODER_START, EmbeddingLayer
from components.tasks import Answer, Outputs, Report, Suite, Task, TaskName

if TYPE_CHECKING:
    import torch

    from components.config import EvaluateConfig, ValidateConfig
    from components.data import LabelledImages
    from components.spec import ModelSpec

IMAGES, MASKS, CLASSES_FILE = "images", "masks", "classes.yaml"
NO_MASK = "(no mask)"
_DICE_EPS = 1.0


class Segmentation(Task):
    name: ClassVar[TaskName] = "segmentation"
    metric: ClassVar[Literal["accuracy", "miou"]] = "miou"
    architectures: ClassVar[tuple[str, ...]] = ("unet", "deeplabv3plus")
    builtin_source: ClassVar[str] = "builtin:shapes"
    embedding_layer: ClassVar[EmbeddingLayer] = DECODER_START
    report_pictures: ClassVar[tuple[str, ...]] = ("worst_images.png",)

    # ---- ingest ----------------------------------------------------------------------
    def copy_source(self, source: str, root: Path) -> None:
        from components.shapes import write_shapes
        from components.sources import copy_tree

        if source == self.builtin_source:
            write_shapes(root)
        else:
            copy_tree(source, root)
        if not (root / CLASSES_FILE).is_file():
            raise MaskError(f"{source}: no {CLASSES_FILE} at its top (the class names)")

    def describe(self, root: Path, max_pixels: int) -> pd.DataFrame:
        from components.ingest import describe_images

        classes = read_classes(root / CLASSES_FILE)
        images = sorted(
            p for p in (root / IMAGES).rglob("*") if p.is_file() or p.is_symlink()
        )
        rows = [
            _describe_mask(root, _mask_of(root, path), classes, max_pixels)
            for path in images
        ]
        labels = [row.pop("label") for row in rows]
        frame = describe_images(root, images, max_pixels, labels)
        masks = pd.DataFrame(rows, index=frame.index)
        counts = [
            "mask_height",
            "mask_width",
            *[f"pixels_{n}" for n in classes.names.values()],
        ]
        masks[counts] = masks[counts].astype("Int64")  # nullable: a missing mask stays
        return pd.concat([frame, masks], axis=1)

    def summary(self, root: Path, manifest: pd.DataFrame) -> dict[str, Any]:
        from components.io import sha256_file

        classes = read_classes(root / CLASSES_FILE)
        paired = set(manifest["mask_path"].dropna())
        orphans = sorted(
            p.relative_to(root).as_posix()
            for p in (root / MASKS).rglob("*")
            if p.is_file() and p.relative_to(root).as_posix() not in paired
        )
        rows = sorted(
            zip(
                manifest["path"],
                manifest["sha256"].fillna(""),
                manifest["mask_sha256"].fillna(""),
                strict=True,
            )
        )
        return {
            "classes": list(classes.names.values()),
            "class_ids": list(classes.names),
            "ignore_index": classes.ignore_index,
            "orphan_masks": orphans,
            "content": [f"{p}\t{s}\t{m}\n" for p, s, m in rows]
            + [f"{CLASSES_FILE}\t{sha256_file(root / CLASSES_FILE)}\n"],
        }

    # ---- validate --------------------------------------------------------------------
    def label_suites(
        self, manifest: pd.DataFrame, data_dir: Path, cfg: ValidateConfig
    ) -> dict[str, Suite]:
        from components.gx_suites import (
            mask_expectations,
            segmentation_class_expectations,
        )
        from components.io import read_json

        summary = read_json(data_dir / "dataset.json")
        classes = list(summary["classes"])
        train = manifest[manifest["split"] == "train"]
        class_frame = pd.DataFrame(
            {
                "class": classes,
                "train_pixels": [
                    int(train[f"pixels_{name}"].fillna(0).sum()) for name in classes
                ],
            }
        )
        foreground = [f"pixels_{name}" for name in classes[1:]]
        labelled = manifest[manifest["mask_problem"].isna()]
        empty = (
            (labelled[foreground].fillna(0).sum(axis=1) == 0) if len(labelled) else []
        )
        share = float(np.mean(empty)) if len(labelled) else 0.0
        empty_frame = pd.DataFrame(
            {
                "item": [
                    f"{int(np.sum(empty))} of {len(labelled)} masks all background"
                ],
                "empty_share": [share],
            }
        )
        return {
            "masks": (
                _mask_frame(manifest, summary["orphan_masks"]),
                mask_expectations(),
                "item",
            ),
            "segmentation_classes": (
                class_frame,
                segmentation_class_expectations(cfg),
                "class",
            ),
            "empty_masks": (empty_frame, _empty_expectations(cfg), "item"),
        }

    # ---- train, compress, evaluate -----------------------------------------------------
    def dataset(
        self,
        data_dir: Path,
        rows: pd.DataFrame,
        spec: ModelSpec,
        augment: Sequence[str] = (),
        seed: int = 0,
    ) -> LabelledImages:
        from components.data import MaskDataset

        return MaskDataset(data_dir, rows, spec, augment=augment, seed=seed)

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, spec: ModelSpec, kind: str
    ) -> torch.Tensor:
        import torch.nn.functional as F

        loss = F.cross_entropy(logits, targets, ignore_index=spec.ignore_index)
        if kind == "ce_dice":
            loss = loss + _dice_loss(logits, targets, spec.ignore_index)
        return loss

    def counts(
        self, logits: torch.Tensor, targets: torch.Tensor, spec: ModelSpec
    ) -> torch.Tensor:
        """Per class intersection and union, then correct and labelled pixels."""
        import torch

        classes = logits.shape[1]
        valid = targets != spec.ignore_index
        truth = targets[valid]
        predicted = logits.argmax(1)[valid]
        pairs = torch.bincount(truth * classes + predicted, minlength=classes * classes)
        confusion = pairs.reshape(classes, classes).double().cpu()
        hits = confusion.diagonal()
        union = confusion.sum(0) + confusion.sum(1) - hits
        return torch.cat([hits, union, hits.sum()[None], confusion.sum()[None]])

    def zero_counts(self, spec: ModelSpec) -> torch.Tensor:
        import torch

        return torch.zeros(2 * spec.num_classes + 2, dtype=torch.float64)

    def running_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        classes = (len(counts) - 2) // 2
        hits, union = counts[:classes], counts[classes : 2 * classes]
        present = union > 0
        iou = (hits[present] / union[present]).mean().item() if present.any() else 0.0
        return {
            "miou": iou,
            "pixel_accuracy": counts[-2].item() / max(counts[-1].item(), 1.0),
        }

    def targets(
        self, rows: pd.DataFrame, data_dir: Path, spec: ModelSpec
    ) -> np.ndarray:
        from components.data import to_target_mask

        return np.stack([to_target_mask(data_dir / p, spec) for p in rows["mask_path"]])

    def flatten(
        self, outputs: Outputs, targets: np.ndarray, spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        valid = targets != spec.ignore_index
        probabilities = np.moveaxis(outputs.probabilities, 1, -1)[valid]
        return probabilities, outputs.predicted[valid], targets[valid]

    def score(
        self, predicted: np.ndarray, targets: np.ndarray, spec: ModelSpec
    ) -> float:
        from components.segmentation_metrics import (
            pixel_confusion,
            segmentation_summary,
        )

        confusion = pixel_confusion(
            predicted, targets, spec.num_classes, spec.ignore_index
        )
        return float(segmentation_summary(confusion, list(spec.classes))["miou"])

    def item_quality(
        self, predicted: np.ndarray, targets: np.ndarray, spec: ModelSpec
    ) -> np.ndarray:
        from components.segmentation_metrics import per_image_iou

        return per_image_iou(predicted, targets, spec.num_classes, spec.ignore_index)

    def report(
        self,
        shipped: Outputs,
        fp32: Outputs,
        targets: np.ndarray,
        images: np.ndarray,
        rows: pd.DataFrame,
        spec: ModelSpec,
        cfg: EvaluateConfig,
        variant: str,
    ) -> Report:
        from components.segmentation_metrics import (
            boundary_f1,
            iou_per_class,
            pixel_confusion,
            plot_worst_images,
            segmentation_summary,
        )

        names, ignore = list(spec.classes), spec.ignore_index
        confusion = pixel_confusion(shipped.predicted, targets, len(names), ignore)
        fp32_confusion = pixel_confusion(fp32.predicted, targets, len(names), ignore)
        summary = segmentation_summary(confusion, names)
        fp32_summary = segmentation_summary(fp32_confusion, names)
        quality = self.item_quality(shipped.predicted, targets, spec)
        fp32_quality = self.item_quality(fp32.predicted, targets, spec)
        valid = targets != ignore
        metrics = {
            "test_miou": summary["miou"],
            "test_pixel_accuracy": summary["pixel_accuracy"],
            "test_fwiou": summary["fwiou"],
            "test_mean_class_accuracy": summary["mean_class_accuracy"],
            "test_boundary_f1": boundary_f1(
                shipped.predicted,
                targets,
                len(names),
                ignore,
                tolerance=cfg.boundary_tolerance,
            ),
            **{key: value for key, value in summary.items() if key.startswith("iou_")},
            "fp32_test_miou": fp32_summary["miou"],
            "fp32_test_pixel_accuracy": fp32_summary["pixel_accuracy"],
            "fp32_pixel_agreement": float(
                (shipped.predicted == fp32.predicted)[valid].mean()
            ),
        }
        per_item = pd.DataFrame(
            {
                "quality": quality,
                "fp32_quality": fp32_quality,
                "pixel_accuracy": [
                    float((p == t)[t != ignore].mean()) if (t != ignore).any() else 1.0
                    for p, t in zip(shipped.predicted, targets, strict=True)
                ],
                **{
                    f"area_{name}": (shipped.predicted == index).mean(axis=(1, 2))
                    for index, name in enumerate(names)
                },
            }
        )
        iou, fp32_iou = iou_per_class(confusion), iou_per_class(fp32_confusion)
        pixels = confusion.sum(axis=1)
        per_class = {
            label: {
                name: {"iou": _finite(values[i]), "pixels": int(pixels[i])}
                for i, name in enumerate(names)
            }
            for label, values in (("shipped", iou), ("fp32", fp32_iou))
        }
        pixels_01 = images * spec.std + spec.mean
        return Report(
            metrics=metrics,
            per_item=per_item,
            per_class=per_class,
            files={
                "worst_images.png": lambda path: plot_worst_images(
                    path,
                    np.clip(pixels_01, 0, 1),
                    targets,
                    shipped.predicted,
                    quality,
                    names,
                    count=cfg.worst_images,
                    ignore_index=ignore,
                ),
            },
        )

    def shifted(self, predicted: np.ndarray, shift: int) -> np.ndarray:
        return np.roll(predicted, shift=(shift, shift), axis=(-2, -1))

    # ---- monitor and serve -------------------------------------------------------------
    def embedding_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The net's `embedding_input`: the layer that reads the encoder's deepest map."""
        layer = getattr(model, "embedding_input", None)
        if layer is None:
            raise ValueError(
                f"{type(model).__name__}: no embedding_input layer to read the "
                "encoder's features from"
            )
        return cast("torch.nn.Module", layer)

    def output_features(
        self, probabilities: np.ndarray, spec: ModelSpec
    ) -> dict[str, np.ndarray]:
        predicted = probabilities.argmax(axis=1)
        columns = {
            f"area_{name}": (predicted == index).mean(axis=(1, 2))
            for index, name in enumerate(spec.classes)
        }
        with np.errstate(divide="ignore", invalid="ignore"):
            plogp = np.where(
                probabilities > 0, probabilities * np.log(probabilities), 0.0
            )
        columns["pixel_entropy"] = -plogp.sum(axis=1).mean(axis=(1, 2))
        # the largest object predicted (background when none is)
        areas = np.stack([columns[f"area_{name}"] for name in spec.classes[1:]], axis=1)
        columns["predicted_class"] = np.where(
            areas.max(axis=1) > 0, areas.argmax(axis=1) + 1, 0
        )
        return columns

    def answer(
        self,
        probabilities: np.ndarray,
        spec: ModelSpec,
        sizes: Sequence[tuple[int, int]],
    ) -> list[Answer]:
        """The mask as a PNG (one channel of class ids, base64) at the upload's own size,
        each class's share of it, and its largest object."""
        import base64
        import io

        from PIL import Image

        outputs = self.output_features(probabilities, spec)
        answers = []
        for index, (row, (width, height)) in enumerate(
            zip(probabilities, sizes, strict=True)
        ):
            mask = Image.fromarray(row.argmax(axis=0).astype(np.uint8), mode="L")
            if mask.size != (width, height):
                mask = mask.resize((width, height), Image.Resampling.NEAREST)
            buffer = io.BytesIO()
            mask.save(buffer, format="PNG")
            counts = np.bincount(np.asarray(mask).ravel(), minlength=spec.num_classes)
            areas = {
                name: float(counts[i] / counts.sum())
                for i, name in enumerate(spec.classes)
            }
            label = spec.classes[int(outputs["predicted_class"][index])]
            confidence = float(row.max(axis=0).mean())  # mean pixel confidence
            body = {
                "label": label,
                "class_areas": areas,
                "confidence": confidence,
                "mask_png_base64": base64.b64encode(buffer.getvalue()).decode(),
                "width": width,
                "height": height,
            }
            answers.append(Answer(label, confidence, areas, body))
        return answers


def _mask_of(root: Path, image: Path) -> Path:
    relative = image.relative_to(root / IMAGES).with_suffix(".png")
    return root / MASKS / relative


def _describe_mask(
    root: Path, mask: Path, classes: SegmentationClasses, max_pixels: int
) -> dict[str, Any]:
    """The mask's columns of the manifest; `mask_problem` says why it cannot be used."""
    from components.io import sha256_file

    row: dict[str, Any] = {
        "mask_path": None,
        "mask_sha256": None,
        "mask_height": None,
        "mask_width": None,
        "mask_problem": "missing",
        "stray_values": None,
        "label": NO_MASK,
    }
    row |= {f"pixels_{name}": None for name in classes.names.values()}
    if not mask.is_file():
        return row
    row |= {
        "mask_path": mask.relative_to(root).as_posix(),
        "mask_sha256": sha256_file(mask),
    }
    try:
        values = read_mask(mask, max_pixels=max_pixels)
    except MaskError as error:
        row["mask_problem"] = str(error).removeprefix(f"{mask}: ")
        return row
    row |= {"mask_height": values.shape[0], "mask_width": values.shape[1]}
    stray = stray_values(values, classes)
    row["stray_values"] = ",".join(str(v) for v in stray) or None
    row["mask_problem"] = (
        f"values {stray} are not declared class ids" if stray else None
    )
    counts = class_pixels(values, classes)
    row |= {f"pixels_{name}": count for name, count in counts.items()}
    foreground = {name: count for name, count in list(counts.items())[1:] if count}
    row["label"] = (
        max(foreground, key=lambda n: foreground[n])
        if foreground
        else next(iter(classes.names.values()))
    )
    return row


def _mask_frame(manifest: pd.DataFrame, orphans: list[str]) -> pd.DataFrame:
    """One row per image and per orphan mask; `item` names the file and its problem."""
    has_mask = manifest["mask_path"].notna()
    readable = manifest["mask_height"].notna()
    same_size = (manifest["mask_height"] == manifest["height"]) & (
        manifest["mask_width"] == manifest["width"]
    )
    frame = pd.DataFrame(
        {
            "paired": has_mask.to_numpy(),
            "reads_as_ids": np.where(has_mask, readable, None),
            "same_size": np.where(
                readable & manifest["height"].notna(), same_size.fillna(False), None
            ),
            "declared_values": np.where(
                readable, manifest["stray_values"].isna(), None
            ),
        }
    )
    frame["item"] = [
        _item(path, mask, problem, height, width, mh, mw)
        for path, mask, problem, height, width, mh, mw in zip(
            manifest["path"],
            manifest["mask_path"],
            manifest["mask_problem"],
            manifest["height"],
            manifest["width"],
            manifest["mask_height"],
            manifest["mask_width"],
            strict=True,
        )
    ]
    orphan_rows = pd.DataFrame(
        {
            "paired": [False] * len(orphans),
            "reads_as_ids": [None] * len(orphans),
            "same_size": [None] * len(orphans),
            "declared_values": [None] * len(orphans),
            "item": [f"{m} (a mask without an image)" for m in orphans],
        }
    )
    return pd.concat([frame, orphan_rows], ignore_index=True)


def _item(
    path: str,
    mask: Any,
    problem: Any,
    height: Any,
    width: Any,
    mask_height: Any,
    mask_width: Any,
) -> str:
    if not isinstance(mask, str):
        return f"{path} (an image without a mask)"
    if isinstance(problem, str):
        return f"{mask} ({problem})"
    if (
        not pd.isna(mask_height)
        and not pd.isna(height)
        and ((mask_height, mask_width) != (height, width))
    ):
        return f"{mask} ({mask_width}x{mask_height}, its image {width}x{height})"
    return mask


def _empty_expectations(cfg: ValidateConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="empty_share",
            max_value=cfg.max_empty_share,
            meta={
                "check": f"share of all-background masks at most {cfg.max_empty_share}"
            },
        )
    ]


def _dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, ignore: int
) -> torch.Tensor:
    """1 - soft Dice, averaged over classes, on the labelled pixels only."""
    import torch.nn.functional as F

    valid = (targets != ignore).unsqueeze(1)
    probabilities = logits.float().softmax(1) * valid
    one_hot = F.one_hot(targets.clamp(max=logits.shape[1] - 1), logits.shape[1])
    truth = one_hot.permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    overlap = (probabilities * truth).sum(dims)
    total = probabilities.sum(dims) + truth.sum(dims)
    return 1 - ((2 * overlap + _DICE_EPS) / (total + _DICE_EPS)).mean()


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
