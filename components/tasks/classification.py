"""Image classification: a class per image, the dataset in class folders.

    images/<class>/<file>

Evaluated by accuracy, macro F1, per-class precision and recall, a confusion matrix and a
reliability diagram; the gate pairs right/wrong per image (exact McNemar).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pandas as pd

from components.onnx_model import CLASSIFIER_HEAD, EmbeddingLayer
from components.tasks import Answer, Outputs, Report, Suite, Task, TaskName

if TYPE_CHECKING:
    import torch

    from components.config import EvaluateConfig, ValidateConfig
    from components.data import LabelledImages
    from components.spec import ModelSpec


class Classification(Task):
    name: ClassVar[TaskName] = "classification"
    metric: ClassVar[Literal["accuracy", "miou"]] = "accuracy"
    architectures: ClassVar[tuple[str, ...]] = ("cnn", "resnet")
    builtin_source: ClassVar[str] = "builtin:digits"
    embedding_layer: ClassVar[EmbeddingLayer] = CLASSIFIER_HEAD

    # ---- ingest ----------------------------------------------------------------------
    def copy_source(self, source: str, root: Path) -> None:
        from components.ingest import IMAGES
        from components.sources import copy_source

        copy_source(source, root / IMAGES)

    def describe(self, root: Path, max_pixels: int) -> pd.DataFrame:
        from components.ingest import IMAGES, describe_images

        paths = sorted(
            p for p in (root / IMAGES).rglob("*") if p.is_file() or p.is_symlink()
        )
        return describe_images(root, paths, max_pixels, [p.parent.name for p in paths])

    def summary(self, root: Path, manifest: pd.DataFrame) -> dict[str, Any]:
        rows = sorted(
            zip(
                manifest["path"],
                manifest["sha256"].fillna(""),
                manifest["label"],
                strict=True,
            )
        )
        return {
            "classes": sorted(manifest["label"].unique().tolist()),
            "content": [f"{p}\t{s}\t{label}\n" for p, s, label in rows],
        }

    # ---- validate --------------------------------------------------------------------
    def label_suites(
        self, manifest: pd.DataFrame, data_dir: Path, cfg: ValidateConfig
    ) -> dict[str, Suite]:
        from components.gx_suites import class_expectations, class_table

        return {"classes": (class_table(manifest), class_expectations(cfg), "label")}

    # ---- train, compress, evaluate -----------------------------------------------------
    def dataset(
        self,
        data_dir: Path,
        rows: pd.DataFrame,
        spec: ModelSpec,
        augment: Sequence[str] = (),
        seed: int = 0,
    ) -> LabelledImages:
        from components.data import ImageDataset

        return ImageDataset(data_dir, rows, spec, augment=augment, seed=seed)

    def loss(
        self, logits: torch.Tensor, targets: torch.Tensor, spec: ModelSpec, kind: str
    ) -> torch.Tensor:
        import torch.nn.functional as F

        return F.cross_entropy(logits, targets)

    def counts(
        self, logits: torch.Tensor, targets: torch.Tensor, spec: ModelSpec
    ) -> torch.Tensor:
        import torch

        correct = (logits.argmax(1) == targets).sum()
        return torch.stack(
            [
                correct.double().cpu(),
                torch.tensor(float(len(targets)), dtype=torch.float64),
            ]
        )

    def zero_counts(self, spec: ModelSpec) -> torch.Tensor:
        import torch

        return torch.zeros(2, dtype=torch.float64)

    def running_metrics(self, counts: torch.Tensor) -> dict[str, float]:
        return {"accuracy": counts[0].item() / max(counts[1].item(), 1.0)}

    def targets(
        self, rows: pd.DataFrame, data_dir: Path, spec: ModelSpec
    ) -> np.ndarray:
        index_of = {name: i for i, name in enumerate(spec.classes)}
        unknown = sorted(set(rows["label"]) - set(index_of))
        if unknown:
            raise ValueError(f"labels {unknown} are not among the model's classes")
        return np.array([index_of[label] for label in rows["label"]], dtype=np.int64)

    def flatten(
        self, outputs: Outputs, targets: np.ndarray, spec: ModelSpec
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return outputs.probabilities, outputs.predicted, targets

    def score(
        self, predicted: np.ndarray, targets: np.ndarray, spec: ModelSpec
    ) -> float:
        return float((predicted == targets).mean())

    def item_quality(
        self, predicted: np.ndarray, targets: np.ndarray, spec: ModelSpec
    ) -> np.ndarray:
        quality: np.ndarray = (predicted == targets).astype(np.float64)
        return quality

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
        from sklearn.metrics import accuracy_score, f1_score

        correct = shipped.predicted == targets
        per_item = pd.DataFrame(
            {
                "actual": rows["label"].to_numpy(),
                "predicted": [spec.classes[i] for i in shipped.predicted],
                "confidence": shipped.probabilities.max(axis=1),
                "correct": correct,
                "quality": correct.astype(np.float64),
                "fp32_predicted": [spec.classes[i] for i in fp32.predicted],
                "fp32_correct": fp32.predicted == targets,
                "fp32_quality": (fp32.predicted == targets).astype(np.float64),
            }
        )
        metrics = {
            "test_accuracy": float(accuracy_score(targets, shipped.predicted)),
            "test_macro_f1": float(
                f1_score(targets, shipped.predicted, average="macro", zero_division=0)
            ),
            "fp32_test_accuracy": float(accuracy_score(targets, fp32.predicted)),
        }
        names = list(spec.classes)
        return Report(
            metrics=metrics,
            per_item=per_item,
            per_class={
                "shipped": _per_class(targets, shipped.predicted, names),
                "fp32": _per_class(targets, fp32.predicted, names),
            },
            files={},
        )

    def shifted(self, predicted: np.ndarray, shift: int) -> np.ndarray:
        return predicted

    # ---- monitor and serve -------------------------------------------------------------
    def embedding_module(self, model: torch.nn.Module) -> torch.nn.Module:
        import torch

        return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]

    def output_features(
        self, probabilities: np.ndarray, spec: ModelSpec
    ) -> dict[str, np.ndarray]:
        columns = {
            f"softmax_{name}": probabilities[:, i]
            for i, name in enumerate(spec.classes)
        }
        columns["confidence"] = probabilities.max(axis=1)
        columns["predicted_class"] = probabilities.argmax(axis=1)
        return columns

    def answer(
        self,
        probabilities: np.ndarray,
        spec: ModelSpec,
        sizes: Sequence[tuple[int, int]],
    ) -> list[Answer]:
        answers = []
        for row in probabilities:
            top = int(row.argmax())
            scores = {n: float(p) for n, p in zip(spec.classes, row, strict=True)}
            label = spec.classes[top]
            body = {"label": label, "probabilities": scores}
            answers.append(Answer(label, float(row[top]), scores, body))
        return answers


def _per_class(
    labels: np.ndarray, predicted: np.ndarray, names: list[str]
) -> dict[str, dict[str, float | int]]:
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=list(range(len(names))), zero_division=0
    )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
